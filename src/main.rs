//! The `lasti` command: parse flags, load the configuration, start logging,
//! run the server until SIGTERM or Ctrl-C.
//!
//! A failure is a user's to act on (a port taken, a directory in use, a bad
//! key), so it is printed as one line, its causes each once, and never as
//! a backtrace: `RUST_BACKTRACE=1` is for panics.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lasti::config::{parse_upstream_flag, Config, LogFormat, Overrides};
use lasti::pull_through::PurgeScope;
use url::Url;

/// A pull-through caching proxy for container registries.
///
/// With no arguments, serves Docker Hub on 0.0.0.0:5000 with its cache in ./data.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file (see config/lasti.toml).
    #[arg(long, global = true, env = "LASTI_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve the registry API on.
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Directory for cached blobs and metadata.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Upstream registry as NAME=URL, repeatable; the first is the default.
    #[arg(long = "upstream", global = true, value_parser = parse_upstream_flag)]
    upstreams: Vec<(String, Url)>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Address of the admin listener (metrics, health, the cache listing,
    /// back-fill status, warm requests).
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
    /// File holding the admin token: `serve` requires it of admin calls
    /// that change state; `purge` and `offline on|off` send it.
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
    /// Registry to back-fill pulled images into (the Rahti project's registry).
    #[arg(long = "target", global = true)]
    target_url: Option<Url>,
    /// Project (namespace) whose image streams receive the images.
    #[arg(long, global = true)]
    target_project: Option<String>,
    /// File holding the target's token (re-read when it changes).
    #[arg(long, global = true)]
    target_token_file: Option<PathBuf>,
    /// User name for the target (OpenShift ignores it; default `unused`).
    #[arg(long, global = true)]
    target_username: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the registry API (the default).
    Serve,
    /// Load and validate the configuration, print it (secrets redacted), and exit.
    CheckConfig,
    /// Pre-pull images through a running lasti (cache and back-fill them).
    Warm {
        /// Images: name[:tag] or name@digest, with a registry prefix for
        /// upstreams other than the default (ghcr.io/org/app:v1).
        #[arg(required = true)]
        images: Vec<String>,
        /// Only these platforms of a multi-platform image (os/arch[/variant]); default all.
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// The lasti to use, as a URL or host:port; default: the
        /// configured listen address.
        #[arg(long)]
        server: Option<String>,
    },
    /// Drop a tag, a manifest or an image from a running lasti's cache
    /// (and its bucket) now; needs the admin token.
    Purge {
        /// The image: name[:tag] or name@digest, with a registry prefix for
        /// upstreams other than the default.
        image: String,
        /// What to drop: the tag's record only (the next pull asks the
        /// upstream), the manifests, or the manifests and the blobs no
        /// other cached image uses.
        #[arg(long, value_enum, default_value_t = Scope::Image)]
        scope: Scope,
        /// Print the JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
        /// The admin endpoint, as a URL or host:port; default: the
        /// configured admin address.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Show a running lasti's offline switches and each upstream's
    /// breaker, or set a switch (`on`: offline, `off`: online again; needs
    /// the admin token). Set at run time, a switch reaches the other
    /// replicas and lasts until set again or the process restarts.
    Offline {
        /// `status` (the default), `on` or `off`.
        #[arg(value_enum, default_value_t = Switch::Status)]
        switch: Switch,
        /// One upstream, by its configured name (`docker.io`), instead of
        /// the whole process.
        upstream: Option<String>,
        /// Print the JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
        /// The admin endpoint, as a URL or host:port; default: the
        /// configured admin address.
        #[arg(long)]
        admin: Option<String>,
    },
    /// List what a running lasti's cache holds.
    Ls {
        /// Print the JSON of /admin/cache instead of a table.
        #[arg(long)]
        json: bool,
        /// The admin endpoint, as a URL or host:port; default: the
        /// configured admin address.
        #[arg(long)]
        admin: Option<String>,
    },
}

/// What `lasti purge` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scope {
    /// The tag's record.
    Tag,
    /// The manifests.
    Manifest,
    /// The manifests and the blobs no other cached image uses.
    Image,
}

