//! Runs one task per key however many callers ask at once; every caller gets
//! a clone of the one result.
//!
//! The work runs in its own spawned task, so the first caller going away
//! (a client disconnecting) neither cancels it nor strands the others. The
//! key leaves the table when that task ends, however it ends: a flight that
//! panicked fails its own callers, never the ones that come after.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

type Flights<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>;

/// A table of work in flight, keyed by `K`.
pub struct SingleFlight<K, V: Clone> {
    flights: Flights<K, V>,
}

impl<K, V: Clone> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SingleFlight")
    }
}

impl<K, V> Default for SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the work for `key`, or starts it with `work`. The flag says
    /// whether the caller joined work already in flight.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, joined) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(&key) {
                Some(flight) => (flight.clone(), true),
                None => {
                    let table = Arc::clone(&self.flights);
                    let task_key = key.clone();
                    let future = work();
                    let handle = tokio::spawn(async move {
                        let _landing = Landing {
                            table,
                            key: Some(task_key),
                        };
                        future.await
                    });
                    let flight = async move { handle.await.expect("single-flight task panicked") }
                        .boxed()
                        .shared();
                    flights.insert(key, flight.clone());
                    (flight, false)
                }
            }
        };
        (flight.await, joined)
    }
}

/// Takes a flight's key out of the table when its task ends or unwinds.
struct Landing<K: Eq + Hash, V: Clone> {
    table: Flights<K, V>,
    key: Option<K>,
}

impl<K: Eq + Hash, V: Clone> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<SingleFlight<&'static str, usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flights, runs) = (Arc::clone(&flights), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 41
                    })
                    .await
            }));
        }
        let mut joined = 0;
        for task in tasks {
            let (value, j) = task.await.unwrap();
            assert_eq!(value, 41);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
        // Finished work is forgotten: the next call runs again.
        let (value, j) = flights.run("k", || async { 7 }).await;
        assert_eq!((value, j), (7, false));
    }

    #[tokio::test]
    async fn a_panicking_flight_fails_only_its_own_callers() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::default());
        let panicking = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move {
                flights
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        panic!("the work failed")
                    })
                    .await
            })
        };
        assert!(panicking.await.is_err(), "its caller sees the panic");
        let (value, joined) =
            tokio::time::timeout(Duration::from_secs(5), flights.run(1, || async { 3 }))
                .await
                .expect("a later caller is not stuck");
        assert_eq!((value, joined), (3, false), "a later caller runs anew");
    }

    #[tokio::test]
    async fn the_work_outlives_a_cancelled_first_caller() {
        let flights: Arc<SingleFlight<u8, u8>> = Arc::new(SingleFlight::default());
        let first = {
            let flights = Arc::clone(&flights);
            tokio::spawn(async move {
                flights
                    .run(1, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        9
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let (value, joined) = flights.run(1, || async { 0 }).await;
        assert_eq!((value, joined), (9, true));
    }
}
