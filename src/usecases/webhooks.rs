//! The store's endpoints, as an admin registers, changes, rotates, deletes
//! and replays them (the API and `flashsale webhooks`): the rules of an
//! endpoint's URL (`webhooks.allow_http`, `webhooks.allow_private_networks`)
//! and its secret, generated here, shown once, stored sealed with
//! `webhooks.secret_key` when it is set.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{Settings, WebhookSettings};
use crate::domain::webhook::{is_event_type, public_address, Secret, EVENT_TYPES};
use crate::store::{self, Endpoint, EndpointChange, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no such webhook endpoint")]
    NotFound,
    #[error("the endpoint is disabled: enable it (PATCH {{\"enabled\": true}}) to replay")]
    Disabled,
    /// Input that breaks a rule, with the words to say why.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `webhooks.secret_key` did not decode (refused at start already).
    #[error("{0}")]
    Config(String),
}

pub type WebhookResult<T> = Result<T, WebhookError>;

/// The longest URL an endpoint may have.
pub const MAX_URL: usize = 2048;
/// How long registering waits for the endpoint's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint's URL, checked: absolute, `https` (or `http` with
/// `webhooks.allow_http`), a host, no user or password, no fragment; and,
/// unless `webhooks.allow_private_networks`, a host that resolves now, only
/// to public addresses. The delivery worker checks the addresses again at
/// every attempt (a name may resolve elsewhere later).
pub async fn check_url(text: &str, w: &WebhookSettings) -> WebhookResult<String> {
    let bad = |why: String| Err(WebhookError::Invalid(format!("`url`: {why}")));
    if text.len() > MAX_URL {
        return bad(format!("longer than {MAX_URL} characters"));
    }
    let url = match reqwest::Url::parse(text) {
        Ok(u) => u,
        Err(e) => return bad(format!("not an absolute URL ({e})")),
    };
    match url.scheme() {
        "https" => {}
        "http" if w.allow_http => {}
        "http" => return bad("must be https (`webhooks.allow_http` is off)".into()),
        other => return bad(format!("the scheme must be https, not `{other}`")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry a user name or password".into());
    }
    if url.fragment().is_some() {
        return bad("must not have a fragment (`#...`)".into());
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return bad("has no host".into());
    };
    if !w.allow_private_networks {
        let port = url.port_or_known_default().unwrap_or(443);
        // The URL parser writes an IPv6 host in brackets.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::IpAddr> = match literal.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let name = host.trim_end_matches('.');
                if name.eq_ignore_ascii_case("localhost")
                    || name.to_ascii_lowercase().ends_with(".localhost")
                {
                    return bad(format!(
                        "`{name}` is this machine (`webhooks.allow_private_networks` is off)"
                    ));
                }
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
                    .await
                {
                    Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                    Ok(Err(e)) => return bad(format!("`{name}` does not resolve ({e})")),
                    Err(_) => return bad(format!("`{name}` did not resolve in time")),
                }
            }
        };
        if addrs.is_empty() {
            return bad("the host resolves to no address".into());
        }
        if let Some(ip) = addrs.iter().find(|ip| !public_address(**ip)) {
            return bad(format!(
                "the host resolves to {ip}, a loopback, private, link-local or otherwise \
                 non-public address (`webhooks.allow_private_networks` is off)"
            ));
        }
    }
    Ok(url.to_string())
}

/// The types of a body's `events`: each known, at least one, without
/// repeats (kept in the order given). `None` (absent or null): every type.
pub fn check_events(events: Option<Vec<String>>) -> WebhookResult<Option<Vec<String>>> {
    let Some(events) = events else {
        return Ok(None);
    };
    if events.is_empty() {
        return Err(WebhookError::Invalid(
            "`events`: give at least one type, or leave it out for every type".into(),
        ));
    }
    let mut kept: Vec<String> = Vec::with_capacity(events.len());
    for t in events {
        if !is_event_type(&t) {
            return Err(WebhookError::Invalid(format!(
                "`events`: unknown type `{}`; the types are {}",
                t.escape_debug(),
                EVENT_TYPES.join(", ")
            )));
        }
        if !kept.contains(&t) {
            kept.push(t);
        }
    }
    Ok(Some(kept))
}

fn secret_key(settings: &Settings) -> WebhookResult<Option<[u8; 32]>> {
    settings
        .webhook_secret_key()
        .map_err(|e| WebhookError::Config(e.to_string()))
}

/// A new endpoint's input, checked ([`check_new`]).
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    url: String,
    events: Option<Vec<String>>,
}

/// Checks a new endpoint's URL and types. Apart from the database: the
/// name's resolution has its own time bound.
pub async fn check_new(
    settings: &Settings,
    url: &str,
    events: Option<Vec<String>>,
) -> WebhookResult<NewEndpoint> {
    let events = check_events(events)?;
    let url = check_url(url, &settings.webhooks).await?;
    Ok(NewEndpoint { url, events })
}

