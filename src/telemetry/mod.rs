//! Logging set-up: human-readable lines by default, JSON for log collectors.
//!
//! Lines are formatted on the thread that logs them and written to
//! standard error in batches by a thread of their own ([`batch_writer`]): a
//! request never waits for a `write(2)` of its access log line, nor for a
//! slow log collector reading the pipe.

pub mod batch_writer;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides
/// the configured filter. Colours only on a terminal: a log sent to a file
/// or a collector holds no escape codes. Keep the returned guard until the
/// process ends: dropping it flushes the lines still waiting.
pub fn init(config: &LogConfig) -> Option<batch_writer::FlushGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = match batch_writer::start(std::io::stderr()) {
        Ok((writer, guard)) => (writer, guard),
        Err(e) => {
            eprintln!("lasti: cannot start the log writer thread: {e}");
            return None;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    Some(guard)
}
