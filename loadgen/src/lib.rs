//! The flashsale load generator and the stores it is compared with; not
//! part of the service (the gateway's library depends on nothing here).
//!
//! - [`loadtest`]: the `flashsale-loadtest` command. [`loadtest::play`]
//!   creates a sale on a running gateway, sends a storm of reserves from a
//!   crowd of buyers, lets them confirm, release or walk away, and checks
//!   the contract's invariants against the gateway's figures and Postgres.
//! - `conn`: the storm's HTTP/1.1 client, one bare hyper connection per
//!   buyer task (the rest of the play goes through reqwest).
//! - [`baseline`]: Postgres-only stores behind the gateway's paths (the
//!   naive read-then-write, the row lock, ...) that `bench/compare.sh` and
//!   `tests/loadtest_checker.rs` play the same sale against, served by
//!   `examples/baseline_server.rs`.
//!
//! The benchmark examples beside it (`examples/`) measure the gateway's
//! parts (Redis connections, the outbox flush, confirm durability) through
//! the `flashsale` library.

pub mod baseline;
mod conn;
pub mod loadtest;

pub use loadtest::{play, run, Options, Report, TargetKind};
