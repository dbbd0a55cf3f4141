//! A cluster that keeps serving while it changes under a steady pull load,
//! with real parts: three lasti processes on loopback behind a round-robin
//! front (as a Service spreads connections over ready pods), one Garage
//! bucket behind a relay, and the CNCF distribution registry behind nginx
//! with `limit_rate` (a slow upstream, so fills overlap the events). Four
//! skopeo loops pull through the front without pause, each turning to a
//! cold image as soon as one is released, while:
//!
//! - each replica in turn is taken out of the front and sent SIGTERM, and
//!   comes back on an empty disk (`oc rollout restart` with an `emptyDir`);
//! - an owner is SIGKILLed in the middle of a fill for the others;
//! - the bucket stops answering for a minute.
//!
//! No pull fails (skopeo retries nothing here and verifies every digest),
//! every blob reaches the bucket, and each blob is fetched from the
//! registry once for the whole cluster, save the one the killed owner was
//! fetching (whose askers fetch the rest themselves).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::lasti::cluster::rendezvous;
use ::lasti::oci::Digest;
use common::front::Front;
use common::garage::Garage;
use common::http;
use common::oci_layout::{BuiltImage, ImageSpec, Layout};
use common::process::{Process, Setup};
use common::registry::Registry;
use common::relay::{relay, Mode};
use common::s3::{blob_key, Store};
use common::skopeo;
use common::throttle::Throttle;
use tempfile::TempDir;
use tokio::task::JoinHandle;

const MIB: usize = 1024 * 1024;
/// Pull loops running at once.
const LOOPS: usize = 4;
/// How long the bucket is out of reach.
const OUTAGE: Duration = Duration::from_secs(60);
/// Each replica's `shutdown_grace`.
const GRACE: &str = "20s";

/// The images released so far, newest last.
type Released = Arc<Mutex<Vec<(String, BuiltImage)>>>;

/// Pull loops through the front until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<JoinHandle<usize>>,
}

impl Load {
    /// [`LOOPS`] loops through `front`, each pulling the newest released
    /// image as soon as it appears, otherwise the released ones in turn.
    fn start(front: &str, released: &Released, out: &Path) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..LOOPS)
            .map(|i| {
                let (front, released) = (front.to_string(), Arc::clone(released));
                let (stop, out) = (Arc::clone(&stop), out.join(format!("loop-{i}")));
                tokio::spawn(async move {
                    std::fs::create_dir_all(&out).unwrap();
                    let (mut pulls, mut seen) = (0, 0);
                    while !stop.load(Ordering::SeqCst) {
                        let (name, image) = {
                            let released = released.lock().unwrap();
                            let at = match released.len() > seen {
                                true => released.len() - 1,
                                false => (i + pulls) % released.len(),
                            };
                            seen = released.len();
                            released[at].clone()
                        };
                        let dir = out.join(pulls.to_string());
                        skopeo::pull_and_check(&front, &name, &image, &dir, false).await;
                        let _ = std::fs::remove_dir_all(&dir);
                        pulls += 1;
                    }
                    pulls
                })
            })
            .collect();
        Load { stop, loops }
    }

    /// Stops the loops once their pulls in progress end; fails naming
    /// `during` if any pull failed.
    async fn finish(self, during: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for pulls in self.loops {
            let pulls = pulls
                .await
                .unwrap_or_else(|e| panic!("a pull failed during {during}: {e}"));
            assert!(pulls > 0, "every loop pulled during {during}");
        }
    }
}

/// Three replicas as child processes that can be signalled and started
/// again on the same ports.
struct Replicas {
    names: Vec<String>,
    setups: Vec<Setup>,
    running: Vec<Option<Process>>,
    data: Vec<PathBuf>,
}

