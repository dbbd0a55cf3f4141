//! The per-request parsing lasti does before touching any storage: routing
//! the path, validating the name, reference and digest, and the Accept list.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use lasti::oci::{AcceptList, Digest, Reference, RepoName};
use lasti::server::router;

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

criterion_group!(benches, parse);
criterion_main!(benches);
