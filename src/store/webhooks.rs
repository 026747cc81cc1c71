//! The `webhook_endpoints` table (the store's receivers) and the reads and
//! resets of `webhook_deliveries` an admin asks for: the deliveries log and
//! a replay. Claiming and recording attempts is the delivery worker's
//! (`store::deliveries`).

use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreResult;

/// An endpoint as the admin API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// `None`: every type, including types added later.
    pub events: Option<Vec<String>>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Until when the secret before the last rotation still signs.
    pub previous_until: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_at: Option<OffsetDateTime>,
}

/// Why an endpoint was disabled by `PATCH {"enabled": false}`.
pub const DISABLED_BY_ADMIN: &str = "admin";
/// The `last_error` of the deliveries a deletion ended.
pub const ENDPOINT_DELETED: &str = "endpoint deleted";

/// A new endpoint, with its secret in stored form (sealed or not).
pub async fn insert_endpoint(
    db: &PgPool,
    id: Uuid,
    url: &str,
    events: Option<&[String]>,
    secret: &[u8],
    sealed: bool,
) -> StoreResult<Endpoint> {
    let created_at = sqlx::query_scalar!(
        "INSERT INTO webhook_endpoints (id, url, events, secret, secret_sealed)
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
        id,
        url,
        events as Option<&[String]>,
        secret,
        sealed,
    )
    .fetch_one(db)
    .await?;
    Ok(Endpoint {
        id,
        url: url.to_string(),
        events: events.map(<[String]>::to_vec),
        enabled: true,
        disabled_reason: None,
        previous_until: None,
        created_at,
        pending: 0,
        failed: 0,
        oldest_pending_at: None,
    })
}

/// Every endpoint not deleted, oldest first, with its deliveries' counts.
pub async fn endpoints(db: &PgPool) -> StoreResult<Vec<Endpoint>> {
    with_counts(db, None).await
}

/// One endpoint not deleted, with its deliveries' counts.
pub async fn endpoint(db: &PgPool, id: Uuid) -> StoreResult<Option<Endpoint>> {
    Ok(with_counts(db, Some(id)).await?.pop())
}

/// The endpoints not deleted (or only `id`), with their deliveries' counts.
async fn with_counts(db: &PgPool, id: Option<Uuid>) -> StoreResult<Vec<Endpoint>> {
    let rows = sqlx::query_as!(
        Endpoint,
        r#"SELECT e.id, e.url, e.events, e.enabled, e.disabled_reason, e.previous_until,
                  e.created_at, c.pending AS "pending!", c.failed AS "failed!",
                  c.oldest_pending_at
           FROM webhook_endpoints e
           CROSS JOIN LATERAL (
               SELECT count(*) FILTER (WHERE d.status = 'pending') AS pending,
                      count(*) FILTER (WHERE d.status = 'failed') AS failed,
                      min(d.created_at) FILTER (WHERE d.status = 'pending') AS oldest_pending_at
               FROM webhook_deliveries d WHERE d.endpoint_id = e.id) c
           WHERE e.deleted_at IS NULL AND ($1::uuid IS NULL OR e.id = $1)
           ORDER BY e.created_at, e.id"#,
        id,
    )
    .fetch_all(db)
    .await?;
    Ok(rows)
}

/// What a PATCH changes; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct EndpointChange<'a> {
    pub url: Option<&'a str>,
    /// `Some(None)`: every type.
    pub events: Option<Option<&'a [String]>>,
    pub enabled: Option<bool>,
}

