//! `flashsale webhooks list|replay`: the store's endpoints with their state,
//! and their events delivered again.

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use super::redact;
use crate::config::Settings;
use crate::usecases::webhooks::{self, Replay, WebhookError};

/// Postgres alone: endpoints and deliveries live there, whatever Redis does.
async fn database(settings: &Settings) -> Result<sqlx::PgPool, i32> {
    let db = crate::store::pool(settings).map_err(|e| {
        eprintln!("`database.url` is not a valid Postgres URL: {e}");
        2
    })?;
    if let Err(e) = crate::store::ping(&db).await {
        eprintln!(
            "cannot reach `database.url` {}: {e}",
            redact(settings.database.url.expose_secret())
        );
        return Err(2);
    }
    Ok(db)
}

pub(super) async fn webhooks_list(settings: &Settings) -> i32 {
    let db = match database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let endpoints = match crate::store::endpoints(&db).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    println!(
        "{:<36} {:<16} {:>7} {:>6}  {:<40} url",
        "id", "status", "pending", "failed", "types"
    );
    for e in endpoints {
        let status = match (e.enabled, &e.disabled_reason) {
            (true, _) => "enabled".to_string(),
            (false, Some(why)) => format!("disabled:{why}"),
            (false, None) => "disabled".to_string(),
        };
        let types = e.events.map_or_else(|| "*".to_string(), |t| t.join(","));
        println!(
            "{:<36} {:<16} {:>7} {:>6}  {:<40} {}",
            e.id, status, e.pending, e.failed, types, e.url
        );
    }
    0
}

fn parse_time(flag: &str, text: &str) -> Result<OffsetDateTime, i32> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|e| {
        eprintln!("--{flag} `{text}` is not an RFC 3339 time ({e}), e.g. 2026-12-06T09:00:00Z");
        2
    })
}

pub(super) async fn webhooks_replay(
    settings: &Settings,
    endpoint: &str,
    since: &str,
    until: Option<&str>,
) -> i32 {
    let since = match parse_time("since", since) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let until = match until.map(|u| parse_time("until", u)).transpose() {
        Ok(t) => t,
        Err(code) => return code,
    };
    let replay = Replay {
        since,
        until,
        status: None,
    };
    let Ok(id) = uuid::Uuid::parse_str(endpoint) else {
        eprintln!("no webhook endpoint `{endpoint}` (`flashsale webhooks list` shows them)");
        return 2;
    };
    let db = match database(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    match webhooks::replay(&db, id, &replay).await {
        Ok(n) => {
            println!("queued {n}");
            0
        }
        Err(WebhookError::NotFound) => {
            eprintln!("no webhook endpoint `{endpoint}` (`flashsale webhooks list` shows them)");
            2
        }
        Err(WebhookError::Disabled) => {
            eprintln!("endpoint `{endpoint}` is disabled: enable it (PATCH /v1/webhooks/{endpoint} {{\"enabled\": true}}) to replay");
            1
        }
        Err(WebhookError::Invalid(why)) => {
            eprintln!("{why}");
            2
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
