//! `flashsale loadtest`: plays a flash sale against a running gateway, as a
//! crowd of buyers would, then checks the contract's invariants against what
//! the gateway reports. The README's demo runs it; it exits 1 when an
//! invariant is broken.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;

use crate::auth::Auth;
use crate::config::Settings;
use crate::domain::{rfc3339_ms, Reservation, Sale};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Distinct buyers.
    #[arg(long, default_value_t = 500)]
    pub customers: usize,
    /// Reserve requests, spread over the buyers.
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Units on sale.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Per-customer limit.
    #[arg(long, default_value_t = 2)]
    pub limit: u32,
    /// Hold lifetime; abandoned holds come back after it.
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u32,
    /// Share of holds that are confirmed (paid).
    #[arg(long, default_value_t = 0.6)]
    pub confirm_share: f64,
    /// Share of holds released by the buyer; the rest are abandoned.
    #[arg(long, default_value_t = 0.2)]
    pub release_share: f64,
}

/// What the crowd saw.
#[derive(Debug, Default)]
struct Tally {
    codes: HashMap<String, usize>,
    held: Vec<Reservation>,
    latencies: Vec<Duration>,
}

pub async fn run(settings: &Settings, opts: Options) -> i32 {
    match play(settings, &opts).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            2
        }
    }
}

