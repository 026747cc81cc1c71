//! `flashsale-loadtest`: plays a flash sale against a running gateway and
//! checks the invariants. Exit codes: 0 all hold, 1 one broke, 2 it could
//! not play (bad configuration or usage, the gateway unreachable).

use std::path::PathBuf;

use clap::Parser;

// The crowd shares the machine's cores with the gateway it measures: the
// same allocator as the gateway keeps the crowd's share as small as it was
// when it ran inside `flashsale` (BENCHMARKS.md, section C).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "flashsale-loadtest",
    version,
    about = "Play a flash sale against a running gateway and check the invariants"
)]
struct Cli {
    /// A TOML file layered over config/default.toml, as for `flashsale`
    /// (the tokens are signed with its `auth.jwt_secret`; the orders are
    /// read from its `database.url` unless --database-url is given).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: flashsale_loadgen::Options,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let settings = match flashsale::config::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    std::process::exit(flashsale_loadgen::run(&settings, cli.options).await);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
