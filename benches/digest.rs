//! Digest verification throughput: every byte lasti fetches is hashed once.
//! Compares the `sha2` crate (what lasti uses; SHA-NI detected at run time)
//! with ring's SHA-256 (already linked through rustls).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lasti::oci::{Algorithm, Hasher};

const CHUNK: usize = 64 * 1024;

fn digest(c: &mut Criterion) {
    let data = vec![0x5au8; 8 * 1024 * 1024];
    let mut group = c.benchmark_group("sha256_8MiB_in_64KiB_chunks");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function(BenchmarkId::from_parameter("sha2"), |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            for chunk in data.chunks(CHUNK) {
                h.update(chunk);
            }
            h.finish()
        })
    });
    group.bench_function(BenchmarkId::from_parameter("ring"), |b| {
        b.iter(|| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for chunk in data.chunks(CHUNK) {
                ctx.update(chunk);
            }
            ctx.finish()
        })
    });
    group.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
