//! The use cases: what `http`, `cli` and `worker` ask for, each told once
//! over the engine (Redis) and the store (Postgres), which never meet
//! anywhere else.

pub mod adjust;
pub mod archive;
pub mod deliver;
pub mod events;
pub mod flush;
pub mod reap;
pub mod reconcile;
pub mod schedule;
pub mod waiting_room;
pub mod webhooks;
