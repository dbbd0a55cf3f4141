//! A bound on HTTP/2 control frames. The `h2` crate answers every PING and
//! SETTINGS frame (one pending answer at a time, so memory stays bounded),
//! but sets no limit on how many a peer may send: millions of PINGs cost
//! seconds of CPU and keep the connection busy. hyper and `h2` offer no
//! option for it, so this reader looks at the frame headers the peer
//! sends (9 bytes each, payloads skipped unread) and ends the connection
//! when PINGs and SETTINGS arrive faster than [`RATE`] per second beyond a
//! [`BURST`]; hyper then drops it.
//!
//! Only the read side is watched and nothing is copied; on a connection
//! that does not open with the HTTP/2 preface (HTTP/1.1) the guard stands
//! aside after 24 bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Control frames a connection may send at once, far above what any client
/// sends (one SETTINGS at start, a PING now and then to check liveness).
pub const BURST: f64 = 1_000.0;
/// Control frames per second allowed on average past the burst.
pub const RATE: f64 = 100.0;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;

/// Where the reader stands in the peer's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This many bytes of the preface seen so far.
    Preface(usize),
    /// Reading frame headers and skipping payloads.
    Frames,
    /// Not HTTP/2: nothing to watch.
    Off,
}

/// Counts the peer's control frames against a token bucket.
#[derive(Debug)]
pub struct FrameCounter {
    phase: Phase,
    header: [u8; HEADER_LEN],
    have: usize,
    skip: usize,
    tokens: f64,
    refilled: Instant,
}

impl Default for FrameCounter {
    fn default() -> Self {
        FrameCounter::new()
    }
}

/// The peer sent control frames faster than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flood;

impl FrameCounter {
    /// A counter for a new connection, with a full bucket.
    pub fn new() -> FrameCounter {
        FrameCounter {
            phase: Phase::Preface(0),
            header: [0; HEADER_LEN],
            have: 0,
            skip: 0,
            tokens: BURST,
            refilled: Instant::now(),
        }
    }

    /// Looks at bytes the peer sent, in order.
    pub fn observe(&mut self, bytes: &[u8]) -> Result<(), Flood> {
        self.observe_at(bytes, Instant::now())
    }

    fn observe_at(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Flood> {
        while !bytes.is_empty() {
            match self.phase {
                Phase::Off => return Ok(()),
                Phase::Preface(seen) => {
                    let n = bytes.len().min(PREFACE.len() - seen);
                    self.phase = match bytes[..n] == PREFACE[seen..seen + n] {
                        false => Phase::Off,
                        true if seen + n == PREFACE.len() => Phase::Frames,
                        true => Phase::Preface(seen + n),
                    };
                    bytes = &bytes[n..];
                }
                Phase::Frames if self.skip > 0 => {
                    let n = bytes.len().min(self.skip);
                    self.skip -= n;
                    bytes = &bytes[n..];
                }
                Phase::Frames => {
                    let n = bytes.len().min(HEADER_LEN - self.have);
                    self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                    self.have += n;
                    bytes = &bytes[n..];
                    if self.have == HEADER_LEN {
                        self.have = 0;
                        self.frame(now)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn frame(&mut self, now: Instant) -> Result<(), Flood> {
        let h = self.header;
        self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let control = matches!(h[3], PING | SETTINGS) && h[4] & ACK == 0;
        if !control {
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        if self.tokens < 1.0 {
            return Err(Flood);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A connection whose incoming HTTP/2 control frames are counted.
    pub struct FloodGuard<T> {
        #[pin]
        inner: T,
        counter: FrameCounter,
    }
}

impl<T> FloodGuard<T> {
    /// Watches a freshly accepted (or decrypted) connection.
    pub fn new(inner: T) -> FloodGuard<T> {
        FloodGuard {
            inner,
            counter: FrameCounter::new(),
        }
    }
}

impl<T: AsyncRead> AsyncRead for FloodGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            if this.counter.observe(&buf.filled()[before..]).is_err() {
                tracing::info!("HTTP/2 control frame flood; closing the connection");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "HTTP/2 control frame flood",
                )));
            }
        }
        read
    }
}

impl<T: AsyncWrite> AsyncWrite for FloodGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn pings(n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| frame(PING, 0, &[0; 8])).collect()
    }

    #[test]
    fn pings_past_the_burst_are_a_flood_even_split_anywhere() {
        let mut counter = FrameCounter::new();
        let now = counter.refilled;
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, 0, &[0; 6]));
        // Payloads that look like PINGs are skipped, not counted.
        stream.extend(frame(0x0, 0, &pings(5_000)));
        stream.extend(pings(BURST as usize - 1));
        for chunk in stream.chunks(7) {
            assert_eq!(counter.observe_at(chunk, now), Ok(()));
        }
        let ack = frame(PING, ACK, &[0; 8]);
        assert_eq!(counter.observe_at(&ack, now), Ok(()), "ACKs are free");
        assert_eq!(counter.observe_at(&pings(1), now), Err(Flood));
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let mut counter = FrameCounter::new();
        let now = counter.refilled;
        counter.observe_at(PREFACE, now).unwrap();
        counter.observe_at(&pings(BURST as usize), now).unwrap();
        let later = now + Duration::from_secs(1);
        assert_eq!(counter.observe_at(&pings(RATE as usize), later), Ok(()));
        assert_eq!(counter.observe_at(&pings(1), later), Err(Flood));
    }

    #[test]
    fn http1_is_left_alone() {
        let mut counter = FrameCounter::new();
        let request = b"GET /v2/ HTTP/1.1\r\nhost: x\r\n\r\n";
        for _ in 0..10_000 {
            assert_eq!(counter.observe(request), Ok(()));
        }
        assert_eq!(counter.phase, Phase::Off);
    }
}
