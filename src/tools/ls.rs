//! `lasti ls`: the tags a running lasti holds, as a table (or JSON).

use crate::pull_through::CachedImage;

/// Prints what the lasti at `admin_url` holds.
pub async fn run(admin_url: &str, json: bool) -> Result<(), String> {
    let client = super::client();
    let (status, _, body) = super::get(&client, &format!("{admin_url}/admin/cache"), None).await?;
    if status != 200 {
        return Err(format!("{admin_url}/admin/cache answered {status}"));
    }
    if json {
        return super::print(&format!("{}\n", String::from_utf8_lossy(&body)));
    }
    let images: Vec<CachedImage> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let mut table = format!(
        "{:<12} {:<40} {:<20} {:<19} {:>10} {:>12} BACKFILLED\n",
        "UPSTREAM", "REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST USE"
    );
    let now = crate::cache::index::unix_now();
    for image in images {
        let size = image
            .image_size
            .map(|s| bytesize::ByteSize::b(s).to_string())
            .unwrap_or_else(|| "-".into());
        let last_use = image
            .last_use
            .map(|t| {
                format!(
                    "{} ago",
                    humantime::format_duration(std::time::Duration::from_secs(
                        now.saturating_sub(t)
                    ))
                )
            })
            .unwrap_or_else(|| "-".into());
        let backfilled = match image.backfilled {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let digest: String = image.digest.to_string().chars().take(19).collect();
        table.push_str(&format!(
            "{:<12} {:<40} {:<20} {:<19} {:>10} {:>12} {}\n",
            image.upstream, image.repository, image.tag, digest, size, last_use, backfilled
        ));
    }
    super::print(&table)
}
