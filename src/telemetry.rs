//! Logging: `tracing` to stderr, human-readable (`LOG_FORMAT=pretty`, the default on a
//! terminal) or one JSON object per line (`LOG_FORMAT=json`, the default otherwise). The level
//! comes from `RUST_LOG` (default `info`). stdout is left to commands' output.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("pretty") => false,
        _ => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr))
            .try_init()
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    };
}
