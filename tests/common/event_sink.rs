//! An HTTP receiver of CloudEvents batches, as an audit collector would
//! run one: it keeps every event posted, in the order it took them, and
//! can be stopped (every connection closed) and started again on the same
//! port, or made to hold its answers, as a receiver under load does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every event taken, in order (repeats of a batch included).
    pub events: Vec<Value>,
    /// The `Content-Type` of each POST.
    pub content_types: Vec<String>,
    /// POSTs that arrived (answered or still held).
    pub posts: usize,
}

/// A running receiver.
pub struct EventSink {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    /// While true, a POST is held unanswered (and its events not taken).
    hold: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EventSink {
    /// A receiver on a fresh loopback port.
    pub async fn start() -> EventSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        EventSink::serve(listener, Arc::default())
    }

    /// Where lasti posts to.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// The events taken so far.
    pub fn events(&self) -> Vec<Value> {
        self.seen.lock().unwrap().events.clone()
    }

    /// What it saw so far.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Holds every answer (and the events of held POSTs) until released.
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// Stops listening and closes every connection; what it saw is kept.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with what it saw so far.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind sink");
        let mut again = EventSink::serve(listener, Arc::clone(&self.seen));
        self.task = again.task.take();
        self.hold = again.hold.clone();
    }

    fn serve(listener: TcpListener, seen: Arc<Mutex<Seen>>) -> EventSink {
        let addr = listener.local_addr().expect("addr");
        let (hold, held) = watch::channel(false);
        let shared = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with it.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, held) = (Arc::clone(&shared), held.clone());
                let service = service_fn(move |request| {
                    let (seen, held) = (Arc::clone(&seen), held.clone());
                    async move { Ok::<_, Infallible>(take(request, seen, held).await) }
                });
                connections.spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        EventSink {
            addr,
            seen,
            hold,
            task: Some(task),
        }
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn take(
    request: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    mut held: watch::Receiver<bool>,
) -> Response<Full<Bytes>> {
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.lock().unwrap().posts += 1;
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST),
    };
    let _ = held.wait_for(|held| !*held).await;
    let Ok(Value::Array(events)) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST);
    };
    let mut seen = seen.lock().unwrap();
    seen.content_types.push(content_type);
    seen.events.extend(events);
    answer(StatusCode::ACCEPTED)
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}
