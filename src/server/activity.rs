//! What one connection is doing, as far as its timeouts care: how many
//! requests are in flight, since when it has been idle, and, for each
//! response being sent, since when it has waited for the client to take
//! its next bytes.
//!
//! hyper has no idle timeout before a connection's first byte (its
//! `header_read_timeout`, given the longer of lasti's two limits, starts at
//! a request's first byte or when a keep-alive connection goes idle), and
//! cannot tell a response stuck behind a zero HTTP/2 window from one
//! waiting for its upstream. The watchdog counts from accept to the first
//! request head (`header_read_timeout`) and from each response to the next
//! head (`keepalive_timeout`). So each request holds an
//! [`InFlight`] guard until its response body is dropped, and each body is
//! wrapped in a [`WatchedBody`] whose clock runs only while the body has
//! handed out a piece and nobody has come back for the next one. The
//! connection's watchdog asks [`Activity::verdict`] now and then.
//!
//! A response that waits for its client longer than the stall grace gives
//! its place in the open-file budget back (it goes on if the client comes
//! back for more): an HTTP/2 stream whose window stays shut then costs a
//! file position and one small piece, not a place every other client
//! needs. A connection with more than [`STALLED_STREAMS`] such responses
//! while none of its responses takes a byte is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::slots::Slots;

/// The largest piece a response body hands to hyper at once. The send
/// timeout runs between pieces, so a client must take at least this much
/// per `send_timeout` (256 KiB per minute by default, ~4 KiB/s) to keep a
/// response going. Slicing `Bytes` copies nothing, and a slice of a cache
/// window still goes out with `sendfile`.
pub const PIECE: usize = 256 * 1024;
/// A clock that is not running.
const STOPPED: u64 = u64::MAX;
/// Responses of one connection that may wait past the stall grace at
/// once while the connection takes nothing: pulls run a handful of layers
/// in parallel; a client with more stalled streams than this is not
/// pulling.
pub const STALLED_STREAMS: usize = 16;
/// Responses of one connection that may wait past the stall grace at once
/// whatever its other responses do (half of the HTTP/2 streams lasti
/// allows): each keeps its blob's file open, though no longer counted in
/// `max_open_blobs`, so one connection cannot hold open files beyond it
/// by keeping one stream flowing.
pub const STALLED_STREAMS_AT_MOST: usize = 64;

/// The timeouts a connection lives by.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Until the first request arrives.
    pub first_request: Duration,
    /// Between a response and the next request.
    pub keepalive: Duration,
    /// Waiting for the client to take a response's next bytes.
    pub send: Duration,
    /// Waiting for the client before a response gives its open-file place
    /// back (at most `send`).
    pub stall: Duration,
}

impl Limits {
    /// These limits with the first-request deadline as short as the
    /// listener's fill makes it ([`Slots::deadline`]).
    pub fn squeezed(&self, slots: &Slots) -> Limits {
        Limits {
            first_request: slots.deadline(self.first_request),
            ..*self
        }
    }

    /// How often the watchdog looks: often enough to close within a quarter
    /// of the shortest timeout, never busier than 20 times a second.
    pub fn tick(&self) -> Duration {
        let shortest = self.first_request.min(self.keepalive).min(self.send);
        let shortest = shortest.min(self.stall);
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Why a connection should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep serving.
    Live,
    /// No request in flight for too long: close it politely (GOAWAY on HTTP/2).
    Idle,
    /// A response has waited too long for the client: drop the connection.
    SendStalled,
    /// More than [`STALLED_STREAMS`] responses wait past the stall grace
    /// and none takes a byte, or more than [`STALLED_STREAMS_AT_MOST`]
    /// whatever the others do: drop the connection.
    StreamsStalled,
}

/// The shared state of one connection.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` when `in_flight` last became 0.
    idle_since: AtomicU64,
    served: AtomicBool,
    clocks: Mutex<Vec<Weak<SendClock>>>,
    /// Milliseconds since `epoch` when a response last handed out a piece.
    last_piece: AtomicU64,
    /// Places in the open-file budget its responses hold.
    places: AtomicUsize,
}

