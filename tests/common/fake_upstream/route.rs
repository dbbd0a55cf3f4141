//! How the fake reads a distribution API path: split from the end, as
//! registries do, since a repository name may have any number of components.

/// `/v2/<repo>/blobs/<digest>`.
pub fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

/// `/v2/<repo>/manifests/<reference>`.
pub fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

/// What a `/v2/` path asks for.
#[derive(Debug)]
pub enum Route<'a> {
    /// `/v2/`.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/tags/list`.
    Tags { name: &'a str },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers { name: &'a str, digest: &'a str },
    /// Anything else.
    Other,
}

impl<'a> Route<'a> {
    /// Splits a path (without its query).
    pub fn parse(path: &'a str) -> Route<'a> {
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Route::Other;
        };
        if rest.is_empty() {
            return Route::Base;
        }
        let split = rest
            .rsplit_once('/')
            .and_then(|(front, last)| Some((front.rsplit_once('/')?, last)));
        match split {
            Some(((name, "manifests"), reference)) => Route::Manifest { name, reference },
            Some(((name, "blobs"), digest)) => Route::Blob { name, digest },
            Some(((name, "tags"), "list")) => Route::Tags { name },
            Some(((name, "referrers"), digest)) => Route::Referrers { name, digest },
            _ => Route::Other,
        }
    }

    /// The repository named, when any.
    pub fn name(&self) -> Option<&'a str> {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
            Route::Base | Route::Other => None,
        }
    }

    /// The key faults are looked up by.
    pub fn target(&self) -> Option<&'a str> {
        match self {
            Route::Manifest { reference, .. } => Some(reference),
            Route::Blob { digest, .. } | Route::Referrers { digest, .. } => Some(digest),
            _ => None,
        }
    }
}
