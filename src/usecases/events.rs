//! The events for the store once they are in Postgres: their retention.
//! (They get there with the orders: `usecases::flush`.)

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

use crate::store::{self, StoreError};

/// Rows per DELETE: short statements, so the retention never holds the
/// table's locks long enough to slow the flush.
pub const RETENTION_BATCH: i64 = 1000;

/// Deletes the events created more than `keep` ago (their deliveries go by
/// cascade), batch by batch. Returns how many went.
pub async fn prune(db: &PgPool, keep: Duration) -> Result<u64, StoreError> {
    let before = OffsetDateTime::now_utc() - keep;
    let mut total = 0;
    loop {
        let n = store::delete_old_events(db, before, RETENTION_BATCH).await?;
        total += n;
        if n < RETENTION_BATCH as u64 {
            return Ok(total);
        }
    }
}
