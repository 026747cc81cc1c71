//! Tests that read values of the metrics recorder, of which there is one per
//! process (`flashsale::metrics`): whatever any gateway of the process
//! records, every `/metrics` shows. A binary apart from `tests/api`, whose
//! hundred tests would move these values while they are read:
//! - `observability` drives its gateway until every family is exported, and
//!   makes a 500 to do so;
//! - `batch` reads the reserve batch-size histogram before and after its
//!   own burst, which the storms of `tests/api` would swell;
//! - `repairs` makes 500s on purpose, and `tests/api`'s
//!   `identity::hostile_tokens_are_each_a_401` asserts its process never answered one.

// `tests/api` uses every shared helper (and would warn of one left unused);
// these tests use a part: the gateway, its requests and its /metrics.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod batch;
mod observability;
mod repairs;
