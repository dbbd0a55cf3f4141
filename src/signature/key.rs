//! The public keys a signature policy trusts, read from the PEM files
//! cosign writes (`cosign.pub`: a `PUBLIC KEY` block, X.509
//! SubjectPublicKeyInfo), and the one thing done with them: checking a
//! signature over a payload.
//!
//! ring does the cryptography (it is linked for TLS already); the few
//! bytes of SubjectPublicKeyInfo that say which algorithm a key is for are
//! read here. A key ring cannot check (P-521) is refused when the file is
//! read, not when a pull needs it. Ed25519 signatures are checked as pure
//! Ed25519, as containers/image makes them; ring has no Ed25519ph, the
//! pre-hashed variant cosign can make.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

/// One trusted public key.
pub struct PublicKey {
    /// What the key is, for logs and errors (`ecdsa-p256`).
    kind: &'static str,
    /// The algorithms a signature by this key may have been made with,
    /// tried in order (cosign hashes P-384 with SHA-384, containers/image
    /// with SHA-256).
    algorithms: &'static [&'static dyn VerificationAlgorithm],
    /// The key as ring takes it: an uncompressed point, 32 raw bytes, or
    /// an RSAPublicKey.
    bytes: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// id-ecPublicKey (1.2.840.10045.2.1).
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (1.3.132.0.34).
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// secp521r1 (1.3.132.0.35).
const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// id-Ed25519 (1.3.101.112).
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// rsaEncryption (1.2.840.113549.1.1.1).
const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

static P256_ALGORITHMS: [&dyn VerificationAlgorithm; 1] = [&signature::ECDSA_P256_SHA256_ASN1];
static P384_ALGORITHMS: [&dyn VerificationAlgorithm; 2] = [
    &signature::ECDSA_P384_SHA384_ASN1,
    &signature::ECDSA_P384_SHA256_ASN1,
];
static ED25519_ALGORITHMS: [&dyn VerificationAlgorithm; 1] = [&signature::ED25519];
static RSA_ALGORITHMS: [&dyn VerificationAlgorithm; 2] = [
    &signature::RSA_PKCS1_2048_8192_SHA256,
    &signature::RSA_PSS_2048_8192_SHA256,
];

impl PublicKey {
    /// Every `PUBLIC KEY` block of a PEM file's text; `Err` names what is
    /// wrong with the first key that cannot be used.
    pub fn from_pem(text: &str) -> Result<Vec<PublicKey>, String> {
        let mut keys = Vec::new();
        for spki in rustls_pemfile::public_keys(&mut text.as_bytes()) {
            let spki = spki.map_err(|e| format!("not PEM: {e}"))?;
            keys.push(PublicKey::from_spki(spki.as_ref())?);
        }
        if keys.is_empty() {
            return Err("no PUBLIC KEY block".into());
        }
        Ok(keys)
    }

