//! Serving one accepted connection: the TLS handshake, hyper's HTTP/1.1 or
//! HTTP/2 (by ALPN or the HTTP/2 preface), and a watchdog that ends the
//! connection when it idles or a client stops taking a response, and closes
//! it politely when the server drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::{Activity, Limits, Verdict};
use super::h2_flood::FloodGuard;
use super::sendfile::SendfileStream;
use super::slots::Slot;
use super::tls::ReloadingAcceptor;
use super::App;
use crate::cache::mapped::Windows;
use crate::cache::reader::Delivery;

/// How long an idle connection that was asked to close (HTTP/2: GOAWAY,
/// then a PING the peer should answer) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What every connection of the API listener shares.
pub struct Shared {
    /// Answers requests.
    pub app: Arc<App>,
    /// hyper's HTTP/1.1 and HTTP/2 settings.
    pub builder: auto::Builder<TokioExecutor>,
    /// TLS, when configured.
    pub tls: Option<Arc<ReloadingAcceptor>>,
    /// The connection timeouts.
    pub limits: Limits,
    /// Time a client gets to finish the TLS handshake
    /// (`access.tls_handshake_timeout`), before the slots' squeeze.
    pub handshake: Duration,
    /// Counts the bytes sent with `sendfile`.
    pub sent_from_files: IntCounter,
    /// The cache's mapped windows, which plain-TCP connections send with
    /// `sendfile`.
    pub windows: Arc<Windows>,
}

impl Shared {
    /// The same settings for the peer listener: its requests come from the
    /// other replicas and are let in by the cluster's secret. Plain HTTP
    /// always (blobs go out with `sendfile`).
    pub fn for_peers(&self, cluster: Arc<crate::cluster::Cluster>) -> Shared {
        Shared {
            app: Arc::new(self.app.for_peers(cluster)),
            builder: self.builder.clone(),
            tls: None,
            limits: self.limits,
            handshake: self.handshake,
            sent_from_files: self.sent_from_files.clone(),
            windows: Arc::clone(&self.windows),
        }
    }
}

/// Serves `stream` in `slot` until it ends, times out, gives its slot up
/// to another, or the server drains (`drain` turns true or its sender is
/// dropped).
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Served now: the first request's time limit includes the handshake.
    let activity = Activity::new();
    slot.serving(&activity);
    match &shared.tls {
        None => {
            let counter = shared.sent_from_files.clone();
            let io = SendfileStream::new(stream, counter, Arc::clone(&shared.windows));
            let io = FloodGuard::new(io);
            watch_over(&shared, io, true, peer, activity, &slot, drain).await
        }
        Some(tls) => {
            let handshake = tls.acceptor().accept(stream);
            let within = slot.slots().deadline(shared.handshake);
            let handshake = tokio::select! {
                done = tokio::time::timeout(within, handshake) => done,
                () = slot.asked_to_leave() => {
                    tracing::debug!(%peer, "connection in its TLS handshake closed for another");
                    return;
                }
            };
            match handshake {
                Ok(Ok(tls)) => {
                    let io = FloodGuard::new(tls);
                    watch_over(&shared, io, false, peer, activity, &slot, drain).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Runs hyper's connection beside the watchdog. `sendfile` says whether
/// `io` sends the cache's mapped windows with `sendfile` (then its HTTP/1.x
/// responses may carry them; see [`Delivery`]).
async fn watch_over<I>(
    shared: &Shared,
    io: I,
    sendfile: bool,
    peer: SocketAddr,
    activity: Arc<Activity>,
    slot: &Slot,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (app, requests) = (Arc::clone(&shared.app), Arc::clone(&activity));
    let windows = Arc::clone(&shared.windows);
    let service = service_fn(move |mut request: Request<Incoming>| {
        let (app, activity) = (Arc::clone(&app), Arc::clone(&requests));
        if sendfile && request.version() < http::Version::HTTP_2 {
            let mapped = Delivery::Mapped(Arc::clone(&windows));
            request.extensions_mut().insert(mapped);
        }
        async move { Ok::<_, Infallible>(app.respond(peer.ip(), &activity, request).await) }
    });
    let connection = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(shared.limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut closing, mut drained) = (Closing::default(), false);
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = drain.wait_for(|draining| *draining), if !drained => {
                drained = true;
                if closing.ask() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = slot.asked_to_leave() => match activity.idle_for() {
                Some(_) => {
                    tracing::debug!(%peer, "connection without a request in flight closed for another");
                    return;
                }
                None => slot.stay(),
            },
            _ = tick.tick() => match activity.verdict(&shared.limits.squeezed(slot.slots())) {
                Verdict::Live => {}
                Verdict::SendStalled => {
                    tracing::info!(%peer, "client took no response bytes for send_timeout; closing");
                    return;
                }
                Verdict::StreamsStalled => {
                    tracing::info!(%peer, "client holds many stalled responses and takes nothing; closing");
                    return;
                }
                Verdict::Idle if closing.overdue() => return,
                Verdict::Idle => {
                    if closing.ask() {
                        tracing::debug!(%peer, "idle connection closed");
                        connection.as_mut().graceful_shutdown();
                    }
                }
            },
        }
    }
}

/// Whether a connection was asked to close, and by when an idle one must be gone.
#[derive(Debug, Default)]
struct Closing {
    asked: bool,
    by: Option<Instant>,
}

impl Closing {
    /// True the first time only: then the caller asks hyper to close.
    fn ask(&mut self) -> bool {
        !std::mem::replace(&mut self.asked, true)
    }

    /// Whether an idle connection has had its [`CLOSE_GRACE`]; the first
    /// call starts it.
    fn overdue(&mut self) -> bool {
        let now = Instant::now();
        now >= *self.by.get_or_insert(now + CLOSE_GRACE)
    }
}
