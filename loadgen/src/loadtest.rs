//! `flashsale-loadtest`: plays a flash sale against a running gateway, as a
//! crowd of buyers would, then checks the contract's invariants against what
//! the gateway and Postgres report. The README's demo runs it; it exits 1
//! when an invariant is broken.
//!
//! The same crowd plays against the bench's baselines (`--target-kind
//! baseline`, see [`crate::baseline`]), which speak the gateway's paths for
//! what the crowd uses; `bench/compare.sh` reads the `--json` report.
//! [`play`] does the work and returns a [`Report`] whose `broken` lists the
//! invariants that failed; [`run`] prints it and picks the exit code.
//!
//! The crowd reads the gateway's answers as the contract writes them (its
//! own [`Stock`] and [`Hold`], not the gateway's types): a checker that
//! shared the server's structs would follow them if they drifted.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use flashsale::auth::Auth;
use flashsale::config::Settings;
use flashsale::domain::rfc3339_ms;

use crate::conn;

/// Tries of one confirm or release answered 429 (each after its Retry-After).
const MAX_DECISION_TRIES: usize = 30;

/// Holds longer than this are not waited for: the expiry check is skipped.
const MAX_EXPIRY_WAIT_SECONDS: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// The flashsale gateway: holds, then confirm, release or expiry.
    #[default]
    Flashsale,
    /// A bench baseline (examples/baseline_server): a 201 is an order at
    /// once; confirm and release are skipped.
    Baseline,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The gateway's base URL. Several gateways of one deployment (the
    /// option repeated, or a comma-separated list): buyer i reserves through
    /// the i-th modulo their number and holds are decided round-robin over
    /// them; the sale is created and its stock read through the first.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub url: Vec<String>,
    /// Distinct buyers.
    #[arg(long, default_value_t = 500)]
    pub customers: usize,
    /// Reserve requests, spread over the buyers.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Send reserves for this many seconds instead of a number of them
    /// (`--requests` is then ignored).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Units on sale.
    #[arg(long, default_value_t = 100)]
    pub stock: i64,
    /// Per-customer limit.
    #[arg(long, default_value_t = 2)]
    pub limit: u32,
    /// Each reserve asks for 1 to min(this, --limit) units, at random.
    #[arg(long, default_value_t = 2)]
    pub max_quantity: u32,
    /// Hold lifetime; abandoned holds come back after it (waited for, and
    /// checked, when it is 30 s or less).
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u32,
    /// Share of holds that are confirmed (paid).
    #[arg(long, default_value_t = 0.6)]
    pub confirm_share: f64,
    /// Share of holds released by the buyer; the rest are abandoned.
    #[arg(long, default_value_t = 0.2)]
    pub release_share: f64,
    /// What serves --url.
    #[arg(long, value_enum, default_value_t = TargetKind::Flashsale)]
    pub target_kind: TargetKind,
    /// Read the sale's stock this often during the storm (0: only after it).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub sample_ms: u64,
    /// The Postgres holding the orders to check [default: `database.url`].
    #[arg(long)]
    pub database_url: Option<String>,
    /// Print the report as one JSON object on stdout; the text goes to stderr.
    #[arg(long)]
    pub json: bool,
}

impl Options {
    /// The options as `flashsale-loadtest ARGS...` would parse them.
    pub fn from_args<I, T>(args: I) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            options: Options,
        }
        let argv = std::iter::once(std::ffi::OsString::from("flashsale-loadtest"))
            .chain(args.into_iter().map(Into::into));
        Ok(Command::try_parse_from(argv)?.options)
    }
}

/// A sale's figures, as `GET /v1/sales/{id}` shows them under `stock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

/// What the crowd reads of a reservation (a 201's body); other fields are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Hold {
    pub id: String,
    pub customer_id: String,
    pub quantity: u32,
    /// RFC 3339.
    pub expires_at: String,
}

/// Latency of the reserves, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One invariant: `ok` is `None` when it could not be checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: Option<bool>,
}

/// Rows and units of the sale's orders in Postgres.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Orders {
    pub rows: i64,
    pub units: i64,
}

