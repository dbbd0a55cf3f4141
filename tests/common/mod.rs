//! Shared harness for lasti's integration tests.
//!
//! - [`registry`] runs a real CNCF distribution registry (`/usr/bin/docker-registry`)
//!   on a loopback port inside its own temporary directory.
//! - [`oci_layout`] writes deterministic OCI image layouts (single images and
//!   multi-platform indexes) to disk.
//! - [`lasti`] runs lasti in-process on a loopback port; [`http`] talks to it.
//! - [`fake_upstream`] is a programmable fake registry that injects faults;
//!   [`checks`] holds the assertions the fault tests share.
//! - [`garage`] runs Garage, a real S3-compatible object store, as one node
//!   with a bucket and a key; [`moto`] runs moto's S3 server, which refuses
//!   multipart parts below 5 MiB as AWS does; [`s3`] points lasti at either
//!   and signs requests to it.
//! - [`throttle`] puts nginx with `limit_rate` in front of a registry, a
//!   slow upstream whose fills overlap; [`relay`] stalls, slows or cuts
//!   what goes to a server; [`front`] spreads connections over replicas as
//!   a Kubernetes Service does.
//! - [`h2_client`] opens HTTP/2 streams that never open their window.
//! - [`skopeo`] drives `/usr/bin/skopeo` to push those layouts and pull them back;
//!   [`podman`], [`containerd`] and [`docker`] pull through lasti configured
//!   as a mirror.
//!
//! Everything here talks to 127.0.0.1 only. A missing tool is a test failure,
//! never a skip: the README's test command installs the tools.
#![allow(dead_code)]

pub mod browser;
pub mod checks;
pub mod containerd;
pub mod docker;
pub mod event_sink;
pub mod fake_upstream;
pub mod front;
pub mod garage;
pub mod h2_client;
pub mod http;
pub mod lasti;
pub mod moto;
pub mod oci_layout;
pub mod podman;
pub mod process;
pub mod registry;
pub mod relay;
pub mod s3;
pub mod skopeo;
pub mod throttle;
pub mod tls;
pub mod token_shim;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

/// How long a hand-written HTTP probe may take to connect, write and read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Returns a loopback port that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and dropping the listener, so
/// another process may take it before the caller binds it: callers that spawn
/// a server retry with a new port when the server fails to bind.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of probe listener")
        .port()
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}`, where the README's test command keeps
/// the tools it builds or installs outside the repository.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"))
}

/// Fails the test unless the external tool at `path` exists.
///
/// The message points at the README's test command, which installs the
/// Debian packages the interop tests need.
pub fn require_tool(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: these integration tests need the Debian packages \
         `docker-registry` and `skopeo` (and `apache2-utils` for htpasswd auth); \
         run the test command from the README, which installs them"
    );
}

/// Sends `GET <path>` over a plain TCP connection and returns the HTTP status.
///
/// The request is written by hand so tests need neither curl nor an HTTP
/// client crate. `basic` adds an `Authorization: Basic` header.
pub fn http_get_status(
    addr: SocketAddr,
    path: &str,
    basic: Option<(&str, &str)>,
) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let auth = basic
        .map(|(user, password)| {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lasti-tests\r\n{auth}Connection: close\r\n\r\n"
    )?;
    parse_status_line(&read_head(&mut stream)?)
}

/// Reads from `stream` until the end of the status line (or EOF).
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Extracts the status code from `HTTP/1.1 200 OK`.
fn parse_status_line(head: &str) -> io::Result<u16> {
    head.lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })
}

/// Runs a prepared command to the end, killed after `limit`; its stdout, or
/// an error that names it (`shown`) with its exit status and stderr.
pub async fn output_of(
    mut command: tokio::process::Command,
    shown: &str,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .map_err(|_| format!("{shown}: timed out after {limit:?}"))?
        .map_err(|e| format!("{shown}: cannot run: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "{shown}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Ends a server started under `timeout` (SIGTERM to the wrapper, by PID,
/// which passes it on) and reaps it; nothing if it has already exited.
pub fn end_wrapped(wrapper: &mut std::process::Child) {
    if matches!(wrapper.try_wait(), Ok(None)) {
        let _ = std::process::Command::new("/bin/kill")
            .args(["-TERM", &wrapper.id().to_string()])
            .status();
        let _ = wrapper.wait();
    }
}