/// What `lasti offline` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    /// Show the switches.
    Status,
    /// Offline: no request goes to the upstream(s).
    On,
    /// Online again.
    Off,
}

/// The admin endpoint `--admin` names, or the configured one.
fn admin_url(given: Option<String>, config: &Config) -> anyhow::Result<String> {
    match (given, config.admin_listen) {
        (Some(given), _) => Ok(lasti::tools::endpoint_url(&given)),
        (None, Some(addr)) => Ok(lasti::tools::local_url(addr)),
        (None, None) => anyhow::bail!("no admin listener configured; pass --admin HOST:PORT"),
    }
}

fn main() -> ExitCode {
    lasti::allocator::tune();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose
/// text its parent already holds (a library that prints its source in its
/// own message) is left out.
fn chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir,
        upstreams: cli.upstreams,
        log_format: cli.log_format,
        admin_listen: cli.admin_listen,
        admin_token_file: cli.admin_token_file,
        target_url: cli.target_url,
        target_project: cli.target_project,
        target_token_file: cli.target_token_file,
        target_username: cli.target_username,
    };
    let config = Config::load(cli.config.as_deref(), overrides)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => check_config(&config),
        Command::Serve => serve(config),
        Command::Warm {
            images,
            platforms,
            server,
        } => {
            let server = match server {
                Some(given) => lasti::tools::endpoint_url(&given),
                None => lasti::tools::local_url(config.listen),
            };
            client_runtime()?
                .block_on(lasti::tools::warm::run(&server, &images, &platforms))
                .map_err(|e| anyhow::anyhow!(e))
        }
        Command::Ls { json, admin } => {
            let admin = admin_url(admin, &config)?;
            client_runtime()?
                .block_on(lasti::tools::ls::run(&admin, json))
                .map_err(|e| anyhow::anyhow!(e))
        }
        Command::Offline {
            switch,
            upstream,
            json,
            admin,
        } => {
            let admin = admin_url(admin, &config)?;
            let token = match switch {
                Switch::Status => None,
                Switch::On | Switch::Off => Some(
                    lasti::tools::admin_token(config.admin_token_file.as_deref())
                        .map_err(|e| anyhow::anyhow!(e))?,
                ),
            };
            let set = token.as_deref().map(|token| (switch == Switch::On, token));
            client_runtime()?
                .block_on(lasti::tools::offline::run(
                    &admin,
                    set,
                    upstream.as_deref(),
                    json,
                ))
                .map_err(|e| anyhow::anyhow!(e))
        }
        Command::Purge {
            image,
            scope,
            json,
            admin,
        } => {
            let admin = admin_url(admin, &config)?;
            let token = lasti::tools::admin_token(config.admin_token_file.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            let scope = match scope {
                Scope::Tag => PurgeScope::Tag,
                Scope::Manifest => PurgeScope::Manifest,
                Scope::Image => PurgeScope::Image,
            };
            client_runtime()?
                .block_on(lasti::tools::purge::run(
                    &admin, &token, &image, scope, json,
                ))
                .map_err(|e| anyhow::anyhow!(e))
        }
    }
}

/// Prints the effective configuration as a config file. A reader that
/// stops early (`| head`) is not an error.
fn check_config(config: &Config) -> anyhow::Result<()> {
    // Everything the configuration names is loaded as `serve` loads it.
    client_runtime()?.block_on(lasti::server::preflight(config))?;
    let text = config
        .to_toml()
        .context("cannot write the configuration as TOML")?;
    let mut out = std::io::stdout().lock();
    let written = writeln!(
        out,
        "# The configuration is valid. Effective values follow; secrets show as {}.\n\n{text}",
        lasti::config::REDACTED
    )
    .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(config: Config) -> anyhow::Result<()> {
    let _log = lasti::telemetry::init(&config.log);
    match lasti::server::open_files::raise_limit() {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listeners = lasti::server::Listeners::bind(&config).await?;
        lasti::server::run(listeners, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("can install a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
