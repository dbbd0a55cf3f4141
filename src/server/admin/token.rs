//! The admin token: what a call that changes state (warm, purge)
//! must carry as `Authorization: Bearer <token>`.
//!
//! The token lives in a file (`admin_token_file`, a mounted Secret) that is
//! watched, so rotating the Secret rotates the token without a restart. A
//! missing file locks those calls rather than opening them: the shipped
//! manifests mount an optional Secret, and until the operator creates it
//! nothing on the admin port can change lasti's state. Read-only endpoints
//! (health, metrics, listings) never need it.

use std::path::{Path, PathBuf};

use http::HeaderValue;
use sha2::{Digest as _, Sha256};

use crate::secret::{SecretFile, PASSWORD_FILE_POLL};

/// The shortest token taken: `openssl rand -hex 32` gives 64 characters;
/// a short one is guessable by anyone who reaches the admin port.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin token, as configured.
#[derive(Debug)]
pub struct AdminToken {
    file: Option<(PathBuf, SecretFile)>,
}

/// Why a call that changes state was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured, or its file cannot be used: nobody may.
    Locked(String),
    /// The call carried no token, or another one.
    Unauthorized,
}

impl AdminToken {
    /// The token of `admin_token_file`, read now and watched from then on.
    /// Reads the file: call it off the async threads.
    pub fn new(path: Option<&Path>) -> AdminToken {
        let file = path.map(|p| {
            let watched = SecretFile::watch(p.to_path_buf(), PASSWORD_FILE_POLL);
            (p.to_path_buf(), watched)
        });
        AdminToken { file }
    }

    /// Whether `authorization` carries the current token.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), Refusal> {
        let Some((path, file)) = &self.file else {
            return Err(Refusal::Locked(
                "no admin token is configured: set admin_token_file to a file holding one \
                 (a Secret), and send it as Authorization: Bearer <token>"
                    .into(),
            ));
        };
        let Some(token) = file.current() else {
            return Err(Refusal::Locked(format!(
                "the admin token file {} does not exist or cannot be read",
                path.display()
            )));
        };
        let token = token.expose().trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(Refusal::Locked(format!(
                "the admin token in {} is shorter than {MIN_TOKEN_LEN} characters",
                path.display()
            )));
        }
        let offered = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Compared as hashes: equal-length, and no early exit on the token.
        match offered.is_some_and(|o| hash(o) == hash(token)) {
            true => Ok(()),
            false => Err(Refusal::Unauthorized),
        }
    }
}

/// Refuses a token file that exists but holds a token too short to keep
/// anyone out: `check-config` and `serve` stop on it. A missing file is
/// not an error (the Secret may come later); it only locks the calls.
pub fn check_file(path: &Path) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() < MIN_TOKEN_LEN => Err(format!(
            "admin_token_file {}: the token is shorter than {MIN_TOKEN_LEN} characters \
             (try openssl rand -hex 32)",
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("admin_token_file {}: {e}", path.display())),
    }
}

fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn only_the_token_in_the_file_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        let token = AdminToken::new(Some(&path));
        assert_eq!(token.check(Some(&bearer(TOKEN))), Ok(()));
        for wrong in [
            Some(bearer("0123456789abcdef012")),
            Some(bearer(&format!("{TOKEN}x"))),
            Some(HeaderValue::from_static(
                "Basic MDEyMzQ1Njc4OWFiY2RlZjAxMjM=",
            )),
            Some(HeaderValue::from_static(TOKEN)),
            None,
        ] {
            assert_eq!(
                token.check(wrong.as_ref()),
                Err(Refusal::Unauthorized),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn without_a_usable_token_nobody_may() {
        let none = AdminToken::new(None);
        let refusal = none.check(Some(&bearer(TOKEN))).unwrap_err();
        assert!(matches!(&refusal, Refusal::Locked(m) if m.contains("admin_token_file")));

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let token = AdminToken::new(Some(&missing));
        let refusal = token.check(Some(&bearer(TOKEN))).unwrap_err();
        assert!(matches!(&refusal, Refusal::Locked(m) if m.contains("does not exist")));
        assert_eq!(check_file(&missing), Ok(()), "a Secret may come later");

        let short = dir.path().join("short");
        std::fs::write(&short, "secret").unwrap();
        let token = AdminToken::new(Some(&short));
        let refusal = token.check(Some(&bearer("secret"))).unwrap_err();
        assert!(matches!(&refusal, Refusal::Locked(m) if m.contains("shorter")));
        assert!(check_file(&short).unwrap_err().contains("shorter"));
    }
}