/// What a play saw and what it concluded.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target_kind: TargetKind,
    pub url: String,
    pub sale_id: String,
    pub concurrency: usize,
    pub customers: usize,
    /// Units on sale.
    pub stock: i64,
    /// Reserves answered (or failed in transport).
    pub requests: u64,
    /// Wall time of the storm of reserves.
    pub seconds: f64,
    /// Reserves per second over the storm.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// `"<status> <code>"` -> count, e.g. `"201 held"`, `"409 sold_out"`.
    pub answers: BTreeMap<String, u64>,
    /// The first few transport errors, verbatim.
    pub transport_errors: Vec<String>,
    pub sold_out_answers: u64,
    pub rate_limited: u64,
    /// 5xx answers and transport errors.
    pub failed: u64,
    /// Units of the 201 answers.
    pub units_granted: i64,
    /// Units granted beyond the stock (0 when none).
    pub oversold_units: i64,
    pub max_units_per_customer: u32,
    /// Readings of the sale's stock taken during the storm.
    pub samples: u64,
    pub sample_errors: u64,
    /// The lowest `available` in any reading (during the storm or after).
    pub min_available_seen: i64,
    /// Readings (during the storm or after) with a negative figure.
    pub negative_stock_seen: u64,
    /// Readings where available + held + sold != total.
    pub samples_not_adding_up: u64,
    /// The figures right after the storm.
    pub after_storm: Stock,
    /// available + held + sold - total right after the storm: units the
    /// counter lost (positive) or took twice (negative).
    pub stock_drift: i64,
    pub confirmed_units: i64,
    pub released_units: i64,
    pub abandoned_units: i64,
    /// Abandoned units that came back by expiry (when waited for).
    pub expired_units: Option<i64>,
    /// The figures at the end.
    pub final_stock: Stock,
    /// The sale's orders in Postgres; `None` when unreachable.
    pub orders: Option<Orders>,
    /// Order units beyond the stock (0 when none or not checked).
    pub oversold_in_orders: i64,
    pub checks: Vec<Check>,
    /// The invariants that failed.
    pub broken: Vec<String>,
}

impl Report {
    /// No invariant broken.
    pub fn ok(&self) -> bool {
        self.broken.is_empty()
    }
}

pub async fn run(settings: &Settings, opts: Options) -> i32 {
    match play(settings, &opts).await {
        Ok(report) => {
            if opts.json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("loadtest: {e}");
                        return 2;
                    }
                }
            }
            if report.ok() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            2
        }
    }
}

/// Where the human-readable lines go: stdout, or stderr under `--json`.
struct Out {
    json: bool,
}

impl Out {
    fn say(&self, line: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", line.as_ref());
        } else {
            println!("{}", line.as_ref());
        }
    }
}

