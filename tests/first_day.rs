//! What a newcomer meets on the first day: mistakes (a data directory in
//! use, a port taken) answered with one clear line and a non-zero exit,
//! `check-config` output that is a config file, and an unreachable
//! upstream that shows up in the log as a warning.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::process::Setup;
use tempfile::TempDir;

/// Nothing listens here: an upstream that is never asked, or unreachable.
const NO_UPSTREAM: &str = "http://127.0.0.1:9";

/// Runs `lasti ARGS` to completion (killed after 30 s), with a backtrace
/// asked for, as many shells have it.
fn lasti(args: &[&str]) -> Output {
    Command::new("/usr/bin/timeout")
        .args(["--signal=KILL", "30s", env!("CARGO_BIN_EXE_lasti")])
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("LASTI_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run lasti")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error a failed start printed: one short chain, once, no backtrace.
fn assert_one_clear_error(out: &Output) -> String {
    let text = stderr(out);
    assert!(!out.status.success(), "exited 0: {text}");
    assert_ne!(out.status.code(), Some(137), "killed, not exited: {text}");
    assert!(!text.contains("Caused by"), "a chain printed twice: {text}");
    assert!(!text.contains("Backtrace"), "a backtrace: {text}");
    assert!(!text.contains("Some("), "a Debug dump: {text}");
    assert!(!text.contains("panicked"), "a panic: {text}");
    let errors: Vec<_> = text.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {text}");
    text
}

fn loopback_ports() -> (String, String) {
    let (a, b) = (common::free_port(), common::free_port());
    (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"))
}

#[test]
fn a_second_lasti_on_a_data_dir_in_use_leaves_it_alone_and_says_so() {
    let work = TempDir::new().unwrap();
    let setup = Setup::write(work.path(), NO_UPSTREAM, "", "");
    let _first = setup.start();
    let fill = work.path().join("data/tmp/in-progress.part");
    std::fs::write(&fill, b"half a layer").unwrap();

    let (api, admin) = loopback_ports();
    let config = work.path().join("lasti.toml");
    let out = lasti(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &api,
        "--admin-listen",
        &admin,
    ]);

    assert!(fill.exists(), "the running lasti's fill was deleted");
    let text = assert_one_clear_error(&out);
    let dir = work.path().join("data");
    assert!(
        text.contains(&dir.display().to_string()),
        "names the directory: {text}"
    );
    assert!(
        text.contains("another lasti process"),
        "says who holds it: {text}"
    );
}

#[test]
fn a_taken_port_names_the_one_address_that_failed() {
    let work = TempDir::new().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let (api, _) = loopback_ports();
    let data = work.path().join("data");
    let out = lasti(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--upstream",
        &format!("docker.io={NO_UPSTREAM}"),
        "--listen",
        &api,
        "--admin-listen",
        &taken,
    ]);
    let text = assert_one_clear_error(&out);
    assert!(text.contains(&taken), "names {taken}: {text}");
    assert!(!text.contains(&api), "names only the failed one: {text}");
    assert!(text.contains("admin"), "says which listener: {text}");
}

