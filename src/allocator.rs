//! glibc's allocator, set for a proxy's traffic.
//!
//! A fill receives its blob into buffers that hyper allocates (up to a few
//! hundred KiB each) and frees on other threads once written, hashed and
//! sent. With glibc's defaults the top of the heap is handed back to the
//! kernel as soon as more than twice the largest recent allocation is free,
//! so the next buffers fault in fresh, zeroed pages: measured on a cold
//! 1 GiB miss, about a tenth of lasti's CPU (docs/performance.md). Fixed
//! thresholds keep that memory for reuse instead.
//!
//! What it costs is memory kept after a burst: up to [`TRIM_THRESHOLD`] of
//! free heap at the top of each arena (glibc keeps one arena per thread
//! that allocated at the same time as another, up to eight per core), cut
//! back to [`TOP_PAD`] once it passes that. `malloc_trim` cannot return
//! the top of any arena but the first, so that threshold is what bounds
//! the rest; 8 MiB holds a fill's buffers in flight (a 32 MiB threshold
//! cost the same CPU on a cold miss and kept 15 MiB more after each one,
//! docs/performance.md). A thread of lasti's own hands every other free
//! page back to the kernel each [`RETURN_EVERY`]. Measured in the load
//! tests (64 clients of one cold 1 GiB blob, 1,000 connections of hits and
//! misses, 256 slow fills), peak resident memory rose by under 10 MiB.
//!
//! An operator's own `GLIBC_TUNABLES` for the allocator win: when they name
//! any `glibc.malloc.` tunable, lasti leaves the allocator as they set it.

/// Allocations from this size up are mapped on their own (and unmapped on
/// free) rather than taken from the heap: above hyper's receive buffers and
/// a direct write's aligned buffer, so those are reused.
pub const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Free memory at the top of a heap is returned to the kernel only past
/// this much.
pub const TRIM_THRESHOLD: usize = 8 * 1024 * 1024;

/// What a trimmed heap keeps free at its top (and grows by, beyond what
/// an allocation needs), so that the next fill's first buffers find pages
/// already there.
pub const TOP_PAD: usize = 4 * 1024 * 1024;

/// How often free memory is handed back to the kernel.
pub const RETURN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sets the allocator's thresholds, unless `GLIBC_TUNABLES` already does,
/// and starts the thread that returns free memory. Call it first in
/// `main`, before any other thread starts (`mallopt` is not meant to race
/// with allocations on other threads).
pub fn tune() {
    let operator = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if operator || !set_thresholds() {
        return;
    }
    let returning = std::thread::Builder::new()
        .name("lasti-trim".into())
        .spawn(|| loop {
            std::thread::sleep(RETURN_EVERY);
            return_free_memory();
        });
    if let Err(e) = returning {
        eprintln!("warning: cannot start the thread that returns free memory: {e}");
    }
}

/// Whether every setting was taken.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_thresholds() -> bool {
    let as_int = |bytes: usize| libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes the allocator's parameters; it is called
    // before other threads exist. A refused setting (returns 0) leaves
    // glibc's default, which is correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, as_int(MMAP_THRESHOLD)) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, as_int(TRIM_THRESHOLD)) == 1
            && libc::mallopt(libc::M_TOP_PAD, as_int(TOP_PAD)) == 1
    }
}

/// Hands the free pages of every arena back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_free_memory() {
    // SAFETY: malloc_trim is thread-safe; it takes each arena's lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries (musl) have no such thresholds.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> bool {
    false
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_free_memory() {}
