//! Marketing's side: scheduling sales, one from the API or a whole file with
//! `flashsale sales load`, and listing them with `flashsale sales list`.
//!
//! Scheduling writes Postgres first, then loads Redis with an idempotent
//! script, then marks the row loaded: a crash in between leaves a row the
//! worker's loader finishes, never a sale that is half created.

use serde::Deserialize;
use sqlx::PgPool;

use crate::domain::{SaleDef, SaleId, SaleInput};
use crate::engine::{Engine, EngineError, Refusal};
use crate::store::{self, Scheduled, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    /// The same sale was already scheduled: nothing changed.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("a sale with this id exists with a different definition")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Schedules one validated sale; the same sale again is `Unchanged`.
pub async fn schedule(
    engine: &Engine,
    db: &PgPool,
    def: &SaleDef,
) -> Result<Outcome, ScheduleError> {
    let outcome = match store::insert_sale(db, def).await? {
        Scheduled::Inserted => Outcome::Created,
        Scheduled::Existing(existing) if existing == *def => Outcome::Unchanged,
        Scheduled::Existing(_) => return Err(ScheduleError::Conflict),
    };
    engine.create_sale(def).await?;
    store::mark_loaded(db, &def.id).await?;
    Ok(outcome)
}

/// Loads into Redis the sales whose creation stopped half way (Postgres
/// written, Redis not). A sale that fails to load is skipped, with the
/// reason kept in Postgres (shown by reconcile), logged when it first fails
/// (or fails anew), and counted; the others load. Returns how many loaded.
pub async fn load_pending(engine: &Engine, db: &PgPool) -> Result<usize, ScheduleError> {
    let mut loaded = 0;
    for (def, previous) in store::sales_not_loaded(db).await? {
        match engine.create_sale(&def).await {
            Ok(_) => {
                store::mark_loaded(db, &def.id).await?;
                loaded += 1;
                tracing::info!(sale_id = %def.id, "loaded a sale whose creation was interrupted");
            }
            // Redis down is down for every sale: stop the pass here.
            Err(e @ EngineError::Unavailable(_)) => return Err(e.into()),
            Err(e) => {
                let why = match &e {
                    EngineError::Refused(Refusal::SaleConflict) => {
                        "Redis holds a different sale under this id".to_string()
                    }
                    other => other.to_string(),
                };
                crate::metrics::load_failed();
                if previous.as_deref() != Some(why.as_str()) {
                    tracing::error!(sale_id = %def.id, reason = %why, "cannot load a sale into Redis; loading the others");
                    store::mark_load_failed(db, &def.id, &why).await?;
                }
            }
        }
    }
    Ok(loaded)
}

/// Parses and validates a sales file (`[[sale]]` tables with the fields of
/// `POST /v1/sales`). Every problem is reported with the sale's position, so
/// one run shows them all; any problem means nothing may be loaded.
pub fn parse_file(text: &str) -> Result<Vec<SaleDef>, Vec<String>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        sale: Vec<toml::Value>,
    }
    let file: File = toml::from_str(text).map_err(|e| vec![format!("not a sales file: {e}")])?;
    if file.sale.is_empty() {
        return Err(vec!["no [[sale]] tables in the file".into()]);
    }
    let mut defs = Vec::with_capacity(file.sale.len());
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in file.sale.into_iter().enumerate() {
        let at = |id: &str| format!("sale #{} ({id})", i + 1);
        let id = raw
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("no id")
            .to_string();
        let checked = SaleInput::deserialize(datetimes_as_text(raw))
            .map_err(|e| e.to_string())
            .and_then(|input| match input.id {
                Some(_) => input.validate(String::new),
                None => Err(
                    "`id` is required in a sales file (loading twice must be idempotent)".into(),
                ),
            });
        match checked {
            Ok(def) if !seen.insert(def.id.clone()) => {
                problems.push(format!("{}: the id appears twice in the file", at(&id)))
            }
            Ok(def) => defs.push(def),
            Err(why) => problems.push(format!("{}: {why}", at(&id))),
        }
    }
    if problems.is_empty() {
        Ok(defs)
    } else {
        Err(problems)
    }
}

/// TOML has its own datetime type; the API speaks RFC 3339 strings.
fn datetimes_as_text(v: toml::Value) -> toml::Value {
    match v {
        toml::Value::Datetime(d) => toml::Value::String(d.to_string()),
        toml::Value::Table(t) => toml::Value::Table(
            t.into_iter()
                .map(|(k, v)| (k, datetimes_as_text(v)))
                .collect(),
        ),
        other => other,
    }
}

/// What loading a file did (or, with `dry_run`, would do), sale by sale.
pub async fn load(
    engine: &Engine,
    db: &PgPool,
    defs: &[SaleDef],
    dry_run: bool,
) -> Result<Vec<(SaleId, &'static str)>, Vec<String>> {
    // Check every sale against what is scheduled before changing anything.
    let mut problems = Vec::new();
    let mut plan = Vec::with_capacity(defs.len());
    for (i, def) in defs.iter().enumerate() {
        match store::sale(db, &def.id).await {
            Ok(None) => plan.push((def.id.clone(), "created")),
            Ok(Some(existing)) if existing == *def => plan.push((def.id.clone(), "unchanged")),
            Ok(Some(_)) => problems.push(format!(
                "sale #{} ({}): already scheduled with a different definition",
                i + 1,
                def.id
            )),
            Err(e) => return Err(vec![e.to_string()]),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if dry_run {
        return Ok(plan);
    }
    for def in defs {
        schedule(engine, db, def)
            .await
            .map_err(|e| vec![format!("sale {}: {e}", def.id)])?;
    }
    Ok(plan)
}