impl Replicas {
    /// Writes each replica's config (peers, secret, the bucket at
    /// `bucket_endpoint`) and starts them.
    fn start(work: &Path, front: &Throttle, garage: &Garage, bucket_endpoint: &str) -> Replicas {
        let names: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", common::free_port()))
            .collect();
        let peers = names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut setups = Vec::new();
        let mut data = Vec::new();
        for me in &names {
            let dir = work.join(me.replace(':', "_"));
            std::fs::create_dir_all(&dir).unwrap();
            let secret = dir.join("cluster-secret");
            std::fs::write(&secret, "replicas-of-one-test").unwrap();
            // Uploads retried within a second once the store answers again.
            let bucket =
                garage.config_section(&dir, bucket_endpoint, "timeout = \"5s\"\ncatch_up = \"1s\"");
            let cluster = format!(
                "[cluster]\nlisten = {me:?}\npeers = [{peers}]\nsecret_file = {secret:?}\n{bucket}"
            );
            let settings = format!("shutdown_grace = {GRACE:?}");
            let setup = Setup::write(&dir, &front.url(), &settings, &cluster)
                .lifetime(Duration::from_secs(600));
            setups.push(setup);
            data.push(dir.join("data"));
        }
        let running = setups.iter().map(|s| Some(s.start())).collect();
        Replicas {
            names,
            setups,
            running,
            data,
        }
    }

    fn api_hosts(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|p| p.as_ref().expect("running").api.clone())
            .collect()
    }

    fn process(&self, at: usize) -> &Process {
        self.running[at].as_ref().expect("running")
    }

    /// SIGTERM to replica `at`; it exits 0 within its grace period.
    fn terminate(&mut self, at: usize) {
        let mut process = self.running[at].take().expect("running");
        process.signal("TERM");
        let status = process.wait(Duration::from_secs(30));
        assert!(
            status.success(),
            "replica {at} exits 0 on SIGTERM: {status}"
        );
    }

    /// SIGKILL to replica `at`.
    fn kill(&mut self, at: usize) {
        self.running[at].take().expect("running").kill_lasti();
    }

    /// Starts replica `at` again on an empty disk, as a new pod.
    fn start_fresh(&mut self, at: usize) {
        let _ = std::fs::remove_dir_all(&self.data[at]);
        self.running[at] = Some(self.setups[at].start());
    }
}

/// Builds the image `library/<name>:v1` (two layers) in `work` and pushes
/// it to the registry.
async fn image(registry: &Registry, work: &Path, name: &str, seed: u64) -> (Layout, BuiltImage) {
    let spec = ImageSpec::linux_amd64(seed, &[MIB + seed as usize, 3 * MIB]);
    skopeo::push_image(&registry.host(), work, name, &spec).await
}

/// An image whose big layer is owned by `owner` among `names`: built with
/// one seed after another until one is, then pushed.
async fn image_owned_by(
    registry: &Registry,
    work: &Path,
    name: &str,
    names: &[String],
    owner: &str,
) -> BuiltImage {
    for seed in 1000.. {
        let spec = ImageSpec::linux_amd64(seed, &[MIB, 8 * MIB]);
        let dir = work.join(format!("{name}-candidate-{seed}"));
        let (layout, built) = Layout::single(&dir, &spec, "v1");
        let big = Digest::parse(&built.layer_digests[1]).unwrap();
        if rendezvous::owner(names, &big) == Some(owner) {
            let dest = format!("{}/library/{name}:v1", registry.host());
            skopeo::push_layout(&layout.dir, &layout.tag, &dest, false)
                .await
                .unwrap();
            return built;
        }
    }
    unreachable!()
}

/// Fails unless every blob of `images` was fetched from the registry
/// exactly once, save those in `except` (at most `except_at_most` each).
fn one_get_per_blob(
    registry: &Registry,
    images: &[(String, BuiltImage)],
    except: &HashMap<String, usize>,
) {
    for (name, image) in images {
        for digest in image.blob_digests() {
            let gets = registry.settled_blob_gets(&digest, 1);
            match except.get(&digest) {
                Some(most) => assert!(
                    (1..=*most).contains(&gets),
                    "{name}: {digest} fetched {gets} times (at most {most})"
                ),
                None => assert_eq!(gets, 1, "{name}: one registry GET of {digest}"),
            }
        }
    }
}