/// Registers an endpoint; returns it with its new secret (shown only now).
pub async fn create(
    db: &PgPool,
    settings: &Settings,
    new: NewEndpoint,
) -> WebhookResult<(Endpoint, Secret)> {
    let key = secret_key(settings)?;
    let secret = Secret::generate();
    let (stored, sealed) = secret.seal(key.as_ref());
    let endpoint = store::insert_endpoint(
        db,
        Uuid::now_v7(),
        &new.url,
        new.events.as_deref(),
        &stored,
        sealed,
    )
    .await?;
    Ok((endpoint, secret))
}

pub async fn get(db: &PgPool, id: Uuid) -> WebhookResult<Endpoint> {
    store::endpoint(db, id).await?.ok_or(WebhookError::NotFound)
}

/// What a PATCH asks for, before its checks.
#[derive(Debug, Default)]
pub struct Patch {
    pub url: Option<String>,
    /// `Some(None)`: every type.
    pub events: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
}

/// A PATCH, checked ([`check_patch`]).
#[derive(Debug)]
pub struct CheckedPatch(Patch);

/// Checks a PATCH: at least one field, and each as on registration.
pub async fn check_patch(settings: &Settings, patch: Patch) -> WebhookResult<CheckedPatch> {
    if patch.url.is_none() && patch.events.is_none() && patch.enabled.is_none() {
        return Err(WebhookError::Invalid(
            "give at least one of `url`, `events`, `enabled`".into(),
        ));
    }
    let events = patch.events.map(check_events).transpose()?;
    let url = match patch.url {
        Some(u) => Some(check_url(&u, &settings.webhooks).await?),
        None => None,
    };
    Ok(CheckedPatch(Patch {
        url,
        events,
        enabled: patch.enabled,
    }))
}

pub async fn update(db: &PgPool, id: Uuid, patch: &CheckedPatch) -> WebhookResult<Endpoint> {
    let patch = &patch.0;
    let change = EndpointChange {
        url: patch.url.as_deref(),
        events: patch.events.as_ref().map(|e| e.as_deref()),
        enabled: patch.enabled,
    };
    if !store::update_endpoint(db, id, &change).await? {
        return Err(WebhookError::NotFound);
    }
    get(db, id).await
}

/// Deletes an endpoint; returns it as it was just before.
pub async fn delete(db: &PgPool, id: Uuid) -> WebhookResult<Endpoint> {
    let endpoint = get(db, id).await?;
    if !store::delete_endpoint(db, id).await? {
        return Err(WebhookError::NotFound);
    }
    Ok(endpoint)
}

/// A new secret; the current one still signs for
/// `webhooks.rotation_grace_seconds`.
pub async fn rotate(
    db: &PgPool,
    settings: &Settings,
    id: Uuid,
) -> WebhookResult<(Endpoint, Secret)> {
    let key = secret_key(settings)?;
    let secret = Secret::generate();
    let (stored, sealed) = secret.seal(key.as_ref());
    let grace = i64::try_from(settings.webhooks.rotation_grace_seconds).unwrap_or(i64::MAX);
    if !store::rotate_secret(db, id, &stored, sealed, grace).await? {
        return Err(WebhookError::NotFound);
    }
    Ok((get(db, id).await?, secret))
}

/// What a replay covers.
#[derive(Debug, Clone)]
pub struct Replay {
    pub since: OffsetDateTime,
    pub until: Option<OffsetDateTime>,
    /// Only deliveries in this status (`pending`, `delivered`, `failed`).
    pub status: Option<String>,
}

/// Queues again the endpoint's events of `replay`'s window (see
/// `store::replay`); 0 when there are none. A disabled endpoint is refused:
/// nothing would be sent.
pub async fn replay(db: &PgPool, id: Uuid, replay: &Replay) -> WebhookResult<u64> {
    if let Some(until) = replay.until {
        if until < replay.since {
            return Err(WebhookError::Invalid(
                "`until` must not be before `since`".into(),
            ));
        }
    }
    if let Some(s) = &replay.status {
        if !DELIVERY_STATUSES.contains(&s.as_str()) {
            return Err(WebhookError::Invalid(format!(
                "`status` must be one of {}",
                DELIVERY_STATUSES.join(", ")
            )));
        }
    }
    let endpoint = get(db, id).await?;
    if !endpoint.enabled {
        return Err(WebhookError::Disabled);
    }
    Ok(store::replay(db, id, replay.since, replay.until, replay.status.as_deref()).await?)
}

/// A delivery's states.
pub const DELIVERY_STATUSES: [&str; 3] = ["pending", "delivered", "failed"];
