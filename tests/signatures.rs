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

mod common;

use std::path::Path;

use base64::Engine;
use bytes::Bytes;
use common::http::get;
use common::oci_layout::{ImageSpec, Layout};
use common::registry::Registry;
use common::skopeo;
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
    let spec = ImageSpec::linux_amd64(2901, &[4096]);
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