async fn play(settings: &Settings, o: &Options) -> anyhow::Result<bool> {
    anyhow::ensure!(
        o.customers > 0 && o.requests > 0 && o.concurrency > 0,
        "counts must be above 0"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&(o.confirm_share + o.release_share)),
        "--confirm-share plus --release-share must be within 0..1"
    );
    let auth = Auth::new(&settings.auth.jwt_secret);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(o.concurrency)
        .build()?;
    let base = o.url.trim_end_matches('/');
    wait_ready(&http, base).await?;

    let admin = auth.issue("loadtest-admin", Some("admin"), 3600)?;
    let now = time::OffsetDateTime::now_utc();
    let sale_id = format!("demo-{}", now.unix_timestamp());
    let res = http
        .post(format!("{base}/v1/sales"))
        .bearer_auth(&admin)
        .json(&json!({
            "id": sale_id, "sku": "TV-55-OLED", "name": "55\" OLED TV (12.12 demo)",
            "price_cents": 499_900, "currency": "IDR", "stock": o.stock,
            "starts_at": rfc3339_ms(now - Duration::from_secs(5)),
            "ends_at": rfc3339_ms(now + Duration::from_secs(3600)),
            "per_customer_limit": o.limit, "hold_seconds": o.hold_seconds,
        }))
        .send()
        .await?;
    anyhow::ensure!(
        res.status().is_success(),
        "creating the sale: {} {}",
        res.status(),
        res.text().await?
    );
    println!(
        "sale {sale_id}: {} units, limit {} per buyer, holds last {} s",
        o.stock, o.limit, o.hold_seconds
    );

    let tokens: Vec<String> = (0..o.customers)
        .map(|i| auth.issue(&format!("buyer-{i}"), None, 3600))
        .collect::<Result<_, _>>()?;
    println!(
        "{} buyers send {} reserve requests, {} at a time...",
        o.customers, o.requests, o.concurrency
    );
    let started = Instant::now();
    let results: Vec<(Result<Answer, reqwest::Error>, Duration)> = stream::iter(0..o.requests)
        .map(|i| {
            let (http, token) = (http.clone(), tokens[i % o.customers].clone());
            let url = format!("{base}/v1/sales/{sale_id}/reservations");
            let quantity = rand::thread_rng().gen_range(1..=o.limit.min(2));
            async move {
                let t = Instant::now();
                let r = reserve(&http, &url, &token, quantity).await;
                (r, t.elapsed())
            }
        })
        .buffer_unordered(o.concurrency)
        .collect()
        .await;
    let storm = started.elapsed();
    let storm_ended = time::OffsetDateTime::now_utc();
    let mut tally = Tally::default();
    for (r, latency) in results {
        tally.latencies.push(latency);
        match r {
            Ok(Answer { code, held }) => {
                *tally.codes.entry(code).or_default() += 1;
                tally.held.extend(held);
            }
            Err(e) => *tally.codes.entry(format!("transport: {e}")).or_default() += 1,
        }
    }

    // The buyers decide: pay, give back, or walk away.
    let mut holds = tally.held.clone();
    holds.shuffle(&mut rand::thread_rng());
    let n_confirm = (holds.len() as f64 * o.confirm_share).round() as usize;
    let n_release = (holds.len() as f64 * o.release_share).round() as usize;
    let token_of = |c: &str| auth.issue(c, None, 3600);
    let (mut confirmed, mut confirmed_units, mut late) = (0i64, 0i64, 0usize);
    let mut failures = Vec::new();
    for (i, h) in holds.iter().enumerate() {
        let token = token_of(&h.customer_id)?;
        let confirm = i < n_confirm;
        let req = if confirm {
            http.post(format!("{base}/v1/reservations/{}/confirm", h.id))
                .json(&json!({"payment_ref": format!("pay-{i}")}))
        } else if i < n_confirm + n_release {
            http.delete(format!("{base}/v1/reservations/{}", h.id))
        } else {
            continue;
        };
        let status = req.bearer_auth(token).send().await?.status().as_u16();
        match status {
            200 if confirm => {
                confirmed += 1;
                confirmed_units += i64::from(h.quantity);
            }
            200 => {}
            // Too late to pay or give back: honest only past the hold's deadline.
            410 | 409 if past(&h.expires_at) => late += 1,
            other => failures.push(format!(
                "{} {}: {other}",
                if confirm { "confirm" } else { "release" },
                h.id
            )),
        }
    }
    let abandoned: i64 = holds[(n_confirm + n_release).min(holds.len())..]
        .iter()
        .map(|h| i64::from(h.quantity))
        .sum();

    // Invariants, as the gateway and Postgres report them.
    let mut ok = true;
    let mut check = |what: &str, holds: bool| {
        println!("  [{}] {what}", if holds { "ok" } else { "BROKEN" });
        ok &= holds;
    };
    let granted: i64 = tally.held.iter().map(|r| i64::from(r.quantity)).sum();
    let mut per_customer: HashMap<&str, u32> = HashMap::new();
    for r in &tally.held {
        *per_customer.entry(&r.customer_id).or_default() += r.quantity;
    }
    let max_per_customer = per_customer.values().copied().max().unwrap_or(0);
    // Units granted during the storm are bounded by the stock only while no
    // hold could expire (and hand its units to another buyer) mid-storm.
    let none_expired = tally
        .held
        .iter()
        .all(|r| !past_at(&r.expires_at, storm_ended));
    let sale = get_sale(&http, base, &sale_id).await?;
    let s = sale.stock;

    tally.latencies.sort();
    let pct = |p: f64| {
        let idx = ((tally.latencies.len() as f64 - 1.0) * p).round() as usize;
        tally
            .latencies
            .get(idx)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "\nstorm: {} requests in {:.2} s ({:.0} req/s); latency p50 {:.1} ms, p99 {:.1} ms",
        o.requests,
        storm.as_secs_f64(),
        o.requests as f64 / storm.as_secs_f64(),
        pct(0.5),
        pct(0.99)
    );
    let mut codes: Vec<_> = tally.codes.iter().collect();
    codes.sort();
    for (code, n) in codes {
        println!("  {n:>6}  {code}");
    }
    let late_note = if late > 0 {
        format!(", {late} too late (hold expired)")
    } else {
        String::new()
    };
    println!(
        "units reserved: {granted} of {}; then {confirmed_units} confirmed, {abandoned} abandoned{late_note}",
        o.stock
    );
    println!(
        "gateway now: available {} held {} sold {} total {} ({})",
        s.available,
        s.held,
        s.sold,
        s.total,
        serde_json::to_value(sale.status)?.as_str().unwrap_or("?")
    );
    for f in &failures {
        println!("  unexpected answer: {f}");
    }
    if none_expired {
        check(
            "no unit reserved twice: units reserved <= total",
            granted <= o.stock,
        );
        check(
            "no buyer past the per-customer limit",
            max_per_customer <= o.limit,
        );
    } else {
        println!("  [--] holds expired during the storm: raise --hold-seconds to check the units granted against the stock");
    }
    check(
        "available + held + sold == total, none negative",
        s.available + s.held + s.sold == s.total && s.available >= 0 && s.held >= 0 && s.sold >= 0,
    );
    check("sold == units confirmed", s.sold == confirmed_units);
    check(
        "every confirm and release answered as the contract says",
        failures.is_empty(),
    );
    check(
        "no 5xx answers",
        !tally
            .codes
            .keys()
            .any(|c| c.starts_with('5') || c.starts_with("transport")),
    );
    match orders_in_postgres(settings, &sale_id, confirmed).await {
        Some((rows, units)) => check(
            &format!("every confirmed order is one row in Postgres ({rows} rows, {units} units)"),
            rows == confirmed && units == confirmed_units,
        ),
        None => println!("  [--] Postgres not reachable from here: orders not checked"),
    }

    if abandoned > 0 {
        let wait = Duration::from_secs(u64::from(o.hold_seconds)) + Duration::from_millis(1500);
        println!(
            "waiting {:.1} s for abandoned holds to expire...",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        let s = get_sale(&http, base, &sale_id).await?.stock;
        println!(
            "gateway now: available {} held {} sold {} total {}",
            s.available, s.held, s.sold, s.total
        );
        check(
            "abandoned holds returned to stock",
            s.held == 0 && s.available == s.total - s.sold,
        );
    }
    println!(
        "{}",
        if ok {
            "all invariants hold"
        } else {
            "INVARIANT BROKEN"
        }
    );
    Ok(ok)
}