/// Waits (up to `within`) until every blob of `images` is in the bucket.
async fn all_in_bucket(garage: &Garage, images: &[(String, BuiltImage)], within: Duration) {
    let deadline = Instant::now() + within;
    for (name, image) in images {
        for digest in image.blob_digests() {
            while garage.status("HEAD", &blob_key(&digest), None) != 200 {
                assert!(
                    Instant::now() < deadline,
                    "{name}: {digest} never reached the bucket"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_a_killed_owner_and_a_bucket_outage_fail_no_pull() {
    let registry = Registry::start();
    let work = TempDir::new().unwrap();
    // 4 MiB/s per response: a cold layer takes about a second.
    let throttle = Throttle::start(&registry.host(), "4m");
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let bucket_switch = Arc::new(AtomicU8::new(Mode::Open as u8));
    tokio::spawn(relay(
        listener,
        garage.s3.port(),
        Arc::clone(&bucket_switch),
    ));
    let endpoint = format!("http://127.0.0.1:{relay_port}");
    let mut replicas = Replicas::start(work.path(), &throttle, &garage, &endpoint);
    let front = Front::start(&replicas.api_hosts()).await;
    let released: Released = Arc::default();
    let release = |name: &str, image: BuiltImage| {
        released.lock().unwrap().push((name.to_string(), image));
    };
    let pulls = work.path().join("pulls");

    // A rolling restart: each replica in turn, while the loops pull the
    // image released just before (cold) and the older ones.
    let mut images = Vec::new();
    for i in 0..4 {
        let name = format!("rolled-{i}");
        images.push((
            name.clone(),
            image(&registry, work.path(), &name, i).await.1,
        ));
    }
    release(&images[0].0, images[0].1.clone());
    let load = Load::start(&front.host(), &released, &pulls);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for at in 0..3 {
        release(&images[at + 1].0, images[at + 1].1.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let host = replicas.process(at).api.clone();
        front.set_ready(&host, false);
        replicas.terminate(at);
        replicas.start_fresh(at);
        front.set_ready(&host, true);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    load.finish("the rolling restart").await;
    one_get_per_blob(&registry, &images, &HashMap::new());
    all_in_bucket(&garage, &images, Duration::from_secs(30)).await;

    // An owner killed in the middle of a fill for the others. It serves
    // no client itself (the front has taken it out), so the pulls go on
    // through the other two, which asked it for the big layer.
    let victim = 0;
    let victim_host = replicas.process(victim).api.clone();
    front.set_ready(&victim_host, false);
    let name = "killed-owner";
    let owned = image_owned_by(
        &registry,
        work.path(),
        name,
        &replicas.names,
        &replicas.names[victim],
    )
    .await;
    let load = Load::start(&front.host(), &released, &pulls);
    release(name, owned.clone());
    let admin = replicas.process(victim).admin.clone();
    let filling = http::metric_reaches(&admin, "lasti_fetches_in_flight", &[], 1).await;
    assert!(filling >= 1, "the owner fetches for the others");
    // Its layers are asked for at once; the big one takes two seconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    replicas.kill(victim);
    tokio::time::sleep(Duration::from_secs(2)).await;
    replicas.start_fresh(victim);
    front.set_ready(&victim_host, true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish("the kill of an owner").await;
    // What the owner was fetching: its GET, then at most one resume by
    // each asker from where it was (the second in rank serves the third).
    let killed: HashMap<String, usize> = owned
        .blob_digests()
        .into_iter()
        .filter(|d| {
            let digest = Digest::parse(d).unwrap();
            rendezvous::owner(&replicas.names, &digest) == Some(&replicas.names[victim])
        })
        .map(|d| (d, 3))
        .collect();
    let all: Vec<_> = released.lock().unwrap().clone();
    one_get_per_blob(&registry, &all, &killed);
    all_in_bucket(&garage, &all, Duration::from_secs(30)).await;

    // The bucket out of reach for a minute (open connections stall too):
    // pulls, cold ones included, go on; what is owed waits, and reaches
    // the bucket once it answers again.
    bucket_switch.store(Mode::Hung as u8, Ordering::SeqCst);
    let load = Load::start(&front.host(), &released, &pulls);
    let outage = Instant::now();
    let mut cold = Vec::new();
    for i in 0..3 {
        let name = format!("outage-{i}");
        let built = image(&registry, work.path(), &name, 100 + i).await.1;
        cold.push((name.clone(), built.clone()));
        release(&name, built);
        tokio::time::sleep(OUTAGE / 4).await;
    }
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    load.finish("the bucket outage").await;
    for (name, image) in &cold {
        for digest in image.blob_digests() {
            let key = blob_key(&digest);
            assert_ne!(garage.status("HEAD", &key, None), 200, "{name} waited");
        }
    }
    bucket_switch.store(Mode::Open as u8, Ordering::SeqCst);
    let all: Vec<_> = released.lock().unwrap().clone();
    one_get_per_blob(&registry, &all, &killed);
    all_in_bucket(&garage, &cold, Duration::from_secs(60)).await;
}
