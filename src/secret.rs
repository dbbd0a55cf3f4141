//! A string that must never reach a log, a metric label or an error
//! message, and where such a string comes from (a [`Password`]: fixed, or a
//! file watched for rotation).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// How often a password file is checked for a new value. A pod's service
/// account token is replaced well before the old one expires, so a few
/// seconds' delay is harmless.
pub const PASSWORD_FILE_POLL: Duration = Duration::from_secs(5);

/// A password or token. `Debug` and `Display` print `[redacted]`; the value is
/// only reachable through [`Secret::expose`], so every use is greppable.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a password comes from.
#[derive(Debug)]
pub enum Password {
    /// No password.
    None,
    /// Given once (inline or from the environment).
    Fixed(Secret),
    /// Read from a file, and read again whenever the file changes: a pod's
    /// service account token is rotated in place.
    File(SecretFile),
}

impl Password {
    /// A password read from `path` and watched every [`PASSWORD_FILE_POLL`].
    /// Reads the file once, now: call it off the async threads.
    pub fn file(path: PathBuf) -> Password {
        Password::File(SecretFile::watch(path, PASSWORD_FILE_POLL))
    }

    /// The current value; never touches the disk, so it is safe on an
    /// async thread on every request.
    pub fn current(&self) -> Option<Secret> {
        match self {
            Password::None => None,
            Password::Fixed(secret) => Some(secret.clone()),
            Password::File(file) => file.current(),
        }
    }
}

/// A secret kept in a file. A task checks the file's modification time and
/// size on the blocking pool every interval and reads it again when they
/// change; readers only take the last value read. The task ends when the
/// `SecretFile` is dropped.
#[derive(Debug)]
pub struct SecretFile {
    value: Arc<RwLock<Option<Secret>>>,
}

/// What identifies a version of the file.
type Version = Option<(SystemTime, u64)>;

impl SecretFile {
    /// Reads `path` now and watches it every `interval` (when a tokio
    /// runtime is running; without one the first value stays).
    pub fn watch(path: PathBuf, interval: Duration) -> SecretFile {
        let (version, value) = read_secret(&path, None, true);
        let value = Arc::new(RwLock::new(value));
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(poll(path, interval, version, Arc::downgrade(&value)));
            }
            Err(_) => {
                tracing::warn!(file = %path.display(), "no runtime: the password file is read only once")
            }
        }
        SecretFile { value }
    }

    /// The last value read (kept when a later read fails).
    pub fn current(&self) -> Option<Secret> {
        self.value.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn poll(
    path: PathBuf,
    interval: Duration,
    mut version: Version,
    value: Weak<RwLock<Option<Secret>>>,
) {
    loop {
        tokio::time::sleep(interval).await;
        if value.strong_count() == 0 {
            return;
        }
        let path = path.clone();
        let Ok((seen, read)) =
            tokio::task::spawn_blocking(move || read_secret(&path, version, false)).await
        else {
            continue;
        };
        version = seen;
        if let (Some(read), Some(value)) = (read, value.upgrade()) {
            *value.write().unwrap_or_else(|p| p.into_inner()) = Some(read);
        }
    }
}

/// The file's version and, when it differs from `seen`, its value (`None`
/// when unchanged or unreadable). A file that cannot be read is logged on
/// the `first` read and when it becomes unreadable, not at every poll
/// while it stays so (an optional Secret not created yet).
fn read_secret(path: &Path, seen: Version, first: bool) -> (Version, Option<Secret>) {
    let version = std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())));
    if version == seen && (version.is_some() || !first) {
        return (seen, None);
    }
    match std::fs::read_to_string(path) {
        Ok(text) => (version, Some(Secret::new(text.trim_end().to_string()))),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read a password file");
            (version, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    /// Waits (at most 10 s) until `file` gives `want`.
    async fn becomes(file: &SecretFile, want: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while file.current().as_ref().map(Secret::expose) != Some(want) {
            assert!(tokio::time::Instant::now() < deadline, "never saw {want:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_password_file_that_appears_later_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = SecretFile::watch(path.clone(), Duration::from_millis(20));
        assert!(file.current().is_none());
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::fs::write(&path, "late\n").unwrap();
        becomes(&file, "late").await;
    }

    #[tokio::test]
    async fn a_password_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let file = SecretFile::watch(path.clone(), Duration::from_millis(20));
        assert_eq!(file.current().unwrap().expose(), "one");

        // A rotated token is written beside it and renamed over it, as the
        // kubelet does; its time is moved on so a coarse clock cannot hide it.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "two").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        becomes(&file, "two").await;

        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            file.current().unwrap().expose(),
            "two",
            "keeps the last value"
        );
    }

    #[tokio::test]
    async fn reading_the_current_value_does_not_touch_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one").unwrap();
        let password = Password::File(SecretFile::watch(path.clone(), Duration::from_secs(3600)));
        std::fs::write(&path, "two").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            password.current().unwrap().expose(),
            "one",
            "the value read by the watcher, not the file now"
        );
    }
}
