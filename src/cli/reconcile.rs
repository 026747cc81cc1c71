//! `flashsale reconcile [--apply|--rebuild]`: the report, and the repairs asked for.

use tokio_util::sync::CancellationToken;

use super::one_shot;
use crate::config::Settings;
use crate::domain::SaleId;

pub(super) async fn reconcile(
    settings: &Settings,
    only: Option<&str>,
    apply: bool,
    json: bool,
    rebuild: bool,
) -> i32 {
    use crate::usecases::reconcile as rc;
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    let outbox = crate::usecases::flush::Flusher::new(
        engine.clone(),
        db.clone(),
        settings.worker.flush_batch,
        std::time::Duration::from_millis(settings.worker.claim_idle_ms),
        CancellationToken::new(),
    )
    .with_consumer("reconcile");
    let now = std::time::Duration::ZERO;
    let run = async {
        let mut reports = Vec::new();
        // Not an id: no sale has it, as for any id Postgres does not hold.
        let only = only
            .map(|id| SaleId::parse(id).ok_or_else(|| rc::ReconcileError::UnknownSale(id.into())))
            .transpose()?;
        for def in rc::sales(&db, only.as_ref()).await? {
            let report = if rebuild {
                let stock = rc::rebuild(&engine, &db, &outbox, &def).await?;
                let mut r = rc::inspect(&engine, &db, &def, now).await?;
                r.repairs.push(format!(
                    "rebuilt from Postgres: total {} sold {} available {} held 0",
                    stock.total, stock.sold, stock.available
                ));
                r
            } else {
                let report = rc::inspect(&engine, &db, &def, now).await?;
                if apply && !report.drift.is_empty() {
                    rc::apply(&engine, &db, &outbox, &def, report).await?
                } else {
                    report
                }
            };
            // Only a repair reads the outbox; it leaves no consumer behind.
            if rebuild || apply {
                outbox.leave(&def.id).await?;
            }
            report.export();
            reports.push(report);
        }
        Ok::<_, rc::ReconcileError>(reports)
    };
    match run.await {
        Ok(reports) => {
            if json {
                match serde_json::to_string_pretty(&serde_json::json!({ "sales": reports })) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return 2;
                    }
                }
            } else {
                print!("{}", rc::render(&reports));
            }
            if reports.iter().all(|r| r.drift.is_empty()) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("reconcile: {e}");
            2
        }
    }
}
