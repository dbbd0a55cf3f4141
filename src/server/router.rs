//! Parses registry API paths by hand, from the end: a repository name may
//! have any number of components (even ones called `blobs` or `manifests`),
//! but the last two segments always say what is asked for.
//!
//! The router only splits; the pieces are validated by `oci` types before
//! anything uses them, and none of them ever becomes a filesystem path.

/// What a request path asks for. The name is raw: it may still carry an
/// upstream prefix (`ghcr.io/org/app`) and is not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`: not offered by a pull-through cache.
    Catalog,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Raw name.
        name: &'a str,
        /// Raw tag or digest.
        reference: &'a str,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Raw name.
        name: &'a str,
        /// Raw digest.
        digest: &'a str,
    },
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Raw name.
        name: &'a str,
    },
    /// `/v2/<name>/referrers/<digest>` (OCI distribution 1.1).
    Referrers {
        /// Raw name.
        name: &'a str,
        /// Raw digest of the subject manifest.
        digest: &'a str,
    },
    /// Anything else under `/v2/`.
    UnknownApi,
    /// Anything outside `/v2/`.
    NotFound,
}

impl Route<'_> {
    /// The raw repository name a request names, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            _ => None,
        }
    }

    /// A fixed label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Tags { .. } => "tags",
            Route::Referrers { .. } => "referrers",
            Route::UnknownApi | Route::NotFound => "other",
        }
    }
}

/// Splits a request path into a [`Route`].
pub fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Route::NotFound;
    };
    let rest = match rest {
        "" | "/" => return Route::Base,
        r => match r.strip_prefix('/') {
            Some(r) => r,
            None => return Route::NotFound,
        },
    };
    if rest == "_catalog" {
        return Route::Catalog;
    }
    let Some((front, last)) = rest.rsplit_once('/') else {
        return Route::UnknownApi;
    };
    let Some((name, kind)) = front.rsplit_once('/') else {
        return Route::UnknownApi;
    };
    if name.is_empty() || last.is_empty() {
        return Route::UnknownApi;
    }
    match kind {
        "manifests" => Route::Manifest {
            name,
            reference: last,
        },
        "blobs" => Route::Blob { name, digest: last },
        "tags" if last == "list" => Route::Tags { name },
        "referrers" => Route::Referrers { name, digest: last },
        _ => Route::UnknownApi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            ("/v2/", Route::Base),
            ("/v2", Route::Base),
            ("/v2/_catalog", Route::Catalog),
            (
                "/v2/library/alpine/manifests/3.19",
                Route::Manifest {
                    name: "library/alpine",
                    reference: "3.19",
                },
            ),
            (
                "/v2/a/blobs/sha256:ab",
                Route::Blob {
                    name: "a",
                    digest: "sha256:ab",
                },
            ),
            (
                "/v2/ghcr.io/org/app/tags/list",
                Route::Tags {
                    name: "ghcr.io/org/app",
                },
            ),
            (
                "/v2/x/blobs/manifests/latest",
                Route::Manifest {
                    name: "x/blobs",
                    reference: "latest",
                },
            ),
            (
                "/v2/library/app/referrers/sha256:ab",
                Route::Referrers {
                    name: "library/app",
                    digest: "sha256:ab",
                },
            ),
            ("/v2/x/manifests/", Route::UnknownApi),
            ("/v2/manifests/latest", Route::UnknownApi),
            ("/v2/x/tags/other", Route::UnknownApi),
            ("/v2/x/blobs/uploads/", Route::UnknownApi),
            ("/v2x/x/manifests/a", Route::NotFound),
            ("/metrics", Route::NotFound),
        ];
        for (path, expected) in cases {
            assert_eq!(route(path), expected, "{path}");
        }
    }

    #[test]
    fn encoded_traversal_stays_raw_for_validation() {
        // The router does not decode: `%2e%2e` reaches the name validator as is.
        assert_eq!(
            route("/v2/%2e%2e/%2e%2e/manifests/x"),
            Route::Manifest {
                name: "%2e%2e/%2e%2e",
                reference: "x"
            }
        );
    }
}
