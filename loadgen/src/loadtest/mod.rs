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
//! A play runs in phases, a module each, over one `Play` (the run's
//! state): `setup` (the gateways ready, the sale created), `storm` (the
//! crowd's reserves, in `crowd`, with the stock read beside them, in
//! `readings`), `decide` (the buyers pay for their holds, give them back or
//! walk away), `check` (the invariants) and `report`. The gateway and a
//! baseline differ in what a 201 is (a hold to decide on, or an order at
//! once): each is a `target::Target`, and the phases ask it wherever the two
//! part, rather than testing a flag.
//!
//! The crowd reads the gateway's answers as the contract writes them (its
//! own [`Stock`] and [`Hold`], not the gateway's types): a checker that
//! shared the server's structs would follow them if they drifted.

mod check;
mod crowd;
mod decide;
mod options;
mod readings;
mod report;
mod setup;
mod storm;
mod target;

use serde::{Deserialize, Serialize};

use flashsale::auth::Auth;
use flashsale::config::Settings;

pub use options::{Options, TargetKind};
pub use report::{Check, Latency, Orders, Report};

use target::{BaselineStore, Gateway, Target};

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

impl Hold {
    /// Whether the hold's deadline is past at `at` (an unreadable one never is).
    fn expired_by(&self, at: time::OffsetDateTime) -> bool {
        time::OffsetDateTime::parse(
            &self.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .is_ok_and(|t| t <= at)
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

/// Plays the sale: creates it, sends the storm of reserves, lets the buyers
/// confirm, release or walk away, then checks the invariants. An `Err` is a
/// failure to play (the target unreachable, the sale refused); a broken
/// invariant is in the report.
pub async fn play(settings: &Settings, o: &Options) -> anyhow::Result<Report> {
    match o.target_kind {
        TargetKind::Flashsale => play_against(&Gateway, settings, o).await,
        TargetKind::Baseline => play_against(&BaselineStore, settings, o).await,
    }
}

async fn play_against(
    target: &impl Target,
    settings: &Settings,
    o: &Options,
) -> anyhow::Result<Report> {
    let play = Play::set_up(settings, o).await?;
    let mut storm = play.storm().await?;
    let decided = target.decide(&play, &mut storm).await?;
    play.tell(target, &storm, &decided);
    let checked = play.check(target, &mut storm, &decided).await?;
    Ok(play.report(storm, decided, checked))
}

/// What every phase of one play shares: set up once, then read.
struct Play<'a> {
    settings: &'a Settings,
    o: &'a Options,
    out: Out,
    /// Signs the buyers' tokens.
    auth: Auth,
    /// Everything but the storm's reserves goes through it.
    http: reqwest::Client,
    /// The gateways' base URLs, no trailing slash; never empty.
    bases: Vec<String>,
    sale_id: String,
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
