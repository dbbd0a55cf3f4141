//! Async wrappers over `/usr/bin/skopeo` for pushing OCI layouts to a
//! registry and pulling images back, over plain HTTP on loopback.
//!
//! Every call runs with `--insecure-policy`, TLS verification off, no
//! retries, and a 120 s timeout after which the process is killed. Copies use
//! `--preserve-digests`, so skopeo never recompresses or converts: what the
//! registry holds is byte-for-byte what [`super::oci_layout`] wrote. Errors
//! carry skopeo's stderr.

use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use super::oci_layout::{sha256_digest, BuiltImage, ImageSpec, Layout};

/// skopeo from the Debian package `skopeo`.
pub const SKOPEO_BIN: &str = "/usr/bin/skopeo";
/// The longest one skopeo invocation may run.
pub const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `skopeo --insecure-policy <args>` and returns its stdout.
///
/// For invocations the helpers below do not cover (credentials, formats).
pub async fn run(args: &[String]) -> Result<Vec<u8>, String> {
    super::require_tool(SKOPEO_BIN);
    let mut command = Command::new(SKOPEO_BIN);
    command.arg("--insecure-policy").args(args);
    let shown = format!("skopeo {}", args.join(" "));
    super::output_of(command, &shown, SKOPEO_TIMEOUT).await
}

/// Pushes `oci:<layout_dir>:<tag>` to `dest` (`host:port/repo:tag`);
/// `all` copies every image of an index.
pub async fn push_layout(
    layout_dir: &Path,
    tag: &str,
    dest: &str,
    all: bool,
) -> Result<(), String> {
    let mut args = copy_args(all);
    args.push("--dest-tls-verify=false".into());
    args.push(format!("oci:{}:{tag}", layout_dir.display()));
    args.push(docker_ref(dest));
    run(&args).await.map(drop)
}

/// Writes `spec` as an OCI layout under `dir/<name>` and pushes it to the
/// registry at `host` as `library/<name>:v1`; the layout keeps the blobs.
pub async fn push_image(
    host: &str,
    dir: &Path,
    name: &str,
    spec: &ImageSpec,
) -> (Layout, BuiltImage) {
    let (layout, image) = Layout::single(&dir.join(name), spec, "v1");
    let dest = format!("{host}/library/{name}:v1");
    push_layout(&layout.dir, &layout.tag, &dest, false)
        .await
        .unwrap_or_else(|e| panic!("push {dest}: {e}"));
    (layout, image)
}

/// Pulls `library/<name>:v1` through `host` into `out` (`all`: every
/// platform) and checks it is `image`, whole: skopeo verifies each digest,
/// and the blobs it wrote are the image's.
pub async fn pull_and_check(host: &str, name: &str, image: &BuiltImage, out: &Path, all: bool) {
    pull_to_dir(&format!("{host}/library/{name}:v1"), out, all)
        .await
        .unwrap_or_else(|e| panic!("pull {name} through {host}: {e}"));
    let mut pulled = dir_digests(out);
    let mut expected = image.blob_digests();
    expected.push(image.manifest_digest.clone());
    pulled.sort();
    expected.sort();
    assert_eq!(pulled, expected, "the same image, verified by skopeo");
}

/// Pushes every image of the index `oci:<layout_dir>:<tag>` to `dest` in
/// Docker's formats (schema 2 manifests under a manifest list). Manifests and
/// configs are rewritten, so their digests are the registry's to report.
pub async fn push_layout_as_docker(layout_dir: &Path, tag: &str, dest: &str) -> Result<(), String> {
    let args = [
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--all",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
    ];
    let mut args: Vec<String> = args.map(String::from).into();
    args.push(format!("oci:{}:{tag}", layout_dir.display()));
    args.push(docker_ref(dest));
    run(&args).await.map(drop)
}

/// Pulls `src` (`host:port/repo:tag` or `host:port/repo@sha256:..`) into the
/// `dir:` layout `out`; `all` copies every image of an index.
pub async fn pull_to_dir(src: &str, out: &Path, all: bool) -> Result<(), String> {
    let mut args = copy_args(all);
    args.push("--src-tls-verify=false".into());
    args.push(docker_ref(src));
    args.push(format!("dir:{}", out.display()));
    run(&args).await.map(drop)
}

/// The raw manifest (or index) bytes of `src`, exactly as the registry serves them.
pub async fn inspect_raw(src: &str) -> Result<Vec<u8>, String> {
    run(&inspect_args(src, &["--raw"])).await
}

/// The digest skopeo reports for `src` (`skopeo inspect --format '{{.Digest}}'`).
///
/// For an index this is the digest of the top-level index, but skopeo also
/// needs an image for this machine's platform in it.
pub async fn inspect_digest(src: &str) -> Result<String, String> {
    let out = run(&inspect_args(src, &["--format", "{{.Digest}}"])).await?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// Sorted digests of what a `dir:` copy holds: every blob (files named by
/// hex), every per-instance manifest (`<hex>.manifest.json`, after `--all`)
/// and the top-level `manifest.json`, whose digest is computed here.
pub fn dir_digests(out: &Path) -> Vec<String> {
    let mut digests = Vec::new();
    let entries = fs::read_dir(out).unwrap_or_else(|e| panic!("read dir {}: {e}", out.display()));
    for entry in entries {
        let name = entry
            .expect("read dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
        if is_sha256_hex(hex) {
            digests.push(format!("sha256:{hex}"));
        } else if name == "manifest.json" {
            let bytes = fs::read(out.join(&name)).expect("read manifest.json");
            digests.push(sha256_digest(&bytes));
        }
    }
    digests.sort();
    digests.dedup();
    digests
}

/// Common `skopeo copy` flags.
fn copy_args(all: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "copy",
        "--quiet",
        "--retry-times",
        "0",
        "--preserve-digests",
    ]
    .map(String::from)
    .into();
    if all {
        args.push("--all".into());
    }
    args
}

/// `skopeo inspect` flags for `src` plus `extra`.
fn inspect_args(src: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["inspect", "--retry-times", "0", "--tls-verify=false"]
        .map(String::from)
        .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(docker_ref(src));
    args
}

/// `docker://<reference>`, unless it already names that transport.
fn docker_ref(reference: &str) -> String {
    if reference.starts_with("docker://") {
        reference.to_owned()
    } else {
        format!("docker://{reference}")
    }
}

/// Whether `s` is 64 lowercase hex digits.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
