//! The open-file budget: every blob response holds a file (or, on a miss, a
//! temporary file and an upstream socket) until its body is dropped, so
//! blob responses are counted against a budget well below the process's
//! descriptor limit. Past it a client gets 503 with `Retry-After`, while
//! sockets and the cache's own files still find descriptors: `accept` and
//! the store never fail with "Too many open files".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// What a client refused for the budget is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The share of the descriptor limit that blob responses may hold when
/// `max_open_blobs` is 0 (the rest: connections, upstream sockets, fills, the index).
const AUTO_SHARE: u64 = 4;
/// The smallest automatic budget, for a process with a tiny limit.
const AUTO_MIN: usize = 16;
/// The fewest blob responses one connection may hold at once, however
/// many connections share the budget: more than a pull runs in parallel
/// on one HTTP/2 connection (podman 6, containerd 3 by default).
pub const SHARE_MIN: usize = 16;
/// Descriptors kept for what is neither a client connection nor a blob
/// response: listeners, the index, fills' files, upstream and bucket sockets.
const RESERVED: u64 = 256;
/// At most one warning per this long while the budget is exhausted.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as nginx's
/// `worker_rlimit_nofile` does; the soft limit is often 1,024 while the hard
/// one allows far more. Returns the limit now in force.
pub fn raise_limit() -> std::io::Result<u64> {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(std::io::Error::from)?;
    }
    Ok(current_limit())
}

/// The soft descriptor limit (`u64::MAX` when unlimited).
fn current_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// The number of blob responses allowed at once, and how many of them one
/// connection may hold.
#[derive(Debug)]
pub struct BlobBudget {
    permits: Arc<Semaphore>,
    size: usize,
    per_connection: usize,
    warned: AtomicU64,
    started: Instant,
}

impl BlobBudget {
    /// A budget of `configured` responses, or (0) a share of the current
    /// limit; each of `max_connections` may hold an equal share of it, and
    /// at least [`SHARE_MIN`].
    pub fn new(configured: usize, max_connections: usize) -> BlobBudget {
        let size = match configured {
            0 => auto_size(current_limit()),
            n => n,
        };
        BlobBudget {
            permits: Arc::new(Semaphore::new(size)),
            size,
            per_connection: (size / max_connections.max(1)).max(SHARE_MIN),
            warned: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The budget's size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The most places one connection may hold.
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// A place for one blob response on a connection whose responses hold
    /// `held` places: `RateLimited` past the connection's share once half
    /// the budget is in use (one HTTP/2 connection cannot take the budget
    /// from the others, while a client that multiplexes many pulls on one
    /// connection is not held back when places are plenty), `Busy` when
    /// none is free.
    pub fn admit(&self, held: usize) -> Result<OwnedSemaphorePermit, Error> {
        let in_use = self.size - self.permits.available_permits();
        if held >= self.per_connection && in_use * 2 >= self.size {
            return Err(Error::RateLimited {
                retry_after: RETRY_AFTER,
            });
        }
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            self.warn_exhausted();
            Error::Busy {
                retry_after: RETRY_AFTER,
            }
        })
    }

    fn warn_exhausted(&self) {
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY.as_secs()
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_open_blobs = self.size,
                "open-file budget exhausted; blob requests get 503 until responses finish"
            );
        }
    }
}

/// Most connections the peer listener serves at once: replicas are few,
/// and each asks over a small pool.
const PEER_CONNECTIONS: u64 = 256;

/// The connections the descriptor limit leaves room for, after the
/// open-blob budget, the blobs the cache keeps open and [`RESERVED`]: one
/// budget for both listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRoom {
    /// Client connections served at once: `max_connections`, or fewer.
    pub clients: usize,
    /// Peer connections served at once (0 without a peer listener).
    pub peers: usize,
    /// Whether `clients` is below `max_connections`, for the caller to warn.
    pub cut: bool,
}