/// Applies `change` to an endpoint not deleted; `false` when there is none.
/// Enabling clears `disabled_reason`; disabling by an admin says so.
pub async fn update_endpoint(
    db: &PgPool,
    id: Uuid,
    change: &EndpointChange<'_>,
) -> StoreResult<bool> {
    let (set_events, events) = match change.events {
        None => (false, None),
        Some(e) => (true, e),
    };
    let done = sqlx::query!(
        "UPDATE webhook_endpoints SET
             url = COALESCE($2, url),
             events = CASE WHEN $3 THEN $4 ELSE events END,
             enabled = COALESCE($5, enabled),
             disabled_reason = CASE
                 WHEN $5 IS NULL THEN disabled_reason
                 WHEN $5 THEN NULL
                 WHEN enabled THEN $6
                 ELSE disabled_reason END,
             updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
        id,
        change.url,
        set_events,
        events as Option<&[String]>,
        change.enabled,
        DISABLED_BY_ADMIN,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes an endpoint (softly: its deliveries log stays) and ends its
/// pending deliveries as failed, in one statement, so no worker sends
/// another. `false` when there was none to delete.
pub async fn delete_endpoint(db: &PgPool, id: Uuid) -> StoreResult<bool> {
    let deleted = sqlx::query_scalar!(
        r#"WITH gone AS (
               UPDATE webhook_endpoints
               SET deleted_at = now(), enabled = false, disabled_reason = 'deleted',
                   updated_at = now()
               WHERE id = $1 AND deleted_at IS NULL
               RETURNING id),
           ended AS (
               UPDATE webhook_deliveries d SET status = 'failed', last_error = $2
               FROM gone WHERE d.endpoint_id = gone.id AND d.status = 'pending'
               RETURNING 1)
           SELECT count(*) AS "n!" FROM gone"#,
        id,
        ENDPOINT_DELETED,
    )
    .fetch_one(db)
    .await?;
    Ok(deleted == 1)
}

/// A new secret for an endpoint not deleted; the current one becomes the
/// previous, signing too until `now + grace_seconds`. `false` when there is
/// no such endpoint.
pub async fn rotate_secret(
    db: &PgPool,
    id: Uuid,
    secret: &[u8],
    sealed: bool,
    grace_seconds: i64,
) -> StoreResult<bool> {
    let done = sqlx::query!(
        "UPDATE webhook_endpoints SET
             previous_secret = secret, previous_sealed = secret_sealed,
             previous_until = now() + make_interval(secs => $4::float8),
             secret = $2, secret_sealed = $3, updated_at = now()
         WHERE id = $1 AND deleted_at IS NULL",
        id,
        secret,
        sealed,
        grace_seconds as f64,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One line of the deliveries log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
}

/// An endpoint's deliveries, newest first, optionally in one `status`,
/// after `after` (the (created_at, event_id) of the last one of the
/// previous page), at most `limit`.
pub async fn deliveries(
    db: &PgPool,
    endpoint_id: Uuid,
    status: Option<&str>,
    after: Option<(OffsetDateTime, &str)>,
    limit: i64,
) -> StoreResult<Vec<Delivery>> {
    let (after_at, after_id) = after.unzip();
    let rows = sqlx::query_as!(
        Delivery,
        r#"SELECT d.event_id, e.type AS event_type, d.status, d.attempts, d.last_status_code,
                  d.last_error, d.next_attempt_at, d.created_at
           FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
           WHERE d.endpoint_id = $1
             AND ($2::text IS NULL OR d.status = $2)
             AND ($3::timestamptz IS NULL OR (d.created_at, d.event_id) < ($3, $4::text))
           ORDER BY d.created_at DESC, d.event_id DESC
           LIMIT $5"#,
        endpoint_id,
        status,
        after_at,
        after_id,
        limit,
    )
    .fetch_all(db)
    .await?;
    Ok(rows)
}

/// Sets pending again, due now, the deliveries of the retained events of the
/// endpoint's current types created from `max(since, the endpoint's
/// registration)` to `until` (inclusive); with `status`, only deliveries in
/// it, else also the events that have none yet (created here). Attempts and
/// the last outcome stay, as the log of what happened before. Returns how
/// many were queued.
pub async fn replay(
    db: &PgPool,
    endpoint_id: Uuid,
    since: OffsetDateTime,
    until: Option<OffsetDateTime>,
    status: Option<&str>,
) -> StoreResult<u64> {
    let done = sqlx::query!(
        "WITH ep AS (
             SELECT id, events, created_at FROM webhook_endpoints
             WHERE id = $1 AND deleted_at IS NULL)
         INSERT INTO webhook_deliveries (endpoint_id, event_id, status, next_attempt_at)
         SELECT ep.id, ev.id, 'pending', now()
         FROM ep JOIN events ev
           ON ev.created_at >= GREATEST($2, ep.created_at)
          AND ($3::timestamptz IS NULL OR ev.created_at <= $3)
          AND (ep.events IS NULL OR ev.type = ANY (ep.events))
         WHERE $4::text IS NULL OR EXISTS (
             SELECT 1 FROM webhook_deliveries d
             WHERE d.endpoint_id = ep.id AND d.event_id = ev.id AND d.status = $4)
         ON CONFLICT (endpoint_id, event_id)
         DO UPDATE SET status = 'pending', next_attempt_at = now()",
        endpoint_id,
        since,
        until,
        status,
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
