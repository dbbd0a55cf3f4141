//! Logging set-up: human-readable lines by default, JSON for log collectors.
//!
//! Lines are formatted on the thread that logs them, then handed to a
//! writer thread of their own (`tracing-appender`), which writes them to
//! standard error in batches: a request never waits for a `write(2)` of its
//! access log line, nor for a slow log collector reading the pipe. Past
//! [`BUFFERED_LINES`] lines waiting, lines are dropped rather than requests
//! slowed.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines that may wait for the writer thread.
pub const BUFFERED_LINES: usize = 128 * 1024;

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides
/// the configured filter. Colours only on a terminal: a log sent to a file
/// or a collector holds no escape codes. Keep the returned guard until the
/// process ends: dropping it flushes the lines still waiting.
pub fn init(config: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("lasti-log")
        .finish(std::io::stderr());
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
    guard
}
