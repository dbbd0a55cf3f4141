//! lasti tunes glibc's allocator for itself unless the operator already
//! does: with a `glibc.malloc.` tunable in `GLIBC_TUNABLES` it leaves the
//! allocator alone, and so starts no thread of its own to return memory.

mod common;

use common::process::{Process, Setup};
use tempfile::TempDir;

/// The names of a process's threads.
fn thread_names(process: &Process) -> Vec<String> {
    let tasks = format!("/proc/{}/task", process.pid());
    std::fs::read_dir(tasks)
        .expect("lasti's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// Starts lasti with `GLIBC_TUNABLES` set to `tunables`; the names of its threads.
fn threads_with(tunables: &str) -> Vec<String> {
    let work = TempDir::new().unwrap();
    // No request reaches the upstream: lasti only has to start.
    let setup =
        Setup::write(work.path(), "http://127.0.0.1:9", "", "").env("GLIBC_TUNABLES", tunables);
    let process = setup.start();
    thread_names(&process)
}

#[test]
fn lasti_returns_free_memory_on_its_own_defaults() {
    let threads = threads_with("");
    assert!(
        threads.iter().any(|name| name == "lasti-trim"),
        "no lasti-trim thread among {threads:?}"
    );
}

#[test]
fn an_operators_malloc_tunables_are_left_alone() {
    let threads = threads_with("glibc.malloc.trim_threshold=131072");
    assert!(
        !threads.iter().any(|name| name == "lasti-trim"),
        "lasti tuned the allocator over the operator's GLIBC_TUNABLES: {threads:?}"
    );
    // Tunables for other parts of glibc are not the allocator's.
    let threads = threads_with("glibc.pthread.rseq=0");
    assert!(
        threads.iter().any(|name| name == "lasti-trim"),
        "{threads:?}"
    );
}