    /// A key from its DER SubjectPublicKeyInfo.
    pub fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
        let bad = |why: &str| format!("not a SubjectPublicKeyInfo: {why}");
        let (spki, rest) =
            der::element(der, der::SEQUENCE).ok_or_else(|| bad("no outer SEQUENCE"))?;
        if !rest.is_empty() {
            return Err(bad("bytes after it"));
        }
        let (algorithm, key) =
            der::element(spki, der::SEQUENCE).ok_or_else(|| bad("no AlgorithmIdentifier"))?;
        let (oid, parameters) =
            der::element(algorithm, der::OID).ok_or_else(|| bad("no algorithm OID"))?;
        let (bits, _) =
            der::element(key, der::BIT_STRING).ok_or_else(|| bad("no key BIT STRING"))?;
        // The first byte counts unused bits, 0 for every key here.
        let bytes = match bits.split_first() {
            Some((0, bytes)) => bytes.to_vec(),
            _ => return Err(bad("a key BIT STRING with unused bits")),
        };
        let (kind, algorithms): (&str, &'static [&'static dyn VerificationAlgorithm]) = match oid {
            EC_PUBLIC_KEY => {
                let (curve, _) =
                    der::element(parameters, der::OID).ok_or_else(|| bad("no named curve"))?;
                match curve {
                    P256 => ("ecdsa-p256", &P256_ALGORITHMS),
                    P384 => ("ecdsa-p384", &P384_ALGORITHMS),
                    P521 => {
                        return Err(
                            "ECDSA P-521 keys are not supported (ring cannot check them)".into(),
                        )
                    }
                    _ => return Err("an ECDSA key on an unknown curve".into()),
                }
            }
            ED25519 => ("ed25519", &ED25519_ALGORITHMS),
            RSA => ("rsa", &RSA_ALGORITHMS),
            _ => return Err(
                "a key of an unknown algorithm (ECDSA P-256/P-384, Ed25519 and RSA are supported)"
                    .into(),
            ),
        };
        Ok(PublicKey {
            kind,
            algorithms,
            bytes,
        })
    }

    /// What the key is (`ecdsa-p256`, `ecdsa-p384`, `ed25519`, `rsa`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The key's own bytes, which tell it from any other key.
    pub fn identity(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether `signature` (ASN.1 DER for ECDSA, raw for Ed25519 and RSA)
    /// is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.algorithms.iter().any(|algorithm| {
            UnparsedPublicKey::new(*algorithm, &self.bytes)
                .verify(message, signature)
                .is_ok()
        })
    }
}

/// The DER that SubjectPublicKeyInfo needs: definite lengths, one element
/// at a time.
mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const OID: u8 = 0x06;
    pub const BIT_STRING: u8 = 0x03;

    /// The content of the element of type `tag` at the start of `input`,
    /// and what follows it.
    pub fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&first, rest) = input.split_first()?;
        if first != tag {
            return None;
        }
        let (&length, rest) = rest.split_first()?;
        let (length, rest) = match length {
            0..=0x7f => (usize::from(length), rest),
            0x81..=0x84 => {
                let count = usize::from(length & 0x7f);
                if rest.len() < count {
                    return None;
                }
                let (bytes, rest) = rest.split_at(count);
                let length = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
                (length, rest)
            }
            _ => return None,
        };
        (rest.len() >= length).then(|| rest.split_at(length))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

    /// SubjectPublicKeyInfo of a P-256 point.
    pub(in crate::signature) fn p256_spki(point: &[u8]) -> Vec<u8> {
        ec_spki(P256, point)
    }

    /// SubjectPublicKeyInfo of an EC point on `curve`.
    fn ec_spki(curve: &[u8], point: &[u8]) -> Vec<u8> {
        let mut algorithm = vec![0x06, EC_PUBLIC_KEY.len() as u8];
        algorithm.extend_from_slice(EC_PUBLIC_KEY);
        algorithm.extend_from_slice(&[0x06, curve.len() as u8]);
        algorithm.extend_from_slice(curve);
        let mut inner = vec![0x30, algorithm.len() as u8];
        inner.extend_from_slice(&algorithm);
        inner.extend_from_slice(&[0x03, (point.len() + 1) as u8, 0]);
        inner.extend_from_slice(point);
        let mut out = vec![0x30, inner.len() as u8];
        out.extend_from_slice(&inner);
        out
    }

    fn pem(der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n")
    }

    #[test]
    fn a_p256_key_checks_its_own_signatures_only() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let spki = ec_spki(P256, pair.public_key().as_ref());
        let keys = PublicKey::from_pem(&pem(&spki)).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kind(), "ecdsa-p256");
        let signature = pair.sign(&rng, b"payload").unwrap();
        assert!(keys[0].verifies(b"payload", signature.as_ref()));
        assert!(!keys[0].verifies(b"payload!", signature.as_ref()));
        let mut altered = signature.as_ref().to_vec();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(!keys[0].verifies(b"payload", &altered));
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        assert!(PublicKey::from_pem("nothing here")
            .unwrap_err()
            .contains("no PUBLIC KEY"));
        let err = PublicKey::from_spki(&ec_spki(P521, &[4; 65])).unwrap_err();
        assert!(err.contains("P-521"), "{err}");
        assert!(PublicKey::from_spki(&[0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
        assert!(PublicKey::from_spki(&[]).is_err());
    }
}
