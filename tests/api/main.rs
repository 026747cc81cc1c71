//! The integration tests, one module per part of the gateway, in one binary
//! over the shared helpers (`tests/common`, and `helpers` for those only
//! these tests use): one link, and one build of the helpers.
//!
//! The other binaries are the tests that cannot share this process:
//! `tests/metrics` (values of the process-wide metrics recorder),
//! `tests/memory` (the process's own allocator) and `tests/faults` (servers
//! killed and frozen mid-storm, timed apart from these tests' load).
//!
//! `cargo test --test api -- storm::` runs one module.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod api_contract;
mod batch;
mod edge;
mod events;
mod expiry;
mod hardening;
mod hardening_headers;
mod identity;
mod large_sale;
mod model;
mod openapi;
mod outbox;
mod reconcile;
mod repair_model;
mod repairs;
mod screens;
mod spike;
mod store;
mod storm;
mod waiting_room;
mod webhooks_api;
mod webhooks_delivery;
mod webhooks_e2e;
