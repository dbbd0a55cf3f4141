//! Which log events are kept: `tracing_subscriber`'s [`Targets`] for plain
//! `target=level` directives (the usual case), [`EnvFilter`] only when the
//! directives name spans or fields.
//!
//! To honour span directives, `EnvFilter` looks every span up in a map
//! behind a lock on each enter and exit. A request's span is entered on
//! every poll of its future, so on small hits over TLS, with both cores
//! busy, that lookup was about a tenth of lasti's CPU (perf,
//! docs/performance.md; within the noise on a quiet machine). `Targets`
//! decides once per callsite and keeps no per-span state, for the same
//! result.

use std::str::FromStr;

use tracing_subscriber::filter::{EnvFilter, Targets};

/// A parsed `log.filter` or `RUST_LOG`.
#[derive(Debug)]
pub enum LogFilter {
    /// `info`, `lasti=debug,warn`, `off`: targets and levels only.
    Targets(Box<Targets>),
    /// Directives with span or field filters (`lasti[request]=debug`).
    Env(Box<EnvFilter>),
}

impl LogFilter {
    /// Parses `tracing` directives, choosing the cheaper filter when it
    /// means the same.
    pub fn parse(directives: &str) -> Result<LogFilter, String> {
        // EnvFilter's grammar is the documented one: it judges every string.
        let env = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        if directives.contains(['[', '{']) {
            return Ok(LogFilter::Env(Box::new(env)));
        }
        // Targets reads an empty string as "everything off"; EnvFilter as
        // its default (errors only). Keep EnvFilter's meaning.
        let directives = if directives.trim().is_empty() {
            "error"
        } else {
            directives
        };
        Targets::from_str(directives)
            .map(|targets| LogFilter::Targets(Box::new(targets)))
            .map_err(|e| e.to_string())
    }

    /// The filter to install: `RUST_LOG` when it is set and valid, else the
    /// configured directives, else `info`.
    pub fn chosen(configured: &str) -> LogFilter {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|env| LogFilter::parse(&env).ok())
            .or_else(|| LogFilter::parse(configured).ok())
            .unwrap_or_else(|| {
                LogFilter::Targets(Box::new(Targets::new().with_default(tracing::Level::INFO)))
            })
    }

    /// The two halves as layers, one of them empty.
    pub fn into_layers(self) -> (Option<Targets>, Option<EnvFilter>) {
        match self {
            LogFilter::Targets(targets) => (Some(*targets), None),
            LogFilter::Env(env) => (None, Some(*env)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn targets(directives: &str) -> Targets {
        match LogFilter::parse(directives).unwrap() {
            LogFilter::Targets(t) => *t,
            LogFilter::Env(_) => panic!("{directives:?} should not need EnvFilter"),
        }
    }

    #[test]
    fn plain_directives_use_targets_with_envfilters_meaning() {
        let t = targets("info");
        assert!(t.would_enable("lasti::access", &Level::INFO));
        assert!(!t.would_enable("lasti::access", &Level::DEBUG));
        let t = targets("lasti=debug,hyper=warn,info");
        assert!(t.would_enable("lasti::cache", &Level::DEBUG));
        assert!(!t.would_enable("hyper::proto", &Level::INFO));
        assert!(t.would_enable("h2", &Level::INFO));
        let t = targets("lasti=debug");
        assert!(!t.would_enable("hyper", &Level::ERROR));
        let t = targets("off");
        assert!(!t.would_enable("lasti", &Level::ERROR));
        let t = targets("");
        assert!(t.would_enable("lasti", &Level::ERROR));
        assert!(!t.would_enable("lasti", &Level::WARN));
    }

    #[test]
    fn span_and_field_directives_use_envfilter() {
        for directives in ["lasti[request]=debug", "lasti[request{path}]=trace,info"] {
            assert!(matches!(
                LogFilter::parse(directives),
                Ok(LogFilter::Env(_))
            ));
        }
    }

    #[test]
    fn bad_directives_are_errors() {
        for directives in ["=", "lasti=loud", "lasti[=debug"] {
            assert!(LogFilter::parse(directives).is_err(), "{directives:?}");
        }
    }
}
