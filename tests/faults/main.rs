//! Servers killed and frozen mid-storm: a gateway process SIGKILLed, a Redis
//! frozen, a Redis SIGKILLed on its own disk, the nodes of a private Redis
//! Cluster killed and its slots moved. A binary apart from `tests/api`
//! because these tests time the recovery (503s within 2 s, service back by
//! itself within its deadlines) while storms of their own run: Cargo runs test
//! binaries one after another, so these never share the machine's cores with
//! the hundred tests of `tests/api`, whose load would stretch those times.

// `tests/api` uses every shared helper (and would warn of one left unused);
// these tests use a part: the gateways, private servers and the real binary.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod crowd;
mod private_cluster;

mod cluster;
mod durability;
mod failures;
mod webhooks;
