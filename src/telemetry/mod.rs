//! Logging set-up: human-readable lines by default, JSON for log collectors.
//!
//! Lines are formatted on the thread that logs them and written to
//! standard error in batches by a thread of their own ([`batch_writer`]): a
//! request never waits for a `write(2)` of its access log line, nor for a
//! slow log collector reading the pipe.

pub mod access_format;
pub mod batch_writer;
pub mod filter;

use std::io::IsTerminal;

use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use tracing_subscriber::fmt::format::Format;

use crate::config::{LogConfig, LogFormat};
use access_format::AccessOr;
use filter::LogFilter;

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides
/// the configured filter. Colours only on a terminal: a log sent to a file
/// or a collector holds no escape codes. Keep the returned guard until the
/// process ends: dropping it flushes the lines still waiting.
pub fn init(config: &LogConfig) -> Option<batch_writer::FlushGuard> {
    let (targets, env_filter) = LogFilter::chosen(&config.filter).into_layers();
    let (writer, guard) = match batch_writer::start(std::io::stderr()) {
        Ok((writer, guard)) => (writer, guard),
        Err(e) => {
            eprintln!("lasti: cannot start the log writer thread: {e}");
            return None;
        }
    };
    let ansi = std::io::stderr().is_terminal();
    let lines = match config.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .event_format(AccessOr::human(Format::default()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .event_format(AccessOr::json(
                Format::default()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            ))
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter)
        .with(lines)
        .try_init();
    Some(guard)
}
