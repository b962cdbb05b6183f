//! Structured logging setup (tracing), text or JSON on stderr.
//!
//! Log messages are capitalised sentences ending with a period; error values
//! inside them are lowercase without a period.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Telemetry};

/// Installs the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init(cfg: &Telemetry) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn", cfg.log_level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second init (tests) is not an error worth reporting.
    let _ = match cfg.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
