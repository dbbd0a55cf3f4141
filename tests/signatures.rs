//! lasti's cosign verification against signatures a real tool wrote:
//! containers/image (Debian's skopeo) attaches a signature to an image it
//! pushes to the distribution registry, as the `sha256-<hex>.sig` tag
//! beside it, and lasti's `signature` module finds it valid for that
//! image only, by its key only. openssl checks the same signature, so
//! the test does not rest on lasti's reading of its own bytes.
//!
//! The signature itself is made here (ring, P-256): Debian builds skopeo
//! and podman with sigstore signing and verifying disabled
//! ("Debian-local change: sigstore disabled"), but skopeo still carries a
//! signature given to it in a `dir:` image to a registry as cosign does.
//! For the same reason podman pulls through lasti here without checking
//! signatures itself: lasti's policy is what is tested.

mod common;

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use common::fake_upstream::{image_manifest, FakeUpstream};
use common::http::{get, head, metric};
use common::lasti::{config, Lasti};
use common::oci_layout::{ImageSpec, Layout};
use common::podman::Podman;
use common::registry::Registry;
use common::skopeo;
use lasti::config::SignatureRuleConfig;
use lasti::oci::Digest;
use lasti::signature::{self, PublicKey, Refusal};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use tempfile::TempDir;

const REPO: &str = "team/app";

/// A P-256 key pair, and its public key as SubjectPublicKeyInfo DER.
struct Signer {
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
}

fn signer() -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // SubjectPublicKeyInfo of a P-256 point: a fixed prefix, then the point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    Signer { pair, spki }
}

impl Signer {
    fn pem(&self) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(&self.spki);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), payload)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