/// Plays the sale: creates it, sends the storm of reserves, lets the buyers
/// confirm, release or walk away, then checks the invariants. An `Err` is a
/// failure to play (the target unreachable, the sale refused); a broken
/// invariant is in the report.
pub async fn play(settings: &Settings, o: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        o.customers > 0 && o.concurrency > 0 && o.max_quantity > 0 && o.limit > 0,
        "counts must be above 0"
    );
    match o.duration {
        Some(d) => anyhow::ensure!(
            d.is_finite() && d > 0.0 && d <= 86_400.0,
            "--duration must be above 0 seconds"
        ),
        None => anyhow::ensure!(o.requests > 0, "--requests must be above 0"),
    }
    anyhow::ensure!(
        (0.0..=1.0).contains(&o.confirm_share)
            && (0.0..=1.0).contains(&o.release_share)
            && o.confirm_share + o.release_share <= 1.0,
        "--confirm-share plus --release-share must be within 0..1"
    );
    let out = Out { json: o.json };
    let baseline = o.target_kind == TargetKind::Baseline;
    let Some(secret) = settings.auth.hs256_secret() else {
        anyhow::bail!("the load test signs HS256 tokens: set auth.jwt_secret");
    };
    let auth = Auth::new(&secret);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(o.concurrency)
        .build()?;
    let bases: Vec<String> = o
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    anyhow::ensure!(!bases.is_empty(), "--url names no gateway");
    for base in &bases {
        wait_ready(&http, base).await?;
    }
    let base = bases[0].clone();

    let admin = auth.issue("loadtest-admin", Some("admin"), 3600)?;
    let now = time::OffsetDateTime::now_utc();
    // Two runs in the same second (a bench) must not share a sale.
    let sale_id = format!(
        "demo-{}-{:04x}",
        now.unix_timestamp(),
        rand::thread_rng().gen::<u16>()
    );
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
    out.say(format!(
        "sale {sale_id}: {} units, limit {} per buyer, holds last {} s",
        o.stock, o.limit, o.hold_seconds
    ));

    let tokens: Vec<String> = (0..o.customers)
        .map(|i| auth.issue(&format!("buyer-{i}"), None, 3600))
        .collect::<Result<_, _>>()?;
    let what = match o.duration {
        Some(d) => format!("reserve requests for {d} s"),
        None => format!("{} reserve requests", o.requests),
    };
    out.say(format!(
        "{} buyers send {what}, {} at a time...",
        o.customers, o.concurrency
    ));

    // The storm, with a reader of the stock beside it.
    let storm_done = Arc::new(AtomicBool::new(false));
    let sampler = (o.sample_ms > 0).then(|| {
        tokio::spawn(sample_stock(
            http.clone(),
            base.clone(),
            sale_id.clone(),
            Duration::from_millis(o.sample_ms),
            storm_done.clone(),
        ))
    });
    let started = Instant::now();
    let crowd = Arc::new(Crowd {
        http: http.clone(),
        urls: bases
            .iter()
            .map(|b| format!("{b}/v1/sales/{sale_id}/reservations"))
            .collect(),
        plain: bases
            .iter()
            .map(|b| conn::Target::parse(&format!("{b}/v1/sales/{sale_id}/reservations")))
            .collect::<Option<Vec<_>>>(),
        bearers: tokens
            .iter()
            .map(|t| conn::bearer(t).context("a token that is not a header value"))
            .collect::<anyhow::Result<_>>()?,
        tokens,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        requests: o.requests,
        deadline: o.duration.map(|d| started + Duration::from_secs_f64(d)),
        max_quantity: o.max_quantity.min(o.limit),
    });
    let bar = progress_bar(o, crowd.clone(), started);
    let workers: Vec<_> = (0..o.concurrency)
        .map(|_| tokio::spawn(buyer(crowd.clone())))
        .collect();
    let mut tally = Tally::new()?;
    for w in workers {
        tally.merge(w.await??)?;
    }
    let storm = started.elapsed();
    storm_done.store(true, Ordering::Relaxed);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let storm_ended = time::OffsetDateTime::now_utc();
    let mut readings = match sampler {
        Some(s) => s.await?,
        None => Readings::default(),
    };

    let after_storm = get_stock(&http, &base, &sale_id).await?;
    readings.see(&after_storm);

    // The buyers decide: pay, give back, or walk away.
    let mut holds = tally.held.clone();
    holds.shuffle(&mut rand::thread_rng());
    let (n_confirm, n_release) = if baseline {
        (0, 0)
    } else {
        (
            (holds.len() as f64 * o.confirm_share).round() as usize,
            (holds.len() as f64 * o.release_share).round() as usize,
        )
    };
    let n_decide = (n_confirm + n_release).min(holds.len());
    let decisions: Vec<Decision> = stream::iter(holds[..n_decide].iter().enumerate())
        .map(|(i, h)| {
            let (http, base, auth) = (&http, &bases[i % bases.len()], &auth);
            async move { decide(http, base, auth, h, i, i < n_confirm).await }
        })
        .buffer_unordered(o.concurrency)
        .collect()
        .await;
    let (mut confirmed, mut confirmed_units, mut released_units, mut late) = (0i64, 0i64, 0i64, 0);
    let mut failures = Vec::new();
    for d in decisions {
        match d {
            Decision::Confirmed(q) => {
                confirmed += 1;
                confirmed_units += q;
            }
            Decision::Released(q) => released_units += q,
            Decision::Late => late += 1,
            Decision::Failed(f) => failures.push(f),
        }
    }
    // A baseline's 201 is an order already: nothing is left to abandon.
    let abandoned_units: i64 = if baseline {
        0
    } else {
        holds[n_decide..]
            .iter()
            .map(|h| i64::from(h.quantity))
            .sum()
    };

    // Invariants, as the target and Postgres report them.
    let mut checks = Vec::new();
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
    let now_stock = if baseline {
        after_storm
    } else {
        let s = get_stock(&http, &base, &sale_id).await?;
        readings.see(&s);
        s
    };

    let lat = tally.latency();
    let requests = tally.answered;
    let throughput = requests as f64 / storm.as_secs_f64().max(1e-9);
    out.say(format!(
        "\nstorm: {requests} requests in {:.2} s ({throughput:.0} req/s); latency p50 {:.1} ms, p99 {:.1} ms (p90 {:.1}, p99.9 {:.1}, max {:.1})",
        storm.as_secs_f64(),
        lat.p50,
        lat.p99,
        lat.p90,
        lat.p999,
        lat.max
    ));
    for (code, n) in &tally.codes {
        out.say(format!("  {n:>6}  {code}"));
    }
    for e in &tally.transport_errors {
        out.say(format!("  transport error: {e}"));
    }
    let late_note = if late > 0 {
        format!(", {late} too late (hold expired)")
    } else {
        String::new()
    };
    let oversold = (granted - o.stock).max(0);
    if baseline {
        out.say(format!(
            "units ordered: {granted} of {} (oversold {oversold}); confirm and release skipped (baseline)",
            o.stock
        ));
    } else {
        out.say(format!(
            "units reserved: {granted} of {} (oversold {oversold}); then {confirmed_units} confirmed, {released_units} released, {abandoned_units} abandoned{late_note}",
            o.stock
        ));
    }
    out.say(format!(
        "stock readings: {} during the storm; lowest available {}, {} negative, {} not adding up",
        readings.samples, readings.min_available, readings.negative, readings.not_adding_up
    ));
    let drift = after_storm.available + after_storm.held + after_storm.sold - after_storm.total;
    out.say(format!(
        "{} now: available {} held {} sold {} total {}",
        if baseline { "baseline" } else { "gateway" },
        now_stock.available,
        now_stock.held,
        now_stock.sold,
        now_stock.total,
    ));
    for f in &failures {
        out.say(format!("  unexpected answer: {f}"));
    }
    let check = |checks: &mut Vec<Check>, what: String, ok: Option<bool>| {
        out.say(format!(
            "  [{}] {what}",
            match ok {
                Some(true) => "ok",
                Some(false) => "BROKEN",
                None => "--",
            }
        ));
        checks.push(Check { what, ok });
    };
    if none_expired {
        check(
            &mut checks,
            format!(
                "no unit reserved twice: units reserved ({granted}) <= total ({})",
                o.stock
            ),
            Some(granted <= o.stock),
        );
        check(
            &mut checks,
            format!("no buyer past the per-customer limit (most: {max_per_customer})"),
            Some(max_per_customer <= o.limit),
        );
    } else {
        check(
            &mut checks,
            "holds expired during the storm: raise --hold-seconds to check the units granted against the stock".into(),
            None,
        );
    }
    check(
        &mut checks,
        format!(
            "available + held + sold == total, none negative (in all {} readings)",
            readings.samples + readings.extra
        ),
        Some(readings.negative == 0 && readings.not_adding_up == 0),
    );
    if !baseline {
        check(
            &mut checks,
            format!(
                "sold ({}) == units confirmed ({confirmed_units})",
                now_stock.sold
            ),
            Some(now_stock.sold == confirmed_units),
        );
        check(
            &mut checks,
            "every confirm and release answered as the contract says".into(),
            Some(failures.is_empty()),
        );
    }
    check(
        &mut checks,
        "no 5xx answers, no transport errors".into(),
        Some(tally.failed == 0),
    );
    let db_url = o.database_url.clone().unwrap_or_else(|| {
        use secrecy::ExposeSecret;
        settings.database.url.expose_secret().to_string()
    });
    let (expected_rows, orders) = if baseline {
        let rows = tally.held.len() as i64;
        (rows, orders_in_postgres(&db_url, &sale_id, rows).await)
    } else {
        (
            confirmed,
            orders_in_postgres(&db_url, &sale_id, confirmed).await,
        )
    };
    let mut oversold_in_orders = 0;
    match orders {
        Some(got) if baseline => {
            oversold_in_orders = (got.units - o.stock).max(0);
            check(
                &mut checks,
                format!(
                    "every unit ordered is one order in Postgres, none beyond the stock ({} rows, {} units of {})",
                    got.rows, got.units, o.stock
                ),
                Some(got.rows == expected_rows && got.units == granted && got.units <= o.stock),
            );
        }
        Some(got) => check(
            &mut checks,
            format!(
                "every confirmed order is one row in Postgres ({} rows, {} units)",
                got.rows, got.units
            ),
            Some(got.rows == expected_rows && got.units == confirmed_units),
        ),
        None => check(
            &mut checks,
            "Postgres not reachable from here: orders not checked".into(),
            None,
        ),
    }

    let mut final_stock = now_stock;
    let mut expired_units = None;
    if abandoned_units > 0 && o.hold_seconds <= MAX_EXPIRY_WAIT_SECONDS {
        let wait = Duration::from_secs(u64::from(o.hold_seconds)) + Duration::from_millis(1500);
        out.say(format!(
            "waiting {:.1} s for abandoned holds to expire...",
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
        let s = get_stock(&http, &base, &sale_id).await?;
        readings.see(&s);
        out.say(format!(
            "gateway now: available {} held {} sold {} total {}",
            s.available, s.held, s.sold, s.total
        ));
        expired_units = Some(now_stock.held - s.held);
        check(
            &mut checks,
            "abandoned holds returned to stock".into(),
            Some(s.held == 0 && s.available == s.total - s.sold && s.available >= 0),
        );
        final_stock = s;
    } else if abandoned_units > 0 {
        check(
            &mut checks,
            format!(
                "holds last {} s: not waiting for the abandoned ones to expire (30 s or less is checked)",
                o.hold_seconds
            ),
            None,
        );
    }

    let count = |code: &str| {
        tally
            .codes
            .iter()
            .filter(|(k, _)| k.ends_with(code))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let report = Report {
        target_kind: o.target_kind,
        url: bases.join(","),
        sale_id,
        concurrency: o.concurrency,
        customers: o.customers,
        stock: o.stock,
        requests,
        seconds: storm.as_secs_f64(),
        throughput,
        latency_ms: lat,
        sold_out_answers: count(" sold_out"),
        rate_limited: tally
            .codes
            .iter()
            .filter(|(k, _)| k.starts_with("429"))
            .map(|(_, n)| n)
            .sum(),
        failed: tally.failed,
        answers: tally.codes.clone(),
        transport_errors: tally.transport_errors.clone(),
        units_granted: granted,
        oversold_units: oversold,
        max_units_per_customer: max_per_customer,
        samples: readings.samples,
        sample_errors: readings.errors,
        min_available_seen: readings.min_available,
        negative_stock_seen: readings.negative,
        samples_not_adding_up: readings.not_adding_up,
        after_storm,
        stock_drift: drift,
        confirmed_units,
        released_units,
        abandoned_units,
        expired_units,
        final_stock,
        orders,
        oversold_in_orders,
        broken: checks
            .iter()
            .filter(|c| c.ok == Some(false))
            .map(|c| c.what.clone())
            .collect(),
        checks,
    };
    out.say(format!(
        "outcome: {} units sold, {} held, {} expired; {} sold-out answers, {} 429s",
        report.final_stock.sold,
        report.final_stock.held,
        report
            .expired_units
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
        report.sold_out_answers,
        report.rate_limited
    ));
    out.say(if report.ok() {
        "all invariants hold".to_string()
    } else {
        format!("INVARIANT BROKEN: {}", report.broken.join("; "))
    });
    Ok(report)
}

/// What every buyer task shares.
struct Crowd {
    http: reqwest::Client,
    /// The reserve URL on each gateway: buyer i reserves through the
    /// i-th modulo their number.
    urls: Vec<String>,
    /// The same when every one is plain `http://`: the storm then goes
    /// through one bare connection per buyer task and gateway (see [`conn`]).
    plain: Option<Vec<conn::Target>>,
    tokens: Vec<String>,
    /// `Bearer <token>` of each token, for [`conn`].
    bearers: Vec<HeaderValue>,
    /// The next request's number: request i comes from buyer i % customers.
    next: AtomicU64,
    /// Requests answered so far (for the progress bar).
    done: AtomicU64,
    requests: u64,
    /// With `--duration`: no request starts after it.
    deadline: Option<Instant>,
    max_quantity: u32,
}

/// What one buyer task (or, merged, the crowd) saw.
struct Tally {
    codes: BTreeMap<String, u64>,
    held: Vec<Hold>,
    /// Microseconds per reserve.
    latency: Histogram<u64>,
    answered: u64,
    failed: u64,
    transport_errors: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            codes: BTreeMap::new(),
            held: Vec::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            answered: 0,
            failed: 0,
            transport_errors: Vec::new(),
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.held.extend(other.held);
        self.latency.add(&other.latency)?;
        self.answered += other.answered;
        self.failed += other.failed;
        for e in other.transport_errors {
            if self.transport_errors.len() < 5 {
                self.transport_errors.push(e);
            }
        }
        Ok(())
    }

    fn latency(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.latency.is_empty() {
            return Latency::default();
        }
        Latency {
            mean: self.latency.mean() / 1000.0,
            p50: ms(self.latency.value_at_quantile(0.50)),
            p90: ms(self.latency.value_at_quantile(0.90)),
            p99: ms(self.latency.value_at_quantile(0.99)),
            p999: ms(self.latency.value_at_quantile(0.999)),
            max: ms(self.latency.max()),
        }
    }
}

/// One buyer task: takes request numbers until the storm is over.
async fn buyer(crowd: Arc<Crowd>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let customers = crowd.tokens.len() as u64;
    // One kept-alive connection per buyer task (and gateway), as a browser
    // tab would have.
    let mut conns: Vec<conn::Conn> = match &crowd.plain {
        Some(targets) => targets.iter().map(|_| conn::Conn::default()).collect(),
        None => Vec::new(),
    };
    loop {
        let i = crowd.next.fetch_add(1, Ordering::Relaxed);
        let over = match crowd.deadline {
            Some(deadline) => Instant::now() >= deadline,
            None => i >= crowd.requests,
        };
        if over {
            return Ok(tally);
        }
        let buyer = (i % customers) as usize;
        let quantity = if crowd.max_quantity <= 1 {
            1
        } else {
            rand::thread_rng().gen_range(1..=crowd.max_quantity)
        };
        let t = Instant::now();
        let gateway = buyer % crowd.urls.len();
        let answer = match (&crowd.plain, conns.get_mut(gateway)) {
            (Some(targets), Some(conn)) => {
                let target = &targets[gateway];
                let body = Bytes::from(format!("{{\"quantity\":{quantity}}}"));
                match conn.post(target, &crowd.bearers[buyer], body).await {
                    Ok((status, body)) => Ok(read_answer(status, &body)),
                    Err(e) => Err(e.to_string()),
                }
            }
            _ => reserve(
                &crowd.http,
                &crowd.urls[gateway],
                &crowd.tokens[buyer],
                quantity,
            )
            .await
            .map_err(|e| e.to_string()),
        };
        tally
            .latency
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
        tally.answered += 1;
        crowd.done.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(Answer { code, held }) => {
                if code.starts_with('5') {
                    tally.failed += 1;
                }
                *tally.codes.entry(code).or_default() += 1;
                tally.held.extend(held);
            }
            Err(e) => {
                tally.failed += 1;
                *tally.codes.entry("transport error".into()).or_default() += 1;
                if tally.transport_errors.len() < 5 {
                    tally.transport_errors.push(e);
                }
            }
        }
    }
}