impl Activity {
    /// A connection accepted just now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            served: AtomicBool::new(false),
            clocks: Mutex::new(Vec::new()),
            last_piece: AtomicU64::new(0),
            places: AtomicUsize::new(0),
        })
    }

    /// Whether a request head has arrived on this connection.
    pub fn has_requested(&self) -> bool {
        self.served.load(Ordering::SeqCst)
    }

    /// How long the connection has had no request in flight (`None` while
    /// one is).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::SeqCst);
        Some(Duration::from_millis(self.now().saturating_sub(since)))
    }

    /// Places in the open-file budget this connection's responses hold.
    pub fn places(&self) -> usize {
        self.places.load(Ordering::SeqCst)
    }

    /// Counts `permit` among this connection's places until the returned
    /// [`Place`] is dropped.
    pub fn place(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Place {
        self.places.fetch_add(1, Ordering::SeqCst);
        Place {
            _permit: permit,
            activity: Arc::clone(self),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Marks a request as begun; it ends when the guard is dropped.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.store(true, Ordering::SeqCst);
        InFlight {
            activity: Arc::clone(self),
            held: None,
        }
    }

    /// Wraps a response body so the send timeout can see it wait.
    pub fn watch<B>(self: &Arc<Self>, body: B, mut guard: InFlight) -> WatchedBody<B> {
        let clock = Arc::new(SendClock {
            since: AtomicU64::new(self.now()),
            place: Mutex::new(guard.held.take()),
        });
        let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        clocks.retain(|c| c.strong_count() > 0);
        clocks.push(Arc::downgrade(&clock));
        WatchedBody {
            inner: body,
            rest: None,
            clock,
            _guard: guard,
        }
    }

    /// Whether the connection should go on, judged now.
    pub fn verdict(&self, limits: &Limits) -> Verdict {
        self.verdict_at(limits, self.now())
    }

    /// The verdict at `now` milliseconds after the connection's epoch.
    /// Responses that waited past the stall grace give their places back.
    fn verdict_at(&self, limits: &Limits, now: u64) -> Verdict {
        let waited = |since: u64| Duration::from_millis(now.saturating_sub(since));
        let clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
        let mut stalled = 0;
        for clock in clocks.iter().filter_map(Weak::upgrade) {
            let since = clock.since.load(Ordering::SeqCst);
            if since == STOPPED {
                continue;
            }
            if waited(since) >= limits.send {
                return Verdict::SendStalled;
            }
            if waited(since) >= limits.stall.min(limits.send) {
                stalled += 1;
                clock.give_place_back();
            }
        }
        let taking = waited(self.last_piece.load(Ordering::SeqCst)) < limits.stall;
        if (stalled > STALLED_STREAMS && !taking) || stalled > STALLED_STREAMS_AT_MOST {
            return Verdict::StreamsStalled;
        }
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Verdict::Live;
        }
        let limit = match self.served.load(Ordering::SeqCst) {
            true => limits.keepalive,
            false => limits.first_request,
        };
        match waited(self.idle_since.load(Ordering::SeqCst)) >= limit {
            true => Verdict::Idle,
            false => Verdict::Live,
        }
    }
}

/// A place in the open-file budget held by one of a connection's
/// responses; dropping it gives it back.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    activity: Arc<Activity>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.activity.places.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request in flight; dropping it (with the response body) ends it.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    held: Option<Place>,
}

impl InFlight {
    /// Keeps `place` until the response is done or stalls past the grace.
    pub fn hold(&mut self, place: Place) {
        self.held = Some(place);
    }

