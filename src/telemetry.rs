//! Logging: text or JSON lines, level from `log.level` unless `RUST_LOG` is set.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = settings.log.format == LogFormat::Json
        || std::env::var("RUST_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests start many gateways in one process) is harmless.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
