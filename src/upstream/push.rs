//! The push side of the registry API, for back-filling a target registry:
//! blob existence checks, cross-repository mounts, monolithic and chunked
//! uploads streamed from the cache's files, and manifest `PUT`s.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use url::Url;

use super::{site, Caller, Upstream};
use crate::body::{self, Body, BodyError};
use crate::cache::reader::BlobReader;
use crate::error::{Error, Result};
use crate::oci::{Digest, RepoName};

/// How an upload is cut.
#[derive(Debug, Clone, Copy)]
pub struct UploadPlan {
    /// Blobs up to this size go in one `PUT`.
    pub monolithic_limit: u64,
    /// Size of each `PATCH` otherwise.
    pub chunk_size: u64,
}

fn push_scope(repo: &RepoName) -> String {
    format!("repository:{repo}:pull,push")
}

fn octet_headers(len: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers
}

/// A body that streams `[start, end)` of a file, made anew for each send.
fn file_body(file: &Arc<File>, start: u64, end: u64) -> impl Fn() -> Body + Sync + '_ {
    move || {
        let reader = BlobReader::stored(Arc::clone(file), start, end, None);
        body::stream(
            reader
                .into_stream()
                .map(|r| r.map_err(|e| Box::new(e) as BodyError)),
        )
    }
}

impl Upstream {
    /// Whether the registry already has the blob in `repo`.
    pub async fn blob_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let url = self.api_url(&format!("{repo}/blobs/{digest}"))?;
        let response = self
            .call(
                &Caller::lasti(),
                &Method::HEAD,
                url,
                &HeaderMap::new(),
                &push_scope(repo),
                &body::empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => self
                .expect_success(response, Error::BlobUnknown)
                .await
                .map(|_| false),
        }
    }

    /// Asks the registry to link a blob it holds in `from` into `repo`.
    /// `Ok(true)` when mounted; `Ok(false)` when the registry declined.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<bool> {
        let url = self.api_url(&format!("{repo}/blobs/uploads/?mount={digest}&from={from}"))?;
        let scope = format!("{} repository:{from}:pull", push_scope(repo));
        let response = self
            .call(
                &Caller::lasti(),
                &Method::POST,
                url,
                &octet_headers(0),
                &scope,
                &body::empty,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => Ok(false),
            _ => self
                .expect_success(response, Error::BlobUnknown)
                .await
                .map(|_| false),
        }
    }

    /// Uploads a blob from a cache file: one `PUT` when small, `PATCH`
    /// chunks then a closing `PUT` when large. Never holds more than a read
    /// buffer of it in memory.
    pub async fn upload_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        file: Arc<File>,
        size: u64,
        plan: UploadPlan,
    ) -> Result<()> {
        let scope = push_scope(repo);
        let start = self.api_url(&format!("{repo}/blobs/uploads/"))?;
        let response = self
            .call(
                &Caller::lasti(),
                &Method::POST,
                start,
                &octet_headers(0),
                &scope,
                &body::empty,
            )
            .await?;
        let mut location = self.upload_location(response).await?;
        if size > plan.monolithic_limit {
            let mut offset = 0;
            while offset < size {
                let end = (offset + plan.chunk_size).min(size);
                let mut headers = octet_headers(end - offset);
                let range = HeaderValue::from_str(&format!("{offset}-{}", end - 1)).expect("ascii");
                headers.insert(header::CONTENT_RANGE, range);
                let response = self
                    .call(
                        &Caller::lasti(),
                        &Method::PATCH,
                        location,
                        &headers,
                        &scope,
                        &file_body(&file, offset, end),
                    )
                    .await?;
                location = self.upload_location(response).await?;
                offset = end;
            }
        }
        let mut finish = location;
        finish
            .query_pairs_mut()
            .append_pair("digest", digest.as_str());
        let (len, body_range) = if size > plan.monolithic_limit {
            (0, (size, size))
        } else {
            (size, (0, size))
        };
        let body = file_body(&file, body_range.0, body_range.1);
        let response = self
            .call(
                &Caller::lasti(),
                &Method::PUT,
                finish,
                &octet_headers(len),
                &scope,
                &body,
            )
            .await?;
        self.expect_success(response, Error::BlobUnknown)
            .await
            .map(drop)
    }

    /// Where the upload goes on. A `Location` on another origin is refused:
    /// it would get the image's bytes, and credentials never go there.
    async fn upload_location(
        &self,
        response: http::Response<hyper::body::Incoming>,
    ) -> Result<Url> {
        let response = self.expect_success(response, Error::BlobUnknown).await?;
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.invalid("upload answer without Location".into()))?;
        let base = self.api_url("")?;
        let url = base
            .join(location)
            .map_err(|_| self.invalid("upload Location is not a URL".into()))?;
        if !site::same_origin(&url, &base) {
            // The origin only: the rest of an upload URL may hold a signature.
            return Err(self.invalid(format!(
                "upload Location is on {}, not on the registry's origin {}; refused",
                url.origin().ascii_serialization(),
                base.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the exact bytes.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        bytes: Bytes,
        media_type: &str,
    ) -> Result<()> {
        let url = self.api_url(&format!("{repo}/manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| self.invalid("bad media type".into()))?;
        headers.insert(header::CONTENT_TYPE, content_type);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let body = move || body::full(bytes.clone());
        let response = self
            .call(
                &Caller::lasti(),
                &Method::PUT,
                url,
                &headers,
                &push_scope(repo),
                &body,
            )
            .await?;
        self.expect_success(response, Error::ManifestUnknown)
            .await
            .map(drop)
    }
}