#[test]
fn a_bad_config_file_is_one_line_with_its_cause_once() {
    let work = TempDir::new().unwrap();
    let path = work.path().join("lasti.toml");
    std::fs::write(&path, "lisen = \"0.0.0.0:1\"\n").unwrap();
    let out = lasti(&["--config", path.to_str().unwrap(), "check-config"]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("Caused by"), "{text}");
    assert!(!text.contains("Backtrace"), "{text}");
    assert_eq!(
        text.matches("unknown field").count(),
        1,
        "cause printed once: {text}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");

    let missing = work.path().join("missing.toml");
    let out = lasti(&["--config", missing.to_str().unwrap(), "check-config"]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert_eq!(
        text.matches("No such file").count(),
        1,
        "cause printed once: {text}"
    );
}

/// Waits (at most 10 s) until `path` holds `needle`.
fn wait_for_text(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never logged {needle:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lasti` under `timeout`, killed after 30 s.
fn timeout_lasti() -> Command {
    let mut command = Command::new("/usr/bin/timeout");
    command.args(["--signal=KILL", "30s", env!("CARGO_BIN_EXE_lasti")]);
    command
}

/// Starts lasti through `wrapper` on free loopback ports, a data directory
/// in `work` and an unreachable upstream, with `args` after those and
/// `RUST_LOG` as given (unset for `None`). Returns the child, its log (its
/// standard error) and the API and admin addresses.
fn serve_logged(
    wrapper: Command,
    work: &TempDir,
    args: &[&str],
    rust_log: Option<&str>,
) -> (std::process::Child, PathBuf, String, String) {
    serve_logged_from(wrapper, work, NO_UPSTREAM, args, rust_log)
}

/// [`serve_logged`] with Docker Hub's place taken by `upstream`.
fn serve_logged_from(
    mut wrapper: Command,
    work: &TempDir,
    upstream: &str,
    args: &[&str],
    rust_log: Option<&str>,
) -> (std::process::Child, PathBuf, String, String) {
    let (api, admin) = loopback_ports();
    let log = work.path().join("stderr");
    wrapper
        .args(["--data-dir", work.path().join("data").to_str().unwrap()])
        .args(["--upstream", &format!("docker.io={upstream}")])
        .args(["--listen", &api, "--admin-listen", &admin])
        .args(args)
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        wrapper.env("RUST_LOG", filter);
    }
    let child = wrapper
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log, api, admin)
}

/// Waits until lasti at `api` answers `/v2/`.
fn wait_serving(api: &str) {
    let addr = api.parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while common::http_get_status(addr, "/v2/", None).is_err() {
        assert!(std::time::Instant::now() < deadline, "lasti did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_start_up_line_shows_plain_addresses() {
    let work = TempDir::new().unwrap();
    let (mut child, log, api, admin) = serve_logged(timeout_lasti(), &work, &[], None);
    let text = wait_for_text(&log, "lasti listening");
    common::end_wrapped(&mut child);
    let line = text
        .lines()
        .find(|l| l.contains("lasti listening"))
        .unwrap();
    assert!(!line.contains("Some("), "{line}");
    assert!(line.contains(&format!("addr={api}")), "{line}");
    assert!(line.contains(&format!("admin={admin}")), "{line}");
}

#[test]
fn check_config_prints_a_config_file_that_reads_back_the_same() {
    let work = TempDir::new().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/lasti.toml");
    let first = lasti(&["--config", example, "check-config"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let printed = String::from_utf8(first.stdout).unwrap();
    for wanted in ["max_size = \"50 GiB\"", "tag_ttl = \"10m\"", "[[upstream]]"] {
        assert!(printed.contains(wanted), "no {wanted:?}:\n{printed}");
    }
    for unwanted in ["Config {", "Some(", "53.7 GB"] {
        assert!(!printed.contains(unwanted), "{unwanted:?}:\n{printed}");
    }

    let path = work.path().join("printed.toml");
    std::fs::write(&path, &printed).unwrap();
    let second = lasti(&["--config", path.to_str().unwrap(), "check-config"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(String::from_utf8(second.stdout).unwrap(), printed);
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let work = TempDir::new().unwrap();
    // Debian's htpasswd writes MD5 ($apr1$) hashes unless told -B.
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, "alice:$apr1$Sx3eFvJw$S8lrY6x9J5S0e4XzVt1mH/\n").unwrap();
    let not_a_key = work.path().join("tls.key");
    std::fs::write(&not_a_key, "not a key\n").unwrap();
    let cases = [
        (
            format!("[access]\nmode = \"authenticated\"\nhtpasswd_file = {htpasswd:?}\n"),
            "only bcrypt hashes (htpasswd -B)",
        ),
        (
            format!("[tls]\ncert_file = {not_a_key:?}\nkey_file = {not_a_key:?}\n"),
            "holds no certificate",
        ),
        (
            format!(
                "[[upstream]]\nname = \"x\"\nurl = \"https://x.example\"\nca_file = {:?}\n",
                work.path().join("missing-ca.pem")
            ),
            "missing-ca.pem",
        ),
    ];
    for (config, said) in cases {
        let path = work.path().join("lasti.toml");
        std::fs::write(&path, &config).unwrap();
        let checked = lasti(&["--config", path.to_str().unwrap(), "check-config"]);
        assert!(!checked.status.success(), "check-config passed:\n{config}");
        assert!(
            stderr(&checked).contains(said),
            "{config}: {}",
            stderr(&checked)
        );
        let data = work.path().join("data");
        let served = lasti(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(!served.status.success(), "serve started:\n{config}");
        assert!(
            stderr(&served).contains(said),
            "{config}: {}",
            stderr(&served)
        );
    }
}

#[test]
fn check_config_into_a_closed_pipe_exits_cleanly() {
    // `lasti check-config | head -1`: the reader is gone before lasti writes.
    let mut child = Command::new("/usr/bin/timeout")
        .args(["--signal=KILL", "30s", env!("CARGO_BIN_EXE_lasti")])
        .arg("check-config")
        .env_remove("LASTI_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let text = stderr(&out);
    assert!(out.status.success(), "{:?}: {text}", out.status);
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn an_unreachable_upstream_is_a_warning_with_its_name_and_reason() {
    let work = TempDir::new().unwrap();
    let (mut child, log, api, _) = serve_logged(timeout_lasti(), &work, &[], Some("warn"));
    wait_serving(&api);
    let addr = api.parse().unwrap();
    let status = common::http_get_status(addr, "/v2/library/alpine/manifests/3.20", None);
    assert_eq!(status.unwrap(), 502);
    // What the 502 body says: the upstream's name and the reason.
    let text = wait_for_text(&log, "upstream docker.io unavailable");
    common::end_wrapped(&mut child);
    let line = text
        .lines()
        .find(|l| l.contains("upstream docker.io unavailable"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("upstream=\"docker.io\""), "{line}");
    assert!(line.contains("Connection refused"), "the reason: {line}");
    assert!(
        line.contains("path=\"/v2/library/alpine/manifests/3.20\""),
        "the request: {line}"
    );
}

#[test]
fn a_low_open_file_limit_cuts_the_connections_served_and_says_so() {
    let work = TempDir::new().unwrap();
    // 700 descriptors: a quarter for open blobs, a sixteenth for blobs kept
    // open, 256 kept aside: room for 226.
    let script = format!(
        "ulimit -n 700 && exec /usr/bin/timeout --signal=KILL 30s {} \"$@\"",
        env!("CARGO_BIN_EXE_lasti")
    );
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", &script, "lasti"]);
    let (mut child, log, _, _) = serve_logged(sh, &work, &[], None);
    let text = wait_for_text(&log, "access.max_connections");
    common::end_wrapped(&mut child);
    let line = text
        .lines()
        .find(|l| l.contains("access.max_connections"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("configured=10000"), "{line}");
    assert!(line.contains("serving=226"), "{line}");
}

/// Starts lasti with `log_args`, asks for `/v2/` and a manifest its
/// unreachable upstream cannot give, and returns the log once both
/// requests are in it (the second's access line holds `needle`).
fn access_log(log_args: &[&str], needle: &str) -> String {
    let work = TempDir::new().unwrap();
    let (mut child, log, api, _) = serve_logged(timeout_lasti(), &work, log_args, None);
    wait_serving(&api);
    let addr = api.parse().unwrap();
    let status = common::http_get_status(addr, "/v2/library/alpine/manifests/3.20", None);
    assert_eq!(status.unwrap(), 502);
    let text = wait_for_text(&log, needle);
    common::end_wrapped(&mut child);
    text
}

#[test]
fn every_request_is_one_access_line_with_its_outcome() {
    let text = access_log(&[], "manifests/3.20 status=");
    let line = text
        .lines()
        .find(|l| l.contains("lasti::access") && l.contains("path=/v2/ "))
        .unwrap_or_else(|| panic!("no access line for /v2/: {text}"));
    assert!(line.contains(" INFO lasti::access: method=GET path=/v2/ status=200 bytes=2 listener=api outcome=- source=- error=- complete=true ms="), "{line}");
    let line = text
        .lines()
        .find(|l| l.contains("lasti::access") && l.contains("manifests/3.20"))
        .unwrap();
    assert!(line.contains(" status=502 "), "{line}");
    assert!(!line.contains(" error=- "), "the error kind: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_says_where_the_bytes_came_from() {
    let fake = common::fake_upstream::FakeUpstream::start().await;
    let blob = common::fake_upstream::random_blob(100 * 1024);
    let digest = fake.put_blob(blob.clone());
    let work = TempDir::new().unwrap();
    let (mut child, log, api, _) =
        serve_logged_from(timeout_lasti(), &work, &fake.url(), &[], None);
    let serving = api.clone();
    tokio::task::spawn_blocking(move || wait_serving(&serving))
        .await
        .unwrap();
    let url = format!(
        "http://{api}{}",
        common::fake_upstream::blob_path("team/app", &digest)
    );
    // The miss, then GETs until one is a hit (one that comes while the
    // fill is being stored joins it instead).
    let hit = " outcome=hit ";
    for _ in 0..20 {
        let reply = common::http::get(&url, &[]).await;
        assert!(reply.status == 200 && reply.body == blob);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(hit)
        {
            break;
        }
    }
    let text = wait_for_text(&log, hit);
    common::end_wrapped(&mut child);
    let lines: Vec<_> = text
        .lines()
        .filter(|l| l.contains("lasti::access") && l.contains("/blobs/"))
        .collect();
    assert!(
        lines[0].contains(" listener=api outcome=miss source=upstream "),
        "{}",
        lines[0]
    );
    let hit = lines.iter().find(|l| l.contains(hit)).unwrap();
    assert!(
        hit.contains(" listener=api outcome=hit source=cache "),
        "{hit}"
    );
}

#[test]
fn json_access_lines_are_objects_a_collector_can_read() {
    let text = access_log(&["--log-format", "json"], r#"manifests/3.20","status""#);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "lasti::access")
        .collect();
    let base = access
        .iter()
        .find(|l| l["path"] == "/v2/")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(base["method"], "GET");
    assert_eq!(base["status"], 200);
    assert_eq!(base["bytes"], 2);
    assert_eq!(base["complete"], true);
    assert!(base["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{base}");
    assert_eq!(base["level"], "INFO");
    let failed = access
        .iter()
        .find(|l| l["path"] == "/v2/library/alpine/manifests/3.20")
        .unwrap();
    assert_eq!(failed["status"], 502);
    assert!(failed["bytes"].as_u64().is_some_and(|b| b > 0), "{failed}");
    assert_ne!(failed["error"], "-");
}