/// A bar on the terminal while the storm runs; none when output is piped.
fn progress_bar(o: &Options, crowd: Arc<Crowd>, started: Instant) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return None;
    }
    let (len, template) = match o.duration {
        Some(d) => (
            (d * 1000.0) as u64,
            "{spinner} [{elapsed_precise}] [{wide_bar}] {msg}",
        ),
        None => (
            o.requests,
            "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} {msg}",
        ),
    };
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker = bar.clone();
    let by_time = o.duration.is_some();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        while !ticker.is_finished() {
            every.tick().await;
            let done = crowd.done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            ticker.set_position(if by_time {
                started.elapsed().as_millis() as u64
            } else {
                done
            });
            ticker.set_message(format!("{done} answered, {:.0} req/s", done as f64 / secs));
        }
    });
    Some(bar)
}

/// Readings of the sale's stock.
#[derive(Debug)]
struct Readings {
    /// Taken during the storm.
    samples: u64,
    /// Taken after it.
    extra: u64,
    errors: u64,
    min_available: i64,
    negative: u64,
    not_adding_up: u64,
}

impl Default for Readings {
    fn default() -> Readings {
        Readings {
            samples: 0,
            extra: 0,
            errors: 0,
            min_available: i64::MAX,
            negative: 0,
            not_adding_up: 0,
        }
    }
}

