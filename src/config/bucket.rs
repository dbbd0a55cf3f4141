//! The shared object store (S3: CSC's Allas, Ceph RGW, MinIO, Garage, AWS)
//! that replicas keep verified blobs in, behind their local disks. Off
//! unless `endpoint` and `bucket` are set: one pod needs none of it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::ConfigError;
use crate::secret::Secret;

/// `[bucket]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketConfig {
    /// The S3 endpoint, e.g. `https://a3s.fi` (Allas).
    pub endpoint: Option<Url>,
    /// The bucket; lasti needs read, write and delete on it.
    pub bucket: Option<String>,
    /// The region the endpoint signs for (Allas and Ceph accept any).
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), which Allas, Ceph and
    /// Garage take; `false` for virtual-hosted style (`bucket.endpoint/key`).
    pub path_style: bool,
    /// Prefix of every key lasti writes, so one bucket can hold other data.
    pub prefix: String,
    /// File holding the access key id (a mounted Secret). Without it, the
    /// `AWS_ACCESS_KEY_ID` environment variable.
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key. Without it,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_file: Option<PathBuf>,
    /// Blobs uploaded at once; each holds up to three 8 MiB parts in memory.
    pub max_uploads: usize,
    /// Time allowed for one request to the store until its headers.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often blobs and manifests whose upload failed (or was cut by a
    /// crash) are uploaded again, once the store answers.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
    /// The credentials, read from the files or the environment at start.
    #[serde(skip)]
    pub credentials: Option<(Secret, Secret)>,
}

impl Default for BucketConfig {
    fn default() -> Self {
        BucketConfig {
            endpoint: None,
            bucket: None,
            region: "us-east-1".to_string(),
            path_style: true,
            prefix: String::new(),
            access_key_id_file: None,
            secret_access_key_file: None,
            max_uploads: 2,
            timeout: Duration::from_secs(30),
            catch_up: Duration::from_secs(30),
            credentials: None,
        }
    }
}

impl BucketConfig {
    /// Whether an object store is configured.
    pub fn enabled(&self) -> bool {
        self.endpoint.is_some() && self.bucket.is_some()
    }

    /// Reads the credentials from their files, or from the environment.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let id = read(&self.access_key_id_file, "AWS_ACCESS_KEY_ID")?;
        let secret = read(&self.secret_access_key_file, "AWS_SECRET_ACCESS_KEY")?;
        self.credentials = Some((id, secret));
        Ok(())
    }

    /// The rules the types cannot state.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: &str| Err(ConfigError::Invalid(format!("bucket: {msg}")));
        if self.endpoint.is_some() != self.bucket.is_some() {
            return fail("endpoint and bucket are set together");
        }
        if let Some(endpoint) = &self.endpoint {
            if !matches!(endpoint.scheme(), "http" | "https") {
                return fail("endpoint must be an http or https URL");
            }
        }
        if self.max_uploads == 0 {
            return fail("max_uploads must be at least 1");
        }
        if self.catch_up.is_zero() {
            return fail("catch_up must be above zero");
        }
        if self.prefix.starts_with('/') || self.prefix.contains("..") {
            return fail("prefix must be a relative key prefix");
        }
        Ok(())
    }
}

/// A credential from its file, or else from the environment variable.
fn read(file: &Option<PathBuf>, var: &str) -> Result<Secret, ConfigError> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?,
        None => std::env::var(var).map_err(|_| {
            ConfigError::Invalid(format!(
                "bucket: no credentials: set {var} or the matching *_file setting"
            ))
        })?,
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(ConfigError::Invalid(format!("bucket: {var} is empty")));
    }
    Ok(Secret::new(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_needs_nothing() {
        let mut config = BucketConfig::default();
        assert!(!config.enabled());
        config.validate().unwrap();
        config.resolve_secrets().unwrap();
        assert!(config.credentials.is_none());
    }

    #[test]
    fn endpoint_and_bucket_come_together() {
        let config = BucketConfig {
            endpoint: Some(Url::parse("https://a3s.fi").unwrap()),
            ..BucketConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn credentials_are_read_from_files_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), "AKID\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
        let mut config = BucketConfig {
            endpoint: Some(Url::parse("https://a3s.fi").unwrap()),
            bucket: Some("cache".into()),
            access_key_id_file: Some(dir.path().join("id")),
            secret_access_key_file: Some(dir.path().join("secret")),
            ..BucketConfig::default()
        };
        config.validate().unwrap();
        config.resolve_secrets().unwrap();
        let (id, secret) = config.credentials.as_ref().unwrap();
        assert_eq!((id.expose(), secret.expose()), ("AKID", "s3cr3t"));
        assert!(
            !format!("{config:?}").contains("s3cr3t"),
            "never in a log line"
        );
    }
}
