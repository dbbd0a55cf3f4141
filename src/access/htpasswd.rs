//! An htpasswd file of bcrypt hashes (`htpasswd -B`), as distribution uses.
//! Other hash kinds (MD5, SHA1, crypt) are refused when the file is read:
//! they are too weak to keep.

use std::collections::HashMap;
use std::path::Path;

/// Users and their bcrypt hashes.
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl Htpasswd {
    /// Reads the file; every line is `user:$2y$...`.
    pub fn load(path: &Path) -> Result<Htpasswd, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read htpasswd_file {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("{}:{}: not user:hash", path.display(), number + 1))?;
            if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
                return Err(format!(
                    "{}:{}: only bcrypt hashes (htpasswd -B) are accepted",
                    path.display(),
                    number + 1
                ));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        Ok(Htpasswd { users })
    }

    /// Checks a password off the async threads (bcrypt is slow on purpose).
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user).cloned() else {
            return false;
        };
        let password = password.to_string();
        tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bcrypt_lines_verify_and_weak_hashes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let hash = bcrypt::hash("pw", 4).unwrap();
        std::fs::write(&file, format!("# users\nalice:{hash}\n")).unwrap();
        let h = Htpasswd::load(&file).unwrap();
        assert!(h.verify("alice", "pw").await);
        assert!(!h.verify("alice", "wrong").await);
        assert!(!h.verify("bob", "pw").await);
        std::fs::write(&file, "alice:$apr1$abc$def\n").unwrap();
        assert!(Htpasswd::load(&file).is_err());
    }
}
