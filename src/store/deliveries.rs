//! The `webhook_deliveries` table from the delivery workers' side: claiming
//! due deliveries under a lease, recording each attempt's outcome, and the
//! backlog each endpoint has.
//!
//! Any number of workers share the table. A claim takes each endpoint's row
//! (`FOR NO KEY UPDATE SKIP LOCKED`: never waiting on another worker, and
//! never blocking the flush's inserts, whose foreign-key check takes only a
//! key-share lock) and, under it, counts what is leased already, so one
//! endpoint's deliveries in flight stay under the bound across all workers.

use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreResult;

/// One delivery leased to this worker, with what its attempt needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub endpoint_id: Uuid,
    pub event_id: String,
    /// Fences the outcome: recorded only while the lease is still this one.
    pub leased_until: OffsetDateTime,
    /// Attempts made before this one.
    pub attempts: i32,
    pub url: String,
    /// The body, as Postgres serialises the stored `payload` (signed as is).
    pub body: String,
    pub event_created_at: OffsetDateTime,
    pub secret: Vec<u8>,
    pub secret_sealed: bool,
    /// The previous secret, only while it still signs.
    pub previous: Option<(Vec<u8>, bool)>,
}

/// Leases up to `limit` due deliveries, at most `per_endpoint` in flight per
/// enabled, not deleted endpoint (counting those other workers hold), for
/// `lease_ms`. A lease that ran out (its worker died) is due again.
pub async fn claim(
    db: &PgPool,
    per_endpoint: i64,
    lease_ms: i64,
    limit: i64,
) -> StoreResult<Vec<Claimed>> {
    let rows = sqlx::query!(
        r#"WITH ep AS (
               SELECT e.id FROM webhook_endpoints e
               WHERE e.enabled AND e.deleted_at IS NULL
                 -- Its earliest delivery not leased is due. Not an EXISTS:
                 -- the generic plan of one hashes every pending delivery
                 -- (a backlog of 100,000 made each claim 9 ms); this walks
                 -- the endpoint's index from its earliest.
                 AND (SELECT d.next_attempt_at FROM webhook_deliveries d
                      WHERE d.endpoint_id = e.id AND d.status = 'pending'
                        AND (d.leased_until IS NULL OR d.leased_until <= now())
                      ORDER BY d.next_attempt_at LIMIT 1) <= now()
               FOR NO KEY UPDATE OF e SKIP LOCKED
           ), room AS (
               SELECT ep.id,
                      $1::bigint - (SELECT count(*) FROM webhook_deliveries d
                                    WHERE d.endpoint_id = ep.id AND d.status = 'pending'
                                      AND d.leased_until > now()) AS free
               FROM ep
           ), picked AS (
               SELECT p.endpoint_id, p.event_id
               FROM room r
               CROSS JOIN LATERAL (
                   SELECT d.endpoint_id, d.event_id FROM webhook_deliveries d
                   WHERE d.endpoint_id = r.id AND d.status = 'pending'
                     AND d.next_attempt_at <= now()
                     AND (d.leased_until IS NULL OR d.leased_until <= now())
                   ORDER BY d.next_attempt_at
                   LIMIT greatest(r.free, 0)
                   FOR UPDATE OF d SKIP LOCKED
               ) p
               LIMIT $3
           )
           UPDATE webhook_deliveries d
           SET leased_until = now() + $2::bigint * interval '1 millisecond'
           FROM picked p, events ev, webhook_endpoints e
           WHERE d.endpoint_id = p.endpoint_id AND d.event_id = p.event_id
             AND ev.id = d.event_id AND e.id = d.endpoint_id
           RETURNING d.endpoint_id, d.event_id, d.leased_until AS "leased_until!",
                     d.attempts, e.url, ev.payload::text AS "body!",
                     ev.created_at AS event_created_at,
                     e.secret, e.secret_sealed, e.previous_secret, e.previous_sealed,
                     (e.previous_until > now()) AS "previous_signs?""#,
        per_endpoint,
        lease_ms,
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            endpoint_id: r.endpoint_id,
            event_id: r.event_id,
            leased_until: r.leased_until,
            attempts: r.attempts,
            url: r.url,
            body: r.body,
            event_created_at: r.event_created_at,
            secret: r.secret,
            secret_sealed: r.secret_sealed,
            previous: match (r.previous_signs, r.previous_secret) {
                (Some(true), Some(bytes)) => Some((bytes, r.previous_sealed.unwrap_or(false))),
                _ => None,
            },
        })
        .collect())
}

/// What an attempt came to, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A 2xx.
    Delivered,
    /// Tried again after this many milliseconds.
    Retry { after_ms: i64 },
    /// The schedule ran out.
    Failed,
    /// The endpoint answered 410: it is disabled; the delivery waits,
    /// pending, in case it is enabled again.
    Gone,
    /// Not attempted (the worker is stopping): the lease is given back.
    Released,
}