impl Readings {
    fn record(&mut self, s: &Stock) {
        self.min_available = self.min_available.min(s.available);
        if s.available < 0 || s.held < 0 || s.sold < 0 {
            self.negative += 1;
        }
        if s.available + s.held + s.sold != s.total {
            self.not_adding_up += 1;
        }
    }

    /// A reading after the storm.
    fn see(&mut self, s: &Stock) {
        self.extra += 1;
        self.record(s);
    }
}

/// Reads the stock every `every` until the storm is over.
async fn sample_stock(
    http: reqwest::Client,
    base: String,
    sale_id: String,
    every: Duration,
    done: Arc<AtomicBool>,
) -> Readings {
    let mut readings = Readings::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        match get_stock(&http, &base, &sale_id).await {
            Ok(s) => {
                readings.samples += 1;
                readings.record(&s);
            }
            Err(_) => readings.errors += 1,
        }
    }
    readings
}

/// One reserve's answer: `"<status> <code>"`, and the hold when it was granted.
struct Answer {
    code: String,
    held: Option<Hold>,
}

/// A reserve through reqwest (URLs the storm's own client does not speak).
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
    let body = res.bytes().await?;
    Ok(read_answer(status, &body))
}

fn read_answer(status: u16, body: &[u8]) -> Answer {
    if status == 201 {
        return match serde_json::from_slice::<Hold>(body) {
            Ok(r) => Answer {
                code: "201 held".into(),
                held: Some(r),
            },
            Err(_) => Answer {
                code: "201 unreadable reservation".into(),
                held: None,
            },
        };
    }
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Answer {
        code: format!("{status} {}", body["code"].as_str().unwrap_or("?")),
        held: None,
    }
}