    /// The connection this request came on.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.idle_since.store(activity.now(), Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Since when (ms after the connection's epoch) a body has waited to be
/// polled again, or `STOPPED`; and its place in the open-file budget,
/// until it stalls past the grace.
#[derive(Debug)]
struct SendClock {
    since: AtomicU64,
    place: Mutex<Option<Place>>,
}

impl SendClock {
    fn give_place_back(&self) {
        let place = self.place.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(place);
    }
}

pin_project_lite::pin_project! {
    /// A response body that hands out pieces of at most [`PIECE`] bytes
    /// and keeps a clock of how long it waits for the client.
    pub struct WatchedBody<B> {
        #[pin]
        inner: B,
        rest: Option<Bytes>,
        clock: Arc<SendClock>,
        _guard: InFlight,
    }
}

impl<B> WatchedBody<B> {
    fn stamp(clock: &SendClock, guard: &InFlight, running: bool) {
        let value = if running {
            let now = guard.activity.now();
            guard.activity.last_piece.store(now, Ordering::SeqCst);
            now
        } else {
            STOPPED
        };
        clock.since.store(value, Ordering::SeqCst);
    }
}

impl<B> HttpBody for WatchedBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(rest) = this.rest.as_mut() {
            let piece = rest.split_to(rest.len().min(PIECE));
            if rest.is_empty() {
                *this.rest = None;
            }
            Self::stamp(this.clock, this._guard, true);
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        let polled = this.inner.poll_frame(cx);
        // Ready with a piece: now the client has to take it. Pending: the
        // source is slow, which is no fault of the client's. Ended: done.
        let running = matches!(polled, Poll::Ready(Some(Ok(_))));
        Self::stamp(this.clock, this._guard, running);
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) if data.len() > PIECE => {
                    let piece = data.split_to(PIECE);
                    *this.rest = Some(data);
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.rest.as_ref().map_or(0, |r| r.remaining() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint.set_lower(inner.lower() + held);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    const LIMITS: Limits = Limits {
        first_request: Duration::from_secs(10),
        keepalive: Duration::from_secs(5),
        send: Duration::from_secs(3),
        stall: Duration::from_secs(3),
    };

    // The verdict `secs` seconds from now. Every stamp a test has taken is
    // at or before now, however slowly the test runs, so "at least `secs`
    // waited" holds for each of them; the limits are seconds apart, so the
    // milliseconds a slow machine spends between stamps cannot tip a verdict.
    fn at(activity: &Activity, secs: u64) -> Verdict {
        activity.verdict_at(&LIMITS, activity.now() + secs * 1000)
    }

    #[test]
    fn a_connection_without_requests_is_idle_after_the_first_request_limit() {
        let activity = Activity::new();
        assert_eq!(at(&activity, 9), Verdict::Live);
        assert_eq!(at(&activity, 10), Verdict::Idle);
    }

    #[test]
    fn after_a_response_the_keepalive_limit_counts_from_its_end() {
        let activity = Activity::new();
        let request = activity.request();
        assert_eq!(at(&activity, 60), Verdict::Live, "a request is in flight");
        drop(request);
        assert_eq!(at(&activity, 4), Verdict::Live);
        assert_eq!(at(&activity, 5), Verdict::Idle);
    }

    #[tokio::test]
    async fn a_body_not_polled_again_stalls_and_one_polled_to_its_end_does_not() {
        let activity = Activity::new();
        let body = Full::new(Bytes::from(vec![7u8; PIECE * 2 + 1]));
        let mut body = Box::pin(activity.watch(body, activity.request()));
        assert_eq!(
            at(&activity, 3),
            Verdict::SendStalled,
            "never polled at all"
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PIECE, "large frames are handed out in pieces");
        assert_eq!(at(&activity, 2), Verdict::Live);
        assert_eq!(at(&activity, 3), Verdict::SendStalled);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second.len(), PIECE);
        assert_eq!(body.size_hint().exact(), Some(1));
        let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(last.len(), 1);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(
            at(&activity, 4),
            Verdict::Live,
            "a finished body waits for nobody"
        );
        drop(body);
        assert_eq!(at(&activity, 5), Verdict::Idle);
    }

    #[test]
    fn stalled_responses_give_their_places_back_and_many_close_the_connection() {
        let activity = Activity::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(100));
        let watched = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| {
                    let mut guard = activity.request();
                    let permit = Arc::clone(&permits).try_acquire_owned().unwrap();
                    guard.hold(activity.place(permit));
                    activity.watch(Full::new(Bytes::from_static(b"x")), guard)
                })
                .collect()
        };
        let limits = Limits {
            send: Duration::from_secs(10),
            stall: Duration::from_secs(3),
            ..LIMITS
        };
        let at = |secs: u64| activity.verdict_at(&limits, activity.now() + secs * 1000);
        let few = watched(STALLED_STREAMS);
        assert_eq!(activity.places(), STALLED_STREAMS);
        assert_eq!(at(2), Verdict::Live, "within the grace");
        assert_eq!(activity.places(), STALLED_STREAMS);
        assert_eq!(at(3), Verdict::Live, "a few stalled streams may wait");
        assert_eq!(activity.places(), 0, "but give their places back");
        assert_eq!(permits.available_permits(), 100);
        let more = watched(1);
        // Another response of the connection takes a piece just then.
        let taken_at = |secs: u64| {
            activity
                .last_piece
                .store(activity.now() + secs * 1000, Ordering::SeqCst)
        };
        taken_at(3);
        assert_eq!(at(3), Verdict::Live, "the connection takes bytes");
        taken_at(0);
        assert_eq!(at(3), Verdict::StreamsStalled, "one too many, none taking");
        assert_eq!(at(10), Verdict::SendStalled, "and any past send_timeout");
        let many = watched(STALLED_STREAMS_AT_MOST - STALLED_STREAMS);
        taken_at(3);
        assert_eq!(
            at(3),
            Verdict::StreamsStalled,
            "too many whatever the others do"
        );
        drop((few, more, many));
        assert_eq!(activity.places(), 0);
    }

    #[test]
    fn the_watchdog_looks_often_enough_but_not_too_often() {
        assert_eq!(LIMITS.tick(), Duration::from_millis(750));
        let tiny = Limits {
            send: Duration::from_millis(10),
            ..LIMITS
        };
        assert_eq!(tiny.tick(), Duration::from_millis(50));
    }
}