/// One attempt's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub endpoint_id: Uuid,
    pub event_id: String,
    pub leased_until: OffsetDateTime,
    pub next: Next,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Records a batch of outcomes in one round trip (and disables the endpoints
/// that answered 410). An outcome whose lease is no longer the one it was
/// claimed under (it ran out and another worker took the delivery) is not
/// recorded: that worker's attempt decides. Returns the rows recorded.
pub async fn record(db: &PgPool, outcomes: &[Outcome]) -> StoreResult<u64> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let kind = |n: Next| match n {
        Next::Delivered => "delivered",
        Next::Retry { .. } => "retry",
        Next::Failed => "failed",
        Next::Gone => "gone",
        Next::Released => "released",
    };
    let endpoints: Vec<Uuid> = outcomes.iter().map(|o| o.endpoint_id).collect();
    let events: Vec<String> = outcomes.iter().map(|o| o.event_id.clone()).collect();
    let leases: Vec<OffsetDateTime> = outcomes.iter().map(|o| o.leased_until).collect();
    let kinds: Vec<String> = outcomes.iter().map(|o| kind(o.next).to_string()).collect();
    let after: Vec<i64> = outcomes
        .iter()
        .map(|o| match o.next {
            Next::Retry { after_ms } => after_ms,
            _ => 0,
        })
        .collect();
    let codes: Vec<Option<i32>> = outcomes.iter().map(|o| o.status_code).collect();
    let errors: Vec<Option<String>> = outcomes.iter().map(|o| o.error.clone()).collect();
    let gone: Vec<Uuid> = outcomes
        .iter()
        .filter(|o| o.next == Next::Gone)
        .map(|o| o.endpoint_id)
        .collect();
    // One statement, one round trip: the common case. A 410 also disables
    // its endpoint, in the same transaction.
    let update = sqlx::query!(
        "UPDATE webhook_deliveries d
         SET status = CASE o.kind WHEN 'delivered' THEN 'delivered'
                                  WHEN 'failed' THEN 'failed'
                                  ELSE 'pending' END,
             attempts = d.attempts + CASE o.kind WHEN 'released' THEN 0 ELSE 1 END,
             delivered_at = CASE o.kind WHEN 'delivered' THEN now() ELSE d.delivered_at END,
             next_attempt_at = CASE o.kind
                 WHEN 'retry' THEN now() + o.after_ms * interval '1 millisecond'
                 ELSE d.next_attempt_at END,
             last_status_code = CASE o.kind WHEN 'released' THEN d.last_status_code
                                            ELSE o.code END,
             last_error = CASE o.kind WHEN 'released' THEN d.last_error ELSE o.error END,
             leased_until = NULL
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[],
                     $6::int[], $7::text[])
              AS o(endpoint_id, event_id, lease, kind, after_ms, code, error)
         WHERE d.endpoint_id = o.endpoint_id AND d.event_id = o.event_id
           AND d.status = 'pending' AND d.leased_until = o.lease",
        &endpoints,
        &events,
        &leases,
        &kinds,
        &after,
        // Typed by hand: Postgres does not say an array's elements may be NULL.
        &codes as &[Option<i32>],
        &errors as &[Option<String>],
    );
    if gone.is_empty() {
        return Ok(update.execute(db).await?.rows_affected());
    }
    let mut tx = super::begin(db).await?;
    let done = update.execute(&mut *tx).await?.rows_affected();
    sqlx::query!(
        "UPDATE webhook_endpoints
         SET enabled = false, disabled_reason = 'gone', updated_at = now()
         WHERE id = ANY($1) AND enabled",
        &gone,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done)
}

/// One endpoint's backlog, for the gauges.
#[derive(Debug, Clone)]
pub struct Backlog {
    pub endpoint_id: Uuid,
    pub pending: i64,
    /// Seconds since the oldest pending delivery was created (0: none).
    pub oldest_age_seconds: f64,
}

/// The backlog of every endpoint deliveries are made to (enabled, not
/// deleted): a disabled endpoint's deliveries wait on purpose, behind no
/// one, and must not keep an alert firing.
pub async fn backlogs(db: &PgPool) -> StoreResult<Vec<Backlog>> {
    let rows = sqlx::query!(
        r#"SELECT e.id,
                  count(d.event_id) AS "pending!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(d.created_at))::float8, 0)
                      AS "oldest!"
           FROM webhook_endpoints e
           LEFT JOIN webhook_deliveries d ON d.endpoint_id = e.id AND d.status = 'pending'
           WHERE e.deleted_at IS NULL AND e.enabled
           GROUP BY e.id"#,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Backlog {
            endpoint_id: r.id,
            pending: r.pending,
            oldest_age_seconds: r.oldest.max(0.0),
        })
        .collect())
}
