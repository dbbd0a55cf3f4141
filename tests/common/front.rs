//! A round-robin TCP front over lasti replicas, as a Kubernetes Service
//! spreads new connections over the endpoints that are ready: a replica
//! taken out (as a pod is once it starts terminating) gets no new
//! connection and keeps the ones it has. Loopback only; stops by itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The front never outlives a test by more than this.
const HARD_LIFETIME: Duration = Duration::from_secs(600);

/// The replicas behind the front (`host:port`) and whether each is ready.
type Endpoints = Arc<Mutex<Vec<(String, bool)>>>;

/// A running front.
pub struct Front {
    host: String,
    endpoints: Endpoints,
    task: JoinHandle<()>,
}

impl Front {
    /// Listens on a free loopback port in front of `replicas`, all ready.
    pub async fn start(replicas: &[String]) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let host = listener.local_addr().expect("front address").to_string();
        let endpoints: Endpoints = Arc::new(Mutex::new(
            replicas.iter().map(|r| (r.clone(), true)).collect(),
        ));
        let serving = serve(listener, Arc::clone(&endpoints));
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(HARD_LIFETIME, serving).await;
        });
        Front {
            host,
            endpoints,
            task,
        }
    }

    /// `127.0.0.1:port`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Takes `replica` out of (or back into) the rotation.
    pub fn set_ready(&self, replica: &str, ready: bool) {
        let mut endpoints = self.endpoints.lock().unwrap();
        let endpoint = endpoints.iter_mut().find(|(r, _)| r == replica);
        endpoint.expect("a replica behind the front").1 = ready;
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, endpoints: Endpoints) {
    let mut next = 0;
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let ready: Vec<String> = {
            let endpoints = endpoints.lock().unwrap();
            endpoints
                .iter()
                .filter(|(_, ready)| *ready)
                .map(|(r, _)| r.clone())
                .collect()
        };
        if ready.is_empty() {
            continue;
        }
        let replica = ready[next % ready.len()].clone();
        next += 1;
        tokio::spawn(relay(client, replica));
    }
}

/// Passes bytes both ways until either side closes.
async fn relay(mut client: TcpStream, replica: String) {
    if let Ok(mut server) = TcpStream::connect(&replica).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}
