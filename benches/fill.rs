//! The tee at the heart of a miss: chunks handed to the fill's sink, written
//! to the cache file, hashed, and streamed to a live reader as the same
//! `Bytes`. Measures a fill of 16 MiB in 64 KiB chunks with one reader,
//! including the verification and the commit (fsync and rename).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
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
    let dir = tempfile::tempdir().unwrap();
    let cache = runtime
        .block_on(Cache::open(
            dir.path(),
            &CacheConfig::default(),
            Default::default(),
        ))
        .unwrap();
    let mut seed = 0u64;
    let mut group = c.benchmark_group("fill_16MiB_64KiB_chunks");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.bench_function("write_hash_stream_commit", |b| {
        b.to_async(&runtime).iter_batched(
            || {
                seed += 1;
                let mut data = vec![0u8; SIZE];
                data[..8].copy_from_slice(&seed.to_le_bytes());
                let data = Bytes::from(data);
                (Digest::sha256_of(&data), data)
            },
            |(digest, data)| {
                let cache = cache.clone();
                async move {
                    let BlobLookup::Missing(mut writer, sub) = cache.lookup(&digest).await.unwrap()
                    else {
                        panic!("every iteration fills a new blob");
                    };
                    let reader = tokio::spawn(async move {
                        let stream = BlobReader::filling(sub, 0, Some(SIZE as u64)).into_stream();
                        let mut stream = std::pin::pin!(stream);
                        let mut got = 0;
                        while let Some(chunk) = stream.next().await {
                            got += chunk.unwrap().len();
                        }
                        got
                    });
                    writer.start(Some(SIZE as u64), None).unwrap();
                    for offset in (0..SIZE).step_by(CHUNK) {
                        writer
                            .write(data.slice(offset..offset + CHUNK))
                            .await
                            .unwrap();
                    }
                    writer.finish().await.unwrap();
                    assert_eq!(reader.await.unwrap(), SIZE);
                }
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, fill);
criterion_main!(benches);
