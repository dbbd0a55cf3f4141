//! The per-request parsing lasti does before touching any storage: routing
//! the path, validating the name, reference and digest, and the Accept list;
//! and what a signature rule adds to a manifest hit before its verdict is
//! looked up (the rule that matches, the verdict's key).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lasti::config::SignatureRuleConfig;
use lasti::oci::{AcceptList, Digest, Reference, RepoName};
use lasti::server::router;
use lasti::signature::Policies;

const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn parse(c: &mut Criterion) {
    let path = format!("/v2/library/some-org/app/blobs/{DIGEST}");
    c.bench_function("route_blob_path", |b| {
        b.iter(|| router::route(black_box(&path)))
    });
    c.bench_function("repo_name", |b| {
        b.iter(|| RepoName::parse(black_box("library/some-org/app")).unwrap())
    });
    c.bench_function("digest", |b| {
        b.iter(|| Digest::parse(black_box(DIGEST)).unwrap())
    });
    c.bench_function("reference_tag", |b| {
        b.iter(|| Reference::parse(black_box("v1.2.3-alpine")).unwrap())
    });
    c.bench_function("accept_list", |b| {
        b.iter(|| {
            AcceptList::parse([black_box(ACCEPT)]).allows("application/vnd.oci.image.index.v1+json")
        })
    });
}

/// A P-256 public key as cosign writes it (`cosign.pub`).
const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJjc2olCiaOHkXJg18FC5oL23P82U
OD87rg3n+WsMOw/jU6mHC/VQXBUc2MC1uGF39VWbXxOCeM3AKSew9itOVg==
-----END PUBLIC KEY-----
";

fn signature_rule(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    std::fs::write(&key, COSIGN_PUB).unwrap();
    let rules = [
        SignatureRuleConfig {
            name: None,
            repositories: vec!["team/legacy-*".into()],
            keys: Vec::new(),
            unsigned: true,
            check_reference: true,
        },
        SignatureRuleConfig {
            name: None,
            repositories: vec!["team/*".into()],
            keys: vec![key],
            unsigned: false,
            check_reference: true,
        },
    ];
    let policies = Policies::new("docker.io", &rules).unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let digest = Digest::parse(DIGEST).unwrap();
    c.bench_function("signature_rule_and_verdict_key", |b| {
        b.iter(|| {
            let policy = policies.for_repo(black_box(&repo)).unwrap();
            policy.verdict_key("docker.io", &repo, black_box(&digest))
        })
    });
}

criterion_group!(benches, parse, signature_rule);
criterion_main!(benches);