/// What a buyer did with a hold.
enum Decision {
    Confirmed(i64),
    Released(i64),
    /// Too late to pay or give back: honest only past the hold's deadline.
    Late,
    Failed(String),
}

async fn decide(
    http: &reqwest::Client,
    base: &str,
    auth: &Auth,
    h: &Hold,
    i: usize,
    confirm: bool,
) -> Decision {
    let token = match auth.issue(&h.customer_id, None, 3600) {
        Ok(t) => t,
        Err(e) => return Decision::Failed(format!("token for {}: {e}", h.customer_id)),
    };
    let verb = if confirm { "confirm" } else { "release" };
    // A buyer told 429 comes back after `Retry-After`, as the contract asks;
    // the jitter keeps a crowd told the same second from coming back at once.
    for _ in 0..MAX_DECISION_TRIES {
        let req = if confirm {
            http.post(format!("{base}/v1/reservations/{}/confirm", h.id))
                .json(&json!({"payment_ref": format!("pay-{i}")}))
        } else {
            http.delete(format!("{base}/v1/reservations/{}", h.id))
        };
        let res = match req.bearer_auth(&token).send().await {
            Ok(res) => res,
            Err(e) => return Decision::Failed(format!("{verb} {}: {e}", h.id)),
        };
        return match res.status().as_u16() {
            200 if confirm => Decision::Confirmed(i64::from(h.quantity)),
            200 => Decision::Released(i64::from(h.quantity)),
            410 | 409 if past(&h.expires_at) => Decision::Late,
            429 => {
                let after = res
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|s| s.is_finite())
                    .unwrap_or(1.0)
                    .clamp(0.05, 5.0);
                let jitter = rand::thread_rng().gen_range(0.0..0.25);
                tokio::time::sleep(Duration::from_secs_f64(after + jitter)).await;
                continue;
            }
            other => Decision::Failed(format!("{verb} {}: {other}", h.id)),
        };
    }
    Decision::Failed(format!(
        "{verb} {}: still 429 after {MAX_DECISION_TRIES} tries",
        h.id
    ))
}

