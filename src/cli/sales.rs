//! `flashsale sales load|list`: scheduling sales from a file, and a table of them.

use super::one_shot;
use crate::config::Settings;

pub(super) async fn sales_load(settings: &Settings, file: &std::path::Path, dry_run: bool) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", file.display());
            return 2;
        }
    };
    let defs = match crate::usecases::schedule::parse_file(&text) {
        Ok(d) => d,
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("nothing loaded: {} problem(s)", problems.len());
            return 1;
        }
    };
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    match crate::usecases::schedule::load(&engine, &db, &defs, dry_run).await {
        Ok(plan) => {
            for (id, what) in &plan {
                let what = if dry_run {
                    format!("would be {what}")
                } else {
                    what.to_string()
                };
                println!("{id}: {what}");
            }
            let created = plan.iter().filter(|(_, w)| *w == "created").count();
            println!(
                "{} sale(s): {created} {}, {} unchanged",
                plan.len(),
                if dry_run { "to create" } else { "created" },
                plan.len() - created
            );
            0
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("nothing loaded: {} problem(s)", problems.len());
            1
        }
    }
}

pub(super) async fn sales_list(settings: &Settings) -> i32 {
    let (engine, db) = match one_shot(settings).await {
        Ok(h) => h,
        Err(code) => return code,
    };
    let defs = match crate::store::sales(&db).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    println!(
        "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  {:<20} {:<20} name",
        "sale", "status", "available", "held", "sold", "total", "starts_at", "ends_at"
    );
    for def in defs {
        let id = &def.id;
        let line = match engine.sale(id).await {
            Ok(s) => format!(
                "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  {:<20} {:<20} {}",
                s.id,
                serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                s.stock.available,
                s.stock.held,
                s.stock.sold,
                s.stock.total,
                crate::domain::rfc3339_ms(s.starts_at)
                    .get(..19)
                    .unwrap_or(""),
                crate::domain::rfc3339_ms(s.ends_at).get(..19).unwrap_or(""),
                s.name
            ),
            Err(crate::engine::EngineError::Refused(_)) => {
                match crate::usecases::archive::sale(&db, id).await {
                    Ok(Some(s)) => format!(
                        "{:<24} {:<10} {:>9} {:>7} {:>7} {:>7}  (archived: final figures from Postgres)",
                        s.id, "archived", s.stock.available, s.stock.held, s.stock.sold, s.stock.total
                    ),
                    _ => format!(
                        "{:<24} {:<10} (not in Redis: see `flashsale reconcile`)",
                        def.id, "missing"
                    ),
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        };
        println!("{line}");
    }
    0
}