/// The simple-signing payload for `digest` at `reference`.
fn payload(digest: &str, reference: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// Adds a signature to a `dir:` image, in containers/image's format.
fn attach(dir: &Path, n: usize, payload: &[u8], signature: &[u8]) {
    let base64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({
        "mimeType": signature::payload::SIMPLE_SIGNING,
        "payload": base64.encode(payload),
        "annotations": {signature::payload::SIGNATURE_ANNOTATION: base64.encode(signature)},
    });
    let mut file = b"\x00sigstore-json\n".to_vec();
    file.extend_from_slice(body.to_string().as_bytes());
    std::fs::write(dir.join(format!("signature-{n}")), file).unwrap();
}

async fn fetch(registry: &Registry, path: &str, accept: &str) -> Bytes {
    let reply = get(&format!("{}{path}", registry.url()), &[("accept", accept)]).await;
    assert!(reply.status.is_success(), "{path}: {}", reply.status);
    reply.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_skopeo_attached_is_valid_for_its_image_and_key_only() {
    let (registry, work) = (Registry::start(), TempDir::new().unwrap());
    let spec = ImageSpec::linux_amd64(2901, &[4096]).unpackable();
    let (layout, _) = Layout::single(&work.path().join("layout"), &spec, "v1");
    let image = work.path().join("image");
    let copy = [
        "copy".to_string(),
        "--preserve-digests".into(),
        format!("oci:{}:v1", layout.dir.display()),
        format!("dir:{}", image.display()),
    ];
    skopeo::run(&copy).await.expect("the image as a dir:");
    let manifest = std::fs::read(image.join("manifest.json")).unwrap();
    let digest = Digest::sha256_of(&manifest);
    let reference = format!("{}/{REPO}:v1", registry.host());

    let (trusted, stranger) = (signer(), signer());
    let signed = payload(digest.as_str(), &reference);
    let signature = trusted.sign(&signed);
    attach(&image, 1, &signed, &signature);
    // A second signature, by another key, beside it.
    attach(&image, 2, &signed, &stranger.sign(&signed));

    let registries_d = work.path().join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    let attachments = format!(
        "docker:\n  {}:\n    use-sigstore-attachments: true\n",
        registry.host()
    );
    std::fs::write(registries_d.join("lasti-test.yaml"), attachments).unwrap();
    let push = [
        "--registries.d".to_string(),
        registries_d.display().to_string(),
        "copy".into(),
        "--preserve-digests".into(),
        "--dest-tls-verify=false".into(),
        format!("dir:{}", image.display()),
        format!("docker://{reference}"),
    ];
    skopeo::run(&push)
        .await
        .expect("push with the signatures attached");

    // What containers/image wrote, as a registry serves it.
    let tag = signature::signature_tag(&digest);
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let artifact = fetch(&registry, &format!("/v2/{REPO}/manifests/{tag}"), oci).await;
    let found = signature::signatures(&artifact);
    assert_eq!(found.len(), 2, "both signatures, one layer each");
    let mut with_payloads = Vec::new();
    for one in &found {
        let path = format!("/v2/{REPO}/blobs/{}", one.payload);
        with_payloads.push((one.clone(), fetch(&registry, &path, "*/*").await));
    }
    assert_eq!(with_payloads[0].1.as_ref(), signed.as_slice());

    let keys = PublicKey::from_pem(&trusted.pem()).unwrap();
    let verdict = signature::verify(&digest, Some(REPO), &keys, &with_payloads);
    assert_eq!(verdict, Ok("ecdsa-p256"));
    let others = PublicKey::from_pem(&stranger.pem()).unwrap();
    assert_eq!(
        signature::verify(&digest, Some(REPO), &others, &with_payloads[..1]),
        Err(Refusal::UnknownKey)
    );
    let another_image = Digest::sha256_of(b"another manifest");
    assert_eq!(
        signature::verify(&another_image, Some(REPO), &keys, &with_payloads),
        Err(Refusal::DigestMismatch)
    );
    assert_eq!(
        signature::verify(&digest, Some("team/other"), &keys, &with_payloads),
        Err(Refusal::WrongPayload)
    );

    // openssl agrees on the signature containers/image carried.
    let files = work.path();
    std::fs::write(files.join("pub.pem"), trusted.pem()).unwrap();
    std::fs::write(files.join("sig.der"), &found[0].signature).unwrap();
    std::fs::write(files.join("payload"), &with_payloads[0].1).unwrap();
    let checked = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig.der",
            "payload",
        ])
        .current_dir(files)
        .output()
        .expect("run openssl");
    assert!(
        checked.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
}

/// The distribution registry, and images pushed to it from `dir:` images
/// with the signatures given, as containers/image attaches them.
struct Upstream {
    registry: Registry,
    work: TempDir,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

impl Upstream {
    fn start() -> Upstream {
        Upstream {
            registry: Registry::start(),
            work: TempDir::new().unwrap(),
        }
    }

    /// A registries.d that reads and writes sigstore attachments at `host`.
    fn registries_d(&self, host: &str) -> String {
        let dir = self.work.path().join(format!("registries.d-{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        let attachments = format!("docker:\n  {host}:\n    use-sigstore-attachments: true\n");
        std::fs::write(dir.join("lasti-test.yaml"), attachments).unwrap();
        dir.display().to_string()
    }

    /// Writes `specs` (one image, or an index over several) as a `dir:`
    /// image named `name`; its directory and its top manifest's digest.
    async fn image(&self, name: &str, specs: &[ImageSpec]) -> (std::path::PathBuf, Digest) {
        let layout = self.work.path().join(format!("layout-{name}"));
        let layout = if specs.len() == 1 {
            Layout::single(&layout, &specs[0], "v1").0
        } else {
            Layout::multi(&layout, specs, "v1").0
        };
        let image = self.work.path().join(format!("image-{name}"));
        let mut copy = vec!["copy".to_string(), "--preserve-digests".into()];
        if specs.len() > 1 {
            copy.push("--all".into());
        }
        copy.push(format!("oci:{}:v1", layout.dir.display()));
        copy.push(format!("dir:{}", image.display()));
        skopeo::run(&copy).await.expect("the image as a dir:");
        let digest = Digest::sha256_of(&std::fs::read(image.join("manifest.json")).unwrap());
        (image, digest)
    }

    /// Pushes a `dir:` image with its signatures to `repo:tag`.
    async fn push(&self, image: &Path, repo_tag: &str) {
        let push = [
            "--registries.d".to_string(),
            self.registries_d(&self.registry.host()),
            "copy".into(),
            "--all".into(),
            "--preserve-digests".into(),
            "--dest-tls-verify=false".into(),
            format!("dir:{}", image.display()),
            format!("docker://{}/{repo_tag}", self.registry.host()),
        ];
        skopeo::run(&push).await.expect("push with the signatures");
    }

    /// Writes a key's PEM file; its path.
    fn key_file(&self, name: &str, signer: &Signer) -> std::path::PathBuf {
        let path = self.work.path().join(format!("{name}.pub"));
        std::fs::write(&path, signer.pem()).unwrap();
        path
    }
}

/// How a test image is signed: by whom, for which reference, and for
/// which digest (its own unless told otherwise).
struct Signing<'a> {
    by: &'a Signer,
    reference: String,
    digest: Option<&'a Digest>,
}

impl<'a> Signing<'a> {
    fn new(by: &'a Signer, reference: &str) -> Signing<'a> {
        Signing {
            by,
            reference: reference.to_string(),
            digest: None,
        }
    }

    /// Signs `digest` instead of the image's own.
    fn for_digest(mut self, digest: &'a Digest) -> Signing<'a> {
        self.digest = Some(digest);
        self
    }
}

impl Upstream {
    /// Pushes a one-platform image made from `seed` to `repo_tag`, signed
    /// as `signing` says; its digest.
    async fn publish(&self, seed: u64, repo_tag: &str, signing: Option<Signing<'_>>) -> Digest {
        let name = repo_tag.replace(['/', ':'], "-");
        let spec = ImageSpec::linux_amd64(seed, &[4096]).unpackable();
        let (dir, digest) = self.image(&name, &[spec]).await;
        if let Some(signing) = signing {
            let signed = signing.digest.unwrap_or(&digest);
            sign_as(&dir, 1, signing.by, signed, &signing.reference);
        }
        self.push(&dir, repo_tag).await;
        digest
    }
}

/// Adds `signer`'s signature of a payload for `digest` at `reference`.
fn sign_as(dir: &Path, n: usize, signer: &Signer, digest: &Digest, reference: &str) {
    let signed = payload(digest.as_str(), reference);
    attach(dir, n, &signed, &signer.sign(&signed));
}

/// A rule requiring one of `keys` on `repositories`.
fn signed_by(
    name: &str,
    repositories: &[&str],
    keys: Vec<std::path::PathBuf>,
) -> SignatureRuleConfig {
    SignatureRuleConfig {
        name: Some(name.into()),
        repositories: repositories.iter().map(|r| r.to_string()).collect(),
        keys,
        unsigned: false,
        check_reference: true,
    }
}

/// What lasti answers for a manifest: status and, for an error, its code
/// and message.
async fn ask(lasti: &Lasti, path: &str, accept: &str) -> (u16, String) {
    let reply = get(&format!("{}/v2/{path}", lasti.url()), &[("accept", accept)]).await;
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let message = format!(
        "{} {}",
        reply.error_code(),
        body["errors"][0]["message"].as_str().unwrap_or("")
    );
    (reply.status.as_u16(), message)
}

/// Asks for `repo`'s manifest by each of `references` (GET and HEAD) and
/// checks each answer: served, or refused with `DENIED` and a message
/// naming the policy and holding `refused`.
async fn expect(
    lasti: &Lasti,
    repo: &str,
    references: &[&str],
    accept: &str,
    refused: Option<&str>,
) {
    for reference in references {
        let path = format!("{repo}/manifests/{reference}");
        let (status, message) = ask(lasti, &path, accept).await;
        let headed = head(&format!("{}/v2/{path}", lasti.url()), &[("accept", accept)]).await;
        match refused {
            None => {
                assert_eq!(status, 200, "{path} served: {message}");
                assert_eq!(headed.status.as_u16(), 200, "HEAD {path} served");
            }
            Some(reason) => {
                assert_eq!(status, 403, "{path} refused");
                assert!(message.starts_with("DENIED"), "{path}: {message}");
                assert!(
                    message.contains(reason),
                    "{path}: {message} names {reason:?}"
                );
                assert!(
                    message.contains("team-signed"),
                    "{path}: {message} names the policy"
                );
                assert_eq!(headed.status.as_u16(), 403, "HEAD {path} refused");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lasti_serves_only_images_the_policy_keys_signed() {
    let upstream = Upstream::start();
    let host = upstream.registry.host();
    let (trusted, next, stranger) = (signer(), signer(), signer());

    let sign = |by, reference: &str| Some(Signing::new(by, &format!("{host}/{reference}")));
    let signed = upstream
        .publish(2911, "team/app:signed", sign(&trusted, "team/app:signed"))
        .await;
    // Signed with the key that replaces it: a policy lists both.
    let rotated = upstream
        .publish(2912, "team/app:rotated", sign(&next, "team/app:rotated"))
        .await;
    let unsigned = upstream.publish(2913, "team/app:unsigned", None).await;
    let strangers = upstream
        .publish(
            2914,
            "team/app:stranger",
            sign(&stranger, "team/app:stranger"),
        )
        .await;
    // The trusted key, but the payload names the signed image's digest.
    let wrong = upstream
        .publish(
            2915,
            "team/app:wrong",
            sign(&trusted, "team/app:wrong").map(|s| s.for_digest(&signed)),
        )
        .await;
    // The trusted key, signed for another repository.
    let elsewhere = upstream
        .publish(2916, "team/app:elsewhere", sign(&trusted, "team/other:v1"))
        .await;
    // An exception for one repository, and one no rule names.
    let (dir, legacy) = upstream
        .image(
            "legacy",
            &[ImageSpec::linux_amd64(2917, &[4096]).unpackable()],
        )
        .await;
    upstream.push(&dir, "team/legacy:v1").await;
    upstream.push(&dir, "other/app:v1").await;
    // A signed index covers its platforms; an unsigned one is served as a
    // list, and each platform must be signed itself.
    let platforms = |seed| {
        [
            ImageSpec::new(seed, &[2048], "linux", "amd64"),
            ImageSpec::new(seed + 1, &[2048], "linux", "arm64"),
        ]
    };
    let (dir, index) = upstream.image("index", &platforms(2920)).await;
    sign_as(&dir, 1, &trusted, &index, &format!("{host}/team/multi:v1"));
    upstream.push(&dir, "team/multi:v1").await;
    let index_children = children(&dir);
    let (dir, bare_index) = upstream.image("bare-index", &platforms(2930)).await;
    upstream.push(&dir, "team/multi:bare").await;
    let bare_children = children(&dir);

    let keys = vec![
        upstream.key_file("trusted", &trusted),
        upstream.key_file("next", &next),
    ];
    let mut settings = config(&[("docker.io", &upstream.registry.url())]);
    settings.upstreams[0].signatures = vec![
        SignatureRuleConfig {
            name: Some("legacy".into()),
            repositories: vec!["team/legacy".into()],
            keys: Vec::new(),
            unsigned: true,
            check_reference: true,
        },
        signed_by("team-signed", &["team/*"], keys.clone()),
    ];
    let lasti = Lasti::start_with(settings.clone(), None).await;

    let cases: [(&str, &Digest, Option<&str>); 7] = [
        ("signed", &signed, None),
        ("rotated", &rotated, None),
        ("unsigned", &unsigned, Some("it has no signature")),
        (
            "stranger",
            &strangers,
            Some("no signature is by a trusted key"),
        ),
        ("wrong", &wrong, Some("names another manifest digest")),
        ("elsewhere", &elsewhere, Some("not for this repository")),
        ("signed", &signed, None),
    ];
    // Cold, then warm: the same answers.
    for round in ["cold", "warm"] {
        let before = upstream.registry.all_requests();
        for (tag, digest, refused) in &cases {
            expect(
                &lasti,
                "team/app",
                &[tag, digest.as_str()],
                OCI_MANIFEST,
                *refused,
            )
            .await;
        }
        expect(
            &lasti,
            "team/legacy",
            &["v1", legacy.as_str()],
            OCI_MANIFEST,
            None,
        )
        .await;
        expect(
            &lasti,
            "other/app",
            &["v1", legacy.as_str()],
            OCI_MANIFEST,
            None,
        )
        .await;
        expect(
            &lasti,
            "team/multi",
            &["v1", index.as_str()],
            OCI_INDEX,
            None,
        )
        .await;
        for child in &index_children {
            expect(&lasti, "team/multi", &[child.as_str()], OCI_MANIFEST, None).await;
        }
        expect(
            &lasti,
            "team/multi",
            &["bare", bare_index.as_str()],
            OCI_INDEX,
            None,
        )
        .await;
        for child in &bare_children {
            let path = format!("team/multi/manifests/{child}");
            let (status, message) = ask(&lasti, &path, OCI_MANIFEST).await;
            assert_eq!(status, 403, "{round}: {path}: {message}");
            assert!(message.contains("it has no signature"), "{message}");
        }
        if round == "warm" {
            assert_eq!(
                upstream.registry.all_requests(),
                before,
                "a warm round asks the upstream nothing"
            );
        }
    }
    // What a refused image is made of is never fetched.
    let unsigned_manifest = fetch(
        &upstream.registry,
        &format!("/v2/team/app/manifests/{unsigned}"),
        OCI_MANIFEST,
    )
    .await;
    let unsigned_layers: serde_json::Value = serde_json::from_slice(&unsigned_manifest).unwrap();
    let layer = unsigned_layers["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(upstream.registry.blob_gets(layer), 0);
    // Each verdict was made once, however often it was asked for.
    let verdicts = |outcome: &'static str| {
        let admin = lasti.admin_url();
        async move {
            let label = format!("outcome=\"{outcome}\"");
            metric(&admin, "lasti_signature_verdicts_total", &[&label]).await
        }
    };
    assert_eq!(verdicts("signed").await, 3, "signed, rotated and the index");
    assert_eq!(verdicts("covered").await, 2, "the signed index's platforms");
    assert_eq!(
        verdicts("no_signature").await,
        3,
        "unsigned and the bare index's platforms"
    );
    assert_eq!(verdicts("unsigned_index").await, 1);
    let refused = metric(
        &lasti.admin_url(),
        "lasti_signature_refused_total",
        &["reason=\"unknown_key\""],
    )
    .await;
    assert_eq!(
        refused,
        2 * 2 * 2,
        "two rounds of GET and HEAD, by tag and by digest"
    );

    // Real clients: skopeo reads the signature through lasti too.
    let out = upstream.work.path().join("pulled");
    let pull = [
        "--registries.d".to_string(),
        upstream.registries_d(&lasti.host()),
        "copy".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/team/app:signed", lasti.host()),
        format!("dir:{}", out.display()),
    ];
    skopeo::run(&pull)
        .await
        .expect("skopeo pulls the signed image");
    assert!(
        out.join("signature-1").exists(),
        "its signature came through lasti"
    );
    let refused_pull = [
        "copy".to_string(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/team/app:unsigned", lasti.host()),
        format!("dir:{}", upstream.work.path().join("refused").display()),
    ];
    let err = skopeo::run(&refused_pull).await.unwrap_err();
    assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
    let podman = Podman::new("unqualified-search-registries = []\n");
    let image = format!("{}/team/app:signed", lasti.host());
    podman
        .run(&["pull", "--quiet", "--tls-verify=false", &image])
        .await
        .expect("podman pulls the signed image");
    let image = format!("{}/team/app:stranger", lasti.host());
    let err = podman
        .run(&["pull", "--quiet", "--tls-verify=false", &image])
        .await
        .unwrap_err();
    assert!(
        err.contains("denied") || err.contains("trusted key"),
        "{err}"
    );

    // After a restart a verified hit needs neither the upstream nor a
    // signature check.
    let data = lasti.stop().await;
    let lasti = Lasti::start_with(settings.clone(), Some(data)).await;
    let before = upstream.registry.all_requests();
    expect(
        &lasti,
        "team/app",
        &["signed", signed.as_str()],
        OCI_MANIFEST,
        None,
    )
    .await;
    expect(
        &lasti,
        "team/multi",
        &[index_children[0].as_str()],
        OCI_MANIFEST,
        None,
    )
    .await;
    assert_eq!(upstream.registry.all_requests(), before);
    assert_eq!(
        metric(&lasti.admin_url(), "lasti_signature_verdicts_total", &[]).await,
        0
    );

    // Other keys are another policy: its verdicts are made afresh.
    let data = lasti.stop().await;
    settings.upstreams[0].signatures = vec![signed_by(
        "team-signed",
        &["team/*"],
        vec![upstream.key_file("stranger", &stranger)],
    )];
    let lasti = Lasti::start_with(settings, Some(data)).await;
    expect(
        &lasti,
        "team/app",
        &["stranger", strangers.as_str()],
        OCI_MANIFEST,
        None,
    )
    .await;
    expect(
        &lasti,
        "team/app",
        &["signed", signed.as_str()],
        OCI_MANIFEST,
        Some("no signature is by a trusted key"),
    )
    .await;

    // No upstream to read a signature from: refused, not served unverified.
    drop(upstream.registry);
    let path = format!("team/app/manifests/{unsigned}");
    let (status, message) = ask(&lasti, &path, OCI_MANIFEST).await;
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("could not be read"), "{message}");
    drop(upstream.work);
}

/// The platform manifests of a `dir:` index image.
fn children(dir: &Path) -> Vec<Digest> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Digest::parse(m["digest"].as_str().unwrap()).unwrap())
        .collect()
}

/// A cosign signature kept as an OCI 1.1 referrer of `subject`
/// (`cosign sign --registry-referrers-mode=oci-1-1`): its manifest, with
/// the payload stored as a blob.
fn signature_artifact(
    upstream: &FakeUpstream,
    subject: &str,
    by: &Signer,
    reference: &str,
) -> Vec<u8> {
    let signed = payload(subject, reference);
    let payload_digest = upstream.put_blob(signed.clone());
    let empty = upstream.put_blob(&b"{}"[..]);
    let base64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": signature::payload::SIGNATURE_ARTIFACT,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{
            "mediaType": signature::payload::SIMPLE_SIGNING,
            "digest": payload_digest,
            "size": signed.len(),
            "annotations": {signature::payload::SIGNATURE_ANNOTATION: base64.encode(by.sign(&signed))},
        }],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_kept_as_a_referrer_counts_once_the_sig_tag_has_none() {
    let upstream = FakeUpstream::start().await;
    let (trusted, stranger) = (signer(), signer());
    let image = |n: u8| image_manifest(&[n], &[&[n, n]]);
    let reference = "docker.io/app";
    let by_referrer = upstream.put_manifest("referred", image(1));
    let by_stranger = upstream.put_manifest("stranger", image(2));
    let by_tag = upstream.put_manifest("tagged", image(3));
    for (subject, who) in [(&by_referrer, &trusted), (&by_stranger, &stranger)] {
        let artifact = signature_artifact(&upstream, subject, who, reference);
        let artifact = upstream.put_manifest(&format!("artifact-{subject}"), artifact);
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": artifact, "size": 1,
                           "artifactType": signature::payload::SIGNATURE_ARTIFACT}],
        });
        upstream.put_referrers(subject, list);
    }
    // The same artifact under the `.sig` tag: no referrers asked.
    let tag = signature::signature_tag(&Digest::parse(&by_tag).unwrap());
    upstream.put_manifest(
        &tag,
        signature_artifact(&upstream, &by_tag, &trusted, reference),
    );

    let work = TempDir::new().unwrap();
    let key = work.path().join("trusted.pub");
    std::fs::write(&key, trusted.pem()).unwrap();
    let mut settings = config(&[("docker.io", &upstream.url())]);
    settings.upstreams[0].signatures = vec![signed_by("team-signed", &["library/*"], vec![key])];
    let lasti = Lasti::start_with(settings, None).await;

    // A HEAD first, as docker asks: checked as a GET is.
    let first = |tag: &str| {
        let url = format!("{}/v2/app/manifests/{tag}", lasti.url());
        async move {
            head(&url, &[("accept", OCI_MANIFEST)])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(first("tagged").await, 200);
    assert_eq!(first("stranger").await, 403);
    expect(
        &lasti,
        "app",
        &["referred", by_referrer.as_str()],
        OCI_MANIFEST,
        None,
    )
    .await;
    expect(
        &lasti,
        "app",
        &["tagged", by_tag.as_str()],
        OCI_MANIFEST,
        None,
    )
    .await;
    expect(
        &lasti,
        "app",
        &["stranger"],
        OCI_MANIFEST,
        Some("no signature is by a trusted key"),
    )
    .await;
    let referrers = |subject: &str| {
        upstream.count(
            http::Method::GET,
            &format!("/v2/library/app/referrers/{subject}"),
        )
    };
    assert_eq!(
        referrers(&by_referrer),
        1,
        "asked once: the verdict is kept"
    );
    assert_eq!(referrers(&by_tag), 0, "a valid .sig signature is enough");
    let sig_tag = |subject: &str| {
        let tag = signature::signature_tag(&Digest::parse(subject).unwrap());
        upstream.count(
            http::Method::GET,
            &format!("/v2/library/app/manifests/{tag}"),
        )
    };
    assert_eq!(sig_tag(&by_referrer), 1, "the .sig tag is asked first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_image_is_back_filled_with_its_signature_and_a_refused_one_not_at_all() {
    let upstream = Upstream::start();
    let host = upstream.registry.host();
    let target = Registry::start_with(common::registry::RegistryOptions {
        htpasswd: Some(("unused".into(), "sa-token".into())),
        ..Default::default()
    });
    let trusted = signer();
    let reference = format!("{host}/team/app:signed");
    let signed = upstream
        .publish(
            2941,
            "team/app:signed",
            Some(Signing::new(&trusted, &reference)),
        )
        .await;
    let unsigned = upstream.publish(2942, "team/app:unsigned", None).await;

    let key = upstream.key_file("trusted", &trusted);
    let mut settings = config(&[("docker.io", &upstream.registry.url())]);
    settings.upstreams[0].signatures = vec![signed_by("team-signed", &["team/*"], vec![key])];
    settings.target.url = Some(url::Url::parse(&target.url()).unwrap());
    settings.target.project = Some("proj".into());
    settings.target.token = Some(lasti::secret::Secret::new("sa-token".into()));
    let lasti = Lasti::start_with(settings, None).await;

    expect(&lasti, "team/app", &["signed"], OCI_MANIFEST, None).await;
    expect(
        &lasti,
        "team/app",
        &["unsigned"],
        OCI_MANIFEST,
        Some("it has no signature"),
    )
    .await;
    let status = lasti
        .backfill_status_when(std::time::Duration::from_secs(30), |s| {
            s["recent"].as_array().map_or(0, Vec::len) >= 2
        })
        .await;
    let mut tags: Vec<&str> = status["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["tag"].as_str().unwrap())
        .collect();
    tags.sort();
    let sig_tag = signature::signature_tag(&signed);
    assert_eq!(tags, [sig_tag.as_str(), "signed"], "{status:#}");

    // The project holds the image and its signature, and never the refused one.
    let target_repo = status["recent"][0]["target_repo"].as_str().unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("unused:sa-token")
    );
    let at_target = |reference: String| {
        let url = format!("{}/v2/{target_repo}/manifests/{reference}", target.url());
        let basic = basic.clone();
        async move {
            get(&url, &[("accept", OCI_MANIFEST), ("authorization", &basic)])
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(at_target(signed.to_string()).await, 200);
    assert_eq!(at_target(sig_tag.clone()).await, 200);
    assert_eq!(at_target(unsigned.to_string()).await, 404);
    assert_eq!(at_target("unsigned".into()).await, 404);
}
