//! The connection slots of one listener, `max_connections` of them, and
//! who gives one up when they run short.
//!
//! Sockets that connect and send nothing (or drip a request head) would
//! otherwise hold their slots until their first-request deadline, and a
//! few hundred of them reopened as soon as they are closed keep every
//! slot and the listen queue full. Per-address limits cannot tell them
//! apart behind a router, where every client arrives from the router's
//! addresses. So, as nginx and Apache's `mod_reqtimeout` do under pressure:
//!
//! - when every slot is taken, a new connection takes the slot of one that
//!   has not sent a request in its first [`GRACE`] (the oldest first), or
//!   else of one idle between requests (the longest idle); a connection
//!   with a request in flight is never closed for another, and one just
//!   accepted has its grace to be read, however busy the process is;
//! - as the slots fill past half, the deadline for a first request and the
//!   TLS handshake shrinks, down to a tenth when all are taken.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;
use tokio::sync::Notify;

use super::activity::Activity;

/// The shortest a pre-request deadline becomes, as a share of its setting.
const TIGHTEST: f64 = 0.1;
/// How long a new connection keeps its slot whatever comes after it: time
/// for its task to run and read the request a client sent at once, on a
/// process busy with a flood of new connections.
pub const GRACE: Duration = Duration::from_millis(100);

/// The slots of one listener.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    taken: Mutex<Taken>,
    /// Woken when a slot frees, or a connection asked to give its slot up
    /// kept it (a request came in meanwhile).
    freed: Notify,
    shed: IntCounterVec,
}

#[derive(Debug, Default)]
struct Taken {
    next: u64,
    /// In order of acceptance.
    by_id: BTreeMap<u64, Occupant>,
}

#[derive(Debug)]
struct Occupant {
    /// When the slot was taken.
    since: Instant,
    /// `None` between taking the slot and serving the connection.
    activity: Option<Arc<Activity>>,
    /// Told to give the slot up.
    leave: Arc<Notify>,
    asked: bool,
}

