//! Delegated login: a client's Basic credentials are valid when the Rahti
//! (OpenShift) registry's token endpoint accepts them, so whoever can
//! `docker login` to Rahti can pull through lasti.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, StatusCode};
use url::Url;

use crate::config::UpstreamConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::upstream::auth::{Auth, Credentials, Password};
use crate::upstream::client::{self, HttpClient};
use crate::upstream::Caller;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The registry whose login decides.
pub struct Delegate {
    url: Url,
    client: HttpClient,
    metrics: Arc<Metrics>,
}

impl Delegate {
    /// A delegate for the registry at `url`.
    pub fn new(
        url: Url,
        ca_file: Option<PathBuf>,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Delegate, String> {
        let mut config = UpstreamConfig::new("delegate", url.clone());
        config.ca_file = ca_file;
        let client = client::build(&config).map_err(|e| format!("access.delegate_url: {e}"))?;
        Ok(Delegate {
            url,
            client,
            metrics,
        })
    }

    /// Asks the registry: its `/v2/` challenge, then its token endpoint (or
    /// `/v2/` itself for a Basic challenge) with the client's credentials.
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool> {
        let base = self
            .url
            .join("v2/")
            .map_err(|e| Error::storage("delegate url", e))?;
        let response = self.get(&base, None).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            // A registry that asks nothing cannot vouch for anyone.
            return Ok(false);
        }
        let challenges: Vec<String> = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let challenges: Vec<&str> = challenges.iter().map(String::as_str).collect();
        let auth = Auth::new(
            Credentials {
                registry: "delegate".into(),
                base: self.url.clone(),
                username: Some(user.to_string()),
                password: Password::Fixed(Secret::new(password.to_string())),
                realm_hosts: Vec::new(),
                timeout: TIMEOUT,
            },
            Arc::clone(&self.metrics),
        );
        match auth
            .challenge(&self.client, &Caller::lasti(), &challenges, "")
            .await
        {
            Ok(Some(authorization)) if authorization.as_bytes().starts_with(b"Basic ") => {
                let answer = self.get(&base, Some(authorization)).await?;
                Ok(answer.status().is_success())
            }
            Ok(Some(_)) => Ok(true),
            Ok(None) | Err(Error::UpstreamDenied { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn get(
        &self,
        url: &Url,
        authorization: Option<http::HeaderValue>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let mut request = Request::get(url.as_str());
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(crate::body::empty())
            .map_err(|e| Error::storage("delegate request", e))?;
        client::send(&self.client, request, TIMEOUT)
            .await
            .map_err(|e| Error::UpstreamUnavailable {
                upstream: "delegate".into(),
                message: format!("{e:?}"),
            })
    }
}
