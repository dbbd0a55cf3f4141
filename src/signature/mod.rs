//! Signed images only: whether a manifest carries a valid cosign
//! signature by one of a policy's keys.
//!
//! A signature is valid for a manifest when one of the trusted keys
//! signed the payload, the payload claims exactly that manifest's digest
//! (`critical.image.docker-manifest-digest`), and, when the policy asks,
//! names its repository (`critical.identity.docker-reference`, compared
//! without the registry host: lasti serves the image under its own). The
//! payload's bytes are checked against their digest first, so a registry
//! cannot swap them. Keyless signatures (Fulcio certificates, Rekor
//! entries) need the internet and are not trusted: a bundle or
//! certificate beside a signature is ignored, and only the keys decide.

pub mod key;
pub mod payload;
pub mod policy;

use bytes::Bytes;

pub use key::PublicKey;
pub use payload::{is_attachment, is_attachment_tag, signature_tag, signatures, Signed};
pub use policy::{Policies, Policy};

use crate::oci::{Digest, Hasher};

/// Why a manifest is refused under a policy, for the client's error, the
/// log and the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// No signature at all (no `.sig` tag, or none in it).
    NoSignature,
    /// Signatures, but none by a trusted key.
    UnknownKey,
    /// A trusted key signed a payload that is not a container image
    /// signature, or names another repository.
    WrongPayload,
    /// A trusted key signed another manifest's digest.
    DigestMismatch,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 4] = [
        Refusal::NoSignature,
        Refusal::UnknownKey,
        Refusal::WrongPayload,
        Refusal::DigestMismatch,
    ];

    /// A fixed label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoSignature => "no_signature",
            Refusal::UnknownKey => "unknown_key",
            Refusal::WrongPayload => "wrong_payload",
            Refusal::DigestMismatch => "digest_mismatch",
        }
    }

    /// The reason in words, for the client's `DENIED`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoSignature => "it has no signature",
            Refusal::UnknownKey => "no signature is by a trusted key",
            Refusal::WrongPayload => "the signed payload is not for this repository",
            Refusal::DigestMismatch => "the signed payload names another manifest digest",
        }
    }
}

/// Checks the signatures of `digest` (each with its payload's bytes as
/// read) against `keys`; `repository` (as the upstream names it), when
/// given, must be the one each payload names. `Ok` with the kind of the
/// key that signed; else the most telling refusal among the signatures.
pub fn verify(
    digest: &Digest,
    repository: Option<&str>,
    keys: &[PublicKey],
    signed: &[(Signed, Bytes)],
) -> Result<&'static str, Refusal> {
    let mut refusal = Refusal::NoSignature;
    for (signature, bytes) in signed {
        let mut hasher = Hasher::new(signature.payload.algorithm());
        hasher.update(bytes);
        if hasher.finish() != signature.payload {
            continue;
        }
        let Some(key) = keys
            .iter()
            .find(|k| k.verifies(bytes, &signature.signature))
        else {
            refusal = refusal.max(Refusal::UnknownKey);
            continue;
        };
        let Some(claim) = payload::claim(bytes) else {
            refusal = refusal.max(Refusal::WrongPayload);
            continue;
        };
        if claim.digest != digest.as_str() {
            refusal = refusal.max(Refusal::DigestMismatch);
            continue;
        }
        if repository.is_some_and(|r| !payload::names_repository(&claim.reference, r)) {
            refusal = refusal.max(Refusal::WrongPayload);
            continue;
        }
        return Ok(key.kind());
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    struct Signer {
        pair: EcdsaKeyPair,
        spki: Vec<u8>,
    }

    impl Signer {
        fn key(&self) -> PublicKey {
            PublicKey::from_spki(&self.spki).unwrap()
        }
    }

    fn signer() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let spki = key::tests::p256_spki(pair.public_key().as_ref());
        Signer { pair, spki }
    }

    fn sign(signer: &Signer, digest: &str, reference: &str) -> (Signed, Bytes) {
        let payload = serde_json::json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": payload::SIGNATURE_TYPE
            },
            "optional": null
        });
        let bytes = Bytes::from(payload.to_string());
        let signature = signer.pair.sign(&SystemRandom::new(), &bytes).unwrap();
        let signed = Signed {
            payload: Digest::sha256_of(&bytes),
            size: bytes.len() as u64,
            signature: signature.as_ref().to_vec(),
        };
        (signed, bytes)
    }

    #[test]
    fn a_signature_counts_for_its_digest_its_repository_and_its_key() {
        let (trusted, stranger) = (signer(), signer());
        let digest = Digest::sha256_of(b"manifest");
        let other = Digest::sha256_of(b"another manifest");
        let keys = [trusted.key()];
        let good = sign(&trusted, digest.as_str(), "registry.example/team/app:v1");
        let check =
            |signed: &[(Signed, Bytes)], repo: Option<&str>| verify(&digest, repo, &keys, signed);

        assert_eq!(
            check(std::slice::from_ref(&good), Some("team/app")),
            Ok("ecdsa-p256")
        );
        assert_eq!(check(std::slice::from_ref(&good), None), Ok("ecdsa-p256"));
        assert_eq!(check(&[], Some("team/app")), Err(Refusal::NoSignature));
        let by_stranger = sign(&stranger, digest.as_str(), "registry.example/team/app:v1");
        assert_eq!(
            check(std::slice::from_ref(&by_stranger), None),
            Err(Refusal::UnknownKey)
        );
        let for_other = sign(&trusted, other.as_str(), "registry.example/team/app:v1");
        assert_eq!(
            check(std::slice::from_ref(&for_other), None),
            Err(Refusal::DigestMismatch)
        );
        assert_eq!(
            check(std::slice::from_ref(&good), Some("team/other")),
            Err(Refusal::WrongPayload)
        );
        // One good signature among bad ones is enough; the worst is told.
        assert_eq!(
            check(
                &[by_stranger.clone(), for_other.clone(), good.clone()],
                None
            ),
            Ok("ecdsa-p256")
        );
        assert_eq!(
            check(&[by_stranger, for_other], None),
            Err(Refusal::DigestMismatch)
        );
        // Payload bytes swapped under the signature's digest: not counted.
        let (signed, _) = good;
        let swapped = Bytes::from_static(b"{}");
        assert_eq!(check(&[(signed, swapped)], None), Err(Refusal::NoSignature));
    }
}
