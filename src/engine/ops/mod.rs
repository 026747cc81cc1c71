//! The engine by operation: one file per family of scripts in `lua/`, each
//! owning its keys, its arguments and a typed reply, so that changing a
//! script's header means changing the file beside it and nothing else.

pub mod adjust;
pub mod archive;
pub mod events;
pub mod hold;
pub(super) mod hold_jobs;
pub mod outbox;
pub mod repair;
pub mod sale;
pub mod waiting_room;
