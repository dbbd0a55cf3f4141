//! The tee at the heart of a miss: chunks written to the cache file, hashed,
//! and handed to a live reader as the same `Bytes`. Measures the per-chunk
//! overhead of a fill of 16 MiB in 64 KiB chunks with one reader.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::StreamExt;
use lasti::cache::reader::BlobReader;
use lasti::cache::{BlobLookup, Cache};
use lasti::config::CacheConfig;
use lasti::oci::Digest;

const SIZE: usize = 16 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn fill(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = Bytes::from(vec![7u8; SIZE]);
    let digest = Digest::sha256_of(&data);
    let mut group = c.benchmark_group("fill_16MiB_64KiB_chunks");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.bench_function("write_hash_and_stream", |b| {
        b.to_async(&runtime).iter(|| {
            let (data, digest) = (data.clone(), digest.clone());
            async move {
                let dir = tempfile::tempdir().unwrap();
                let cache = Cache::open(dir.path(), &CacheConfig::default(), Default::default())
                    .await
                    .unwrap();
                let BlobLookup::Missing(mut writer, sub) = cache.lookup(&digest).await.unwrap()
                else {
                    panic!("a fresh cache has nothing");
                };
                let reader = tokio::spawn(async move {
                    let mut stream = std::pin::pin!(
                        BlobReader::filling(sub, 0, Some(SIZE as u64)).into_stream()
                    );
                    let mut got = 0;
                    while let Some(chunk) = stream.next().await {
                        got += chunk.unwrap().len();
                    }
                    got
                });
                writer.start(Some(SIZE as u64), None);
                for offset in (0..SIZE).step_by(CHUNK) {
                    writer
                        .write(data.slice(offset..offset + CHUNK))
                        .await
                        .unwrap();
                }
                writer.finish().await.unwrap();
                assert_eq!(reader.await.unwrap(), SIZE);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, fill);
criterion_main!(benches);