impl Slots {
    /// `max` slots; connections closed to make room are counted in `shed`
    /// (`lasti_connections_shed_total`).
    pub fn new(max: usize, shed: IntCounterVec) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            taken: Mutex::new(Taken::default()),
            freed: Notify::new(),
            shed,
        })
    }

    /// A slot for a connection just accepted: a free one, or one given up
    /// by a connection that has not sent a request or is idle; else waits
    /// until one frees.
    pub async fn take(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut taken = self.lock();
                if taken.by_id.len() < self.max {
                    let id = taken.next;
                    taken.next += 1;
                    let leave = Arc::new(Notify::new());
                    let occupant = Occupant {
                        since: Instant::now(),
                        activity: None,
                        leave: Arc::clone(&leave),
                        asked: false,
                    };
                    taken.by_id.insert(id, occupant);
                    return Slot {
                        slots: Arc::clone(self),
                        id,
                        leave,
                    };
                }
                if !taken.by_id.values().any(|o| o.asked) {
                    if let Some((occupant, reason)) = shed_one(&mut taken) {
                        occupant.asked = true;
                        occupant.leave.notify_one();
                        self.shed.with_label_values(&[reason]).inc();
                    }
                }
            }
            // A connection still in its grace may be past it by then.
            let _ = tokio::time::timeout(GRACE, freed).await;
        }
    }

    /// The share of slots taken, 0 to 1.
    pub fn occupancy(&self) -> f64 {
        self.lock().by_id.len() as f64 / self.max as f64
    }

    /// `limit` (a first-request or handshake deadline) as the slots' fill
    /// allows: whole up to half full, then shorter, to a tenth when full.
    pub fn deadline(&self, limit: Duration) -> Duration {
        limit.mul_f64(squeeze(self.occupancy()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Taken> {
        self.taken.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The factor a pre-request deadline is multiplied by at `occupancy`.
fn squeeze(occupancy: f64) -> f64 {
    ((1.0 - occupancy) * 2.0).clamp(TIGHTEST, 1.0)
}

/// The connection to close for a new one, and why: the oldest that has
/// not sent a request, else the one idle the longest; never one with a
/// request in flight.
fn shed_one(taken: &mut Taken) -> Option<(&mut Occupant, &'static str)> {
    let mut idlest: Option<(u64, Duration)> = None;
    let mut unproven = None;
    for (id, occupant) in &taken.by_id {
        let Some(activity) = &occupant.activity else {
            continue;
        };
        if !activity.has_requested() {
            if occupant.since.elapsed() >= GRACE {
                unproven = Some(*id);
                break;
            }
            continue;
        }
        if let Some(idle) = activity.idle_for() {
            if idlest.is_none_or(|(_, longest)| idle > longest) {
                idlest = Some((*id, idle));
            }
        }
    }
    let (id, reason) = match (unproven, idlest) {
        (Some(id), _) => (id, "unproven"),
        (None, Some((id, _))) => (id, "idle"),
        (None, None) => return None,
    };
    taken.by_id.get_mut(&id).map(|o| (o, reason))
}

/// One connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    leave: Arc<Notify>,
}

impl Slot {
    /// Names the connection's activity, so the slots can judge it.
    pub fn serving(&self, activity: &Arc<Activity>) {
        if let Some(occupant) = self.slots.lock().by_id.get_mut(&self.id) {
            occupant.activity = Some(Arc::clone(activity));
        }
    }

    /// Resolves when another connection needs this slot.
    pub async fn asked_to_leave(&self) {
        self.leave.notified().await;
    }

    /// Keeps the slot after all (a request came in since it was asked):
    /// the slots look for another to close.
    pub fn stay(&self) {
        if let Some(occupant) = self.slots.lock().by_id.get_mut(&self.id) {
            occupant.asked = false;
        }
        self.slots.freed.notify_one();
    }

    /// The listener's slots, for their deadlines.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().by_id.remove(&self.id);
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shed() -> IntCounterVec {
        let opts = prometheus::Opts::new("shed", "shed");
        IntCounterVec::new(opts, &["reason"]).unwrap()
    }

    #[test]
    fn deadlines_shrink_past_half_full_to_a_tenth() {
        assert_eq!(squeeze(0.0), 1.0);
        assert_eq!(squeeze(0.5), 1.0);
        assert!((squeeze(0.75) - 0.5).abs() < 1e-9);
        assert_eq!(squeeze(1.0), TIGHTEST);
    }

    #[tokio::test]
    async fn a_full_listener_sheds_the_oldest_silent_connection_not_a_busy_one() {
        let slots = Slots::new(3, shed());
        let busy = slots.take().await;
        let busy_activity = Activity::new();
        busy.serving(&busy_activity);
        let _request = busy_activity.request();
        let old = slots.take().await;
        let old_activity = Activity::new();
        old.serving(&old_activity);
        tokio::time::sleep(GRACE).await;
        let new = slots.take().await;
        let new_activity = Activity::new();
        new.serving(&new_activity);
        let taking = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take().await }
        });
        tokio::time::timeout(Duration::from_secs(5), old.asked_to_leave())
            .await
            .expect("the oldest silent connection is asked to leave");
        drop(old);
        let fourth = tokio::time::timeout(Duration::from_secs(5), taking)
            .await
            .expect("its slot goes to the new connection")
            .unwrap();
        assert_eq!(slots.occupancy(), 1.0);
        assert_eq!(slots.shed.with_label_values(&["unproven"]).get(), 1);
        drop((busy, new, fourth));
    }

    #[tokio::test]
    async fn a_connection_in_its_grace_keeps_its_slot() {
        let slots = Slots::new(1, shed());
        let new = slots.take().await;
        new.serving(&Activity::new());
        let next = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.take().await }
        });
        let early = tokio::time::timeout(GRACE / 2, new.asked_to_leave()).await;
        assert!(early.is_err(), "not asked to leave within its grace");
        tokio::time::timeout(GRACE * 20, new.asked_to_leave())
            .await
            .expect("asked to leave once past its grace");
        drop(new);
        tokio::time::timeout(GRACE * 20, next)
            .await
            .expect("its slot goes to the next")
            .unwrap();
    }

    #[tokio::test]
    async fn with_every_connection_busy_a_new_one_waits() {
        let slots = Slots::new(1, shed());
        let busy = slots.take().await;
        let activity = Activity::new();
        busy.serving(&activity);
        let _request = activity.request();
        let waiting = tokio::time::timeout(Duration::from_millis(200), slots.take()).await;
        assert!(waiting.is_err(), "no slot is taken from a busy connection");
    }
}