/// One reserve's answer: `"<status> <code>"`, and the hold when it was granted.
struct Answer {
    code: String,
    held: Option<Reservation>,
}

async fn reserve(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    quantity: u32,
) -> Result<Answer, reqwest::Error> {
    let res = http
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "quantity": quantity }))
        .send()
        .await?;
    let status = res.status().as_u16();
    if status == 201 {
        return Ok(Answer {
            code: "201 held".into(),
            held: Some(res.json().await?),
        });
    }
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    Ok(Answer {
        code: format!("{status} {}", body["code"].as_str().unwrap_or("?")),
        held: None,
    })
}

async fn get_sale(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<Sale> {
    let res = http.get(format!("{base}/v1/sales/{id}")).send().await?;
    anyhow::ensure!(
        res.status().is_success(),
        "reading the sale: {}",
        res.status()
    );
    Ok(res.json().await?)
}

fn past(rfc3339: &str) -> bool {
    past_at(rfc3339, time::OffsetDateTime::now_utc())
}

fn past_at(rfc3339: &str, at: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .is_ok_and(|t| t <= at)
}

/// Orders (rows, units) of the sale in Postgres, once the worker has flushed
/// the expected number (or after 10 s); `None` when Postgres is unreachable.
async fn orders_in_postgres(
    settings: &Settings,
    sale_id: &str,
    expected: i64,
) -> Option<(i64, i64)> {
    use secrecy::ExposeSecret;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(settings.database.url.expose_secret())
        .await
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rows, units): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
        )
        .bind(sale_id)
        .fetch_one(&db)
        .await
        .ok()?;
        if rows >= expected || Instant::now() > deadline {
            return Some((rows, units));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A just-started gateway (or its Redis) may need a moment.
async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            _ if Instant::now() > deadline => {
                anyhow::bail!("{base}/readyz did not answer 200 within 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
