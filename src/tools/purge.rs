//! `lasti purge`: drops a tag, a manifest or an image from a running
//! lasti's cache (and its bucket) through `POST /admin/purge`.

use crate::pull_through::{PurgeScope, Purged};

/// Asks the lasti at `admin_url` to purge `image`; prints what went.
pub async fn run(
    admin_url: &str,
    token: &str,
    image: &str,
    scope: PurgeScope,
    json: bool,
) -> Result<(), String> {
    let url = format!("{admin_url}/admin/purge");
    let body = serde_json::json!({ "image": image, "scope": scope });
    let (status, answer) = super::post_admin(&url, token, body.to_string().into_bytes()).await?;
    if status != 200 {
        let error = super::error_message(&answer);
        return Err(format!("{url} answered {status}: {error}"));
    }
    if json {
        return super::print(&format!("{}\n", String::from_utf8_lossy(&answer)));
    }
    let purged: Purged = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    super::print(&summary(image, &purged))
}

/// One line per kind of thing removed.
fn summary(image: &str, purged: &Purged) -> String {
    let mut out = format!(
        "purged {image} ({}/{}): {} tag record(s), {} manifest(s), {} blob(s), {}\n",
        purged.upstream,
        purged.repository,
        purged.tags.len(),
        purged.manifests.len(),
        purged.blobs.len(),
        bytesize::ByteSize::b(purged.bytes),
    );
    if !purged.tags.is_empty() {
        out.push_str(&format!("  tags: {}\n", purged.tags.join(", ")));
    }
    if purged.kept_manifests + purged.kept_blobs > 0 {
        out.push_str(&format!(
            "  kept {} manifest(s) and {} blob(s) other cached images use\n",
            purged.kept_manifests, purged.kept_blobs
        ));
    }
    if let Some(bucket) = &purged.bucket {
        out.push_str(&format!(
            "  bucket: {} object(s) removed, {} failed\n",
            bucket.removed, bucket.failed
        ));
    }
    out
}
