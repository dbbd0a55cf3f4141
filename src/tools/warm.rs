//! `lasti warm IMAGE...`: pre-pulls images through a running lasti (every
//! platform of an index, or those named), so they are cached and offered to
//! back-fill before anyone needs them. A progress bar per image on a
//! terminal, a plain line per image otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use futures_util::future::join_all;
use http_body_util::BodyExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::LocalClient;
use crate::oci::manifest::{ImageIndex, ImageManifest};
use crate::oci::media_type::{self, DEFAULT_MANIFEST_ACCEPT};
use crate::oci::{Digest, ImageRef};

/// Warms every image; `platforms` (`linux/amd64`) limits an index's children.
pub async fn run(api_url: &str, images: &[String], platforms: &[String]) -> Result<(), String> {
    let client = super::client();
    let progress = std::io::stderr().is_terminal().then(MultiProgress::new);
    let jobs = images.iter().map(|image| {
        let bar = progress.as_ref().map(|p| p.add(new_bar(image)));
        warm_one(&client, api_url, image, platforms, bar)
    });
    let results = join_all(jobs).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

fn new_bar(image: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{prefix:30!} {bar:30} {bytes}/{total_bytes} {msg}")
        .expect("valid template");
    bar.set_style(style);
    bar.set_prefix(image.to_string());
    bar
}

async fn warm_one(
    client: &LocalClient,
    api_url: &str,
    image: &str,
    platforms: &[String],
    bar: Option<ProgressBar>,
) -> Result<(), String> {
    let started = Instant::now();
    let reference = ImageRef::parse(image)?;
    let base = format!("{api_url}/v2/{}", reference.name);
    let blobs = blobs_of(client, &base, &reference.reference, platforms)
        .await
        .map_err(|e| format!("{image}: {e}"))?;
    let total: u64 = blobs.iter().map(|(_, size)| size).sum();
    if let Some(bar) = &bar {
        bar.set_length(total);
    }
    for (digest, _) in &blobs {
        fetch_blob(client, &format!("{base}/blobs/{digest}"), bar.as_ref())
            .await
            .map_err(|e| format!("{image}: {e}"))?;
    }
    let summary = format!(
        "{} blobs, {} in {:.1}s",
        blobs.len(),
        bytesize::ByteSize::b(total),
        started.elapsed().as_secs_f64()
    );
    match bar {
        Some(bar) => bar.finish_with_message(summary),
        None => eprintln!("warmed {image}: {summary}"),
    }
    Ok(())
}

/// The blobs of an image or of the chosen platforms of an index.
async fn blobs_of(
    client: &LocalClient,
    base: &str,
    reference: &str,
    platforms: &[String],
) -> Result<Vec<(Digest, u64)>, String> {
    let (body, media) = manifest(client, base, reference).await?;
    if !media_type::is_index(&media) {
        return image_blobs(&body);
    }
    let index = ImageIndex::parse(&body).ok_or("the index is not valid JSON")?;
    let mut blobs = Vec::new();
    for child in &index.manifests {
        if child.is_for(platforms) {
            let (body, _) = manifest(client, base, child.digest.as_str()).await?;
            blobs.extend(image_blobs(&body)?);
        }
    }
    blobs.sort();
    blobs.dedup();
    Ok(blobs)
}

async fn manifest(
    client: &LocalClient,
    base: &str,
    reference: &str,
) -> Result<(bytes::Bytes, String), String> {
    let url = format!("{base}/manifests/{reference}");
    let (status, media, body) = super::get(client, &url, Some(DEFAULT_MANIFEST_ACCEPT)).await?;
    if status != 200 {
        return Err(format!(
            "{url} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok((body, media))
}

fn image_blobs(body: &[u8]) -> Result<Vec<(Digest, u64)>, String> {
    let manifest = ImageManifest::parse(body).ok_or("not an image manifest lasti can read")?;
    Ok(manifest
        .blobs()
        .map(|b| (b.digest.clone(), b.size))
        .collect())
}

/// Streams a blob through lasti to the end, counting progress.
async fn fetch_blob(
    client: &LocalClient,
    url: &str,
    bar: Option<&ProgressBar>,
) -> Result<(), String> {
    let request = http::Request::get(url)
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status() != 200 {
        return Err(format!("{url} answered {}", response.status()));
    }
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{url}: {e}"))?;
        if let (Some(data), Some(bar)) = (frame.data_ref(), bar) {
            bar.inc(data.len() as u64);
        }
    }
    Ok(())
}
