//! What `flashsale-loadtest` is told: its flags, as [`Options`].

use serde::Serialize;

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

    /// What clap cannot say: the counts, the duration and the shares make a
    /// sale that can be played.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.customers > 0 && self.concurrency > 0 && self.max_quantity > 0 && self.limit > 0,
            "counts must be above 0"
        );
        match self.duration {
            Some(d) => anyhow::ensure!(
                d.is_finite() && d > 0.0 && d <= 86_400.0,
                "--duration must be above 0 seconds"
            ),
            None => anyhow::ensure!(self.requests > 0, "--requests must be above 0"),
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.confirm_share)
                && (0.0..=1.0).contains(&self.release_share)
                && self.confirm_share + self.release_share <= 1.0,
            "--confirm-share plus --release-share must be within 0..1"
        );
        Ok(())
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
}
