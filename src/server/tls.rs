//! TLS for clients: rustls from PEM files, HTTP/2 and HTTP/1.1 by ALPN, and
//! the certificate reloaded when its file changes (cert-manager and
//! OpenShift's service CA rotate them in place). A background task watches
//! the file on the blocking pool, so accepting a connection never touches
//! the disk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// How often the certificate file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// An acceptor whose certificate follows its files.
pub struct ReloadingAcceptor {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

struct State {
    acceptor: TlsAcceptor,
    modified: Option<SystemTime>,
}

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingAcceptor")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl ReloadingAcceptor {
    /// Loads the certificate and key and starts watching the certificate
    /// file; fails when they do not make a valid pair.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<ReloadingAcceptor>, String> {
        let acceptor = load(&cert, &key)?;
        let modified = modified(&cert);
        let reloading = Arc::new(ReloadingAcceptor {
            cert,
            key,
            state: Mutex::new(State { acceptor, modified }),
        });
        tokio::spawn(watch(Arc::downgrade(&reloading)));
        Ok(reloading)
    }

    /// Loads the pair as [`ReloadingAcceptor::new`] does, and drops it:
    /// `check-config` fails on what `serve` would fail on.
    pub fn check(cert: &PathBuf, key: &PathBuf) -> Result<(), String> {
        load(cert, key).map(drop)
    }

    /// The current acceptor.
    pub fn acceptor(&self) -> TlsAcceptor {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.acceptor.clone()
    }

    /// Reloads the pair if the certificate file changed. A broken new pair
    /// is logged and the previous one kept. Blocks.
    fn reload_if_changed(&self) {
        let now = modified(&self.cert);
        let before = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .modified;
        if now == before {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(acceptor) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                *state = State {
                    acceptor,
                    modified: now,
                };
            }
            // Tried again at the next check: the key may be written after
            // the certificate.
            Err(e) => {
                tracing::error!(error = %e, "new TLS certificate rejected; keeping the old one")
            }
        }
    }
}

/// Looks at the certificate file every [`RELOAD_CHECK`] until the acceptor
/// is dropped.
async fn watch(acceptor: Weak<ReloadingAcceptor>) {
    loop {
        tokio::time::sleep(RELOAD_CHECK).await;
        let Some(acceptor) = acceptor.upgrade() else {
            return;
        };
        if tokio::task::spawn_blocking(move || acceptor.reload_if_changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("bad key PEM in {}: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