/// How many connections each listener may serve at once. Past it, new
/// connections wait in the kernel's backlog instead of taking the
/// descriptors a fill or the index needs and failing it with "Too many
/// open files". The peer listener's share (a quarter of the room at most)
/// comes out of the same room.
pub fn connection_room(max_connections: usize, open_blobs: usize, peers: bool) -> ConnectionRoom {
    let kept_open = crate::cache::open_blobs::kept_open();
    room_within(
        current_limit(),
        max_connections,
        open_blobs,
        kept_open,
        peers,
    )
}

fn room_within(
    limit: u64,
    max_connections: usize,
    open_blobs: usize,
    kept_open: u64,
    peers: bool,
) -> ConnectionRoom {
    let room = limit
        .saturating_sub(open_blobs as u64)
        .saturating_sub(kept_open)
        .saturating_sub(RESERVED)
        .max(AUTO_MIN as u64);
    let peer_room = match peers {
        true => PEER_CONNECTIONS.min(room / 4).max(1),
        false => 0,
    };
    let room = room - peer_room;
    let (clients, cut) = match usize::try_from(room) {
        Ok(room) if room < max_connections => (room, true),
        _ => (max_connections, false),
    };
    ConnectionRoom {
        clients,
        peers: peer_room as usize,
        cut,
    }
}

fn auto_size(limit: u64) -> usize {
    usize::try_from(limit / AUTO_SHARE)
        .unwrap_or(usize::MAX)
        .max(AUTO_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_automatic_budget_is_a_share_of_the_limit() {
        assert_eq!(auto_size(1024), 256);
        assert_eq!(auto_size(20), AUTO_MIN);
        assert!(auto_size(u64::MAX) > 1 << 40);
    }

    #[test]
    fn past_the_budget_comes_busy_and_a_dropped_permit_frees_a_place() {
        let budget = BlobBudget::new(2, 10);
        let first = budget.admit(0).unwrap();
        let _second = budget.admit(0).unwrap();
        let refused = budget.admit(0).unwrap_err();
        assert_eq!(refused.status().as_u16(), 503);
        drop(first);
        assert!(budget.admit(0).is_ok());
    }

    #[test]
    fn once_half_the_budget_is_in_use_a_connection_holds_at_most_its_share() {
        let budget = BlobBudget::new(1000, 10);
        assert_eq!(budget.per_connection(), 100);
        let held: Vec<_> = (0..499).map(|_| budget.admit(0).unwrap()).collect();
        let plenty = budget.admit(499).expect("places are plenty");
        let refused = budget.admit(100).unwrap_err();
        assert_eq!(refused.status().as_u16(), 429, "half the budget is in use");
        assert!(budget.admit(99).is_ok(), "within its share");
        drop((held, plenty));
        assert_eq!(BlobBudget::new(1000, 10_000).per_connection(), SHARE_MIN);
    }

    #[test]
    fn connections_fit_beside_the_blob_budget_or_are_cut_to_what_does() {
        let room = |limit, max, blobs, kept| {
            let r = room_within(limit, max, blobs, kept, false);
            assert_eq!(r.peers, 0);
            (r.clients, r.cut)
        };
        assert_eq!(room(1_048_576, 10_000, 262_144, 1024), (10_000, false));
        assert_eq!(room(1024, 10_000, 256, 64), (448, true));
        assert_eq!(room(1024, 100, 256, 64), (100, false));
        assert_eq!(room(300, 10_000, 256, 18), (AUTO_MIN, true));
        let unlimited = u64::MAX;
        assert_eq!(
            room(unlimited, 10_000, auto_size(unlimited), 1024),
            (10_000, false)
        );
    }

    #[test]
    fn the_peer_listener_takes_its_share_from_the_same_room() {
        let alone = room_within(1024, 10_000, 256, 64, false);
        let beside = room_within(1024, 10_000, 256, 64, true);
        assert_eq!(beside.peers, 112, "a quarter of 448");
        assert_eq!(beside.clients + beside.peers, alone.clients);
        let large = room_within(1_048_576, 10_000, 262_144, 1024, true);
        assert_eq!(
            (large.clients, large.peers, large.cut),
            (10_000, 256, false)
        );
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let before = current_limit();
        assert!(raise_limit().unwrap() >= before);
    }
}