/// Only the figures: a baseline's sale need not carry every field.
#[derive(Deserialize)]
struct SaleFigures {
    stock: Stock,
}

async fn get_stock(http: &reqwest::Client, base: &str, id: &str) -> anyhow::Result<Stock> {
    let res = http.get(format!("{base}/v1/sales/{id}")).send().await?;
    anyhow::ensure!(
        res.status().is_success(),
        "reading the sale: {}",
        res.status()
    );
    Ok(res.json::<SaleFigures>().await?.stock)
}

fn past(rfc3339: &str) -> bool {
    past_at(rfc3339, time::OffsetDateTime::now_utc())
}

fn past_at(rfc3339: &str, at: time::OffsetDateTime) -> bool {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .is_ok_and(|t| t <= at)
}

/// Orders of the sale in Postgres, once `expected` rows are there (the
/// gateway's worker flushes them a moment after the confirm) or after 10 s;
/// `None` when Postgres is unreachable.
async fn orders_in_postgres(url: &str, sale_id: &str, expected: i64) -> Option<Orders> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let (rows, units): (i64, i64) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM orders WHERE sale_id = $1",
        )
        .bind(sale_id)
        .fetch_one(&db)
        .await
        .ok()?;
        if rows >= expected || Instant::now() > deadline {
            break Orders { rows, units };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    db.close().await;
    Some(got)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_demo() {
        let o = Options::from_args::<_, &str>([]).unwrap();
        assert_eq!((o.customers, o.requests, o.concurrency), (500, 2000, 200));
        assert_eq!(o.target_kind, TargetKind::Flashsale);
        let o = Options::from_args(["--target-kind", "baseline", "--duration", "2.5"]).unwrap();
        assert_eq!(o.target_kind, TargetKind::Baseline);
        assert_eq!(o.duration, Some(2.5));
        assert_eq!(o.url, ["http://127.0.0.1:8080"]);
    }

    #[test]
    fn several_gateways_by_commas_or_repeated() {
        let o =
            Options::from_args(["--url", "http://a:1,http://b:2", "--url", "http://c:3"]).unwrap();
        assert_eq!(o.url, ["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        let t = time::macros::datetime!(2026-12-12 00:00:05.123456 +07:00);
        assert_eq!(rfc3339_ms(t), "2026-12-11T17:00:05.123Z");
    }

    #[test]
    fn readings_flag_what_does_not_add_up() {
        let mut r = Readings::default();
        r.see(&Stock {
            total: 10,
            available: 3,
            held: 2,
            sold: 5,
        });
        assert_eq!((r.negative, r.not_adding_up, r.min_available), (0, 0, 3));
        // The naive store's lost update: more left than sold allows.
        r.see(&Stock {
            total: 10,
            available: 4,
            held: 0,
            sold: 12,
        });
        // And its stale decrement: it adds up, but below zero.
        r.see(&Stock {
            total: 10,
            available: -2,
            held: 0,
            sold: 12,
        });
        assert_eq!((r.negative, r.not_adding_up, r.min_available), (1, 1, -2));
    }
}
