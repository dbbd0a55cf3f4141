//! The cache's own tests: eviction races, hot blobs, and hits beside stalled fills.

use super::*;
use std::time::Duration;

async fn open(dir: &Path, quota: u64) -> Cache {
    let config = CacheConfig {
        max_size: bytesize::ByteSize::b(quota),
        ..CacheConfig::default()
    };
    Cache::open(dir, &config, Default::default()).await.unwrap()
}

/// Fills `content` through the cache as an upstream fetch would.
async fn fill(cache: &Cache, content: &[u8]) -> Digest {
    let digest = Digest::sha256_of(content);
    let BlobLookup::Missing(mut writer, _) = cache.lookup(&digest).await.unwrap() else {
        panic!("{digest} is already stored or filling");
    };
    writer.start(Some(content.len() as u64), None).unwrap();
    writer.write(Bytes::copy_from_slice(content)).await.unwrap();
    writer.finish().await.unwrap();
    digest
}

/// Starts the fill of a blob `extra` bytes past the size written around
/// the page cache, announced at its size, with content made from `seed`:
/// the content, its digest, the fill's writer and the first client's
/// subscription (on the live channel).
async fn large_fill(
    cache: &Cache,
    extra: usize,
    seed: usize,
) -> (Vec<u8>, Digest, Box<fill::FillWriter>, Subscription) {
    let size = file_writer::DIRECT_FROM_BYTES as usize + extra;
    let content: Vec<u8> = (0..size).map(|i| (i * seed % 251) as u8).collect();
    let digest = Digest::sha256_of(&content);
    let BlobLookup::Missing(mut writer, first) = cache.lookup(&digest).await.unwrap() else {
        panic!("a fresh cache has nothing");
    };
    writer.start(Some(size as u64), None).unwrap();
    (content, digest, writer, first)
}

/// Reads a reader's whole stream on a task of its own; an error item fails
/// the test.
fn read_all(reader: reader::BlobReader) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut all = Vec::new();
        let mut stream = std::pin::pin!(reader.into_stream());
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        all
    })
}

/// What a [`read_all`] task read, once `who` reached the end of the blob
/// (within a minute).
async fn read_to_end(reading: tokio::task::JoinHandle<Vec<u8>>, who: &str) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .unwrap_or_else(|_| panic!("{who} never reached the end of the blob"))
        .unwrap()
}

#[tokio::test]
async fn an_eviction_never_deletes_a_blob_stored_again_since_it_was_chosen() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one block-sized blob, not two.
    let cache = open(dir.path(), 6000).await;
    let a = fill(&cache, &[1; 80]).await;
    // Another blob takes the cache past its quota: `a` is chosen, but its
    // file is not deleted yet.
    let other = Digest::sha256_of(b"other");
    cache.inner.usage.insert(other, 4096, SystemTime::now());
    assert_eq!(cache.inner.usage.take_victims(usize::MAX), vec![a.clone()]);
    // A client asks for `a` meanwhile: it is fetched and stored again.
    assert_eq!(fill(&cache, &[1; 80]).await, a);
    // Then the eviction deletes what it chose.
    cache.inner.remove_victims(vec![a.clone()]);
    let stored = cache.stored_blob(&a).await.unwrap();
    let stored = stored.expect("the re-filled blob is still stored");
    assert_eq!(stored.size, 80);
    assert!(cache.inner.store.path(&a).exists());
}

#[tokio::test]
async fn a_cache_over_its_quota_at_start_evicts_without_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let mut digests = Vec::new();
    for n in 0..20u8 {
        digests.push(fill(&cache, &[n; 1000]).await);
    }
    drop(cache);
    // Restarted with a quota lowered to five blocks.
    let cache = open(dir.path(), 5 * 4096).await;
    let on_disk = || {
        digests
            .iter()
            .filter(|d| cache.inner.store.path(d).exists())
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Eviction is done when the table and the disk agree again.
    while on_disk() > 5 || on_disk() != cache.usage().1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} files left",
            on_disk()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cache.usage().0 <= 5 * 4096);
}

#[tokio::test]
async fn a_blob_not_yet_indexed_is_served_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let stored = fill(&cache, b"stored before the restart").await;
    drop(cache);
    // Opened without its background indexing, as in the moments after
    // start. The first cache's upkeep task may still hold it for a
    // moment (it holds the directory lock and the index while it runs).
    let config = CacheConfig::default();
    let mut attempts = 0;
    let cache = loop {
        match Cache::open_blocking(dir.path(), &config, Default::default()) {
            Ok(cache) => break cache,
            Err(e) if attempts < 100 => {
                attempts += 1;
                tracing::debug!(error = %e, "the first cache is still held");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert!(!cache.indexed());
    let blob = cache.stored_blob(&stored).await.unwrap();
    assert_eq!(blob.expect("found on disk").size, 25);
    assert!(matches!(
        cache.lookup(&stored).await.unwrap(),
        BlobLookup::Stored(_)
    ));
}

#[tokio::test]
async fn an_evicted_manifest_leaves_no_row_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
    let digest = Digest::sha256_of(&bytes);
    let media_type = "application/vnd.oci.image.manifest.v1+json".to_string();
    let manifest = Arc::new(Manifest {
        digest: digest.clone(),
        media_type,
        bytes,
    });
    cache.put_manifest(manifest).await.unwrap();
    assert!(cache.inner.index.manifest_type(&digest).unwrap().is_some());
    cache.inner.usage.forget(&digest);
    cache.inner.remove_victims(vec![digest.clone()]);
    assert_eq!(cache.inner.index.manifest_type(&digest).unwrap(), None);
    assert!(cache.manifest(&digest).await.unwrap().is_none());
}

#[tokio::test]
async fn a_hot_blob_is_served_without_opening_its_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let small_content = vec![3u8; 100];
    let large_content = vec![4u8; 2 * IN_MEMORY_UP_TO as usize];
    let small = fill(&cache, &small_content).await;
    let large = fill(&cache, &large_content).await;
    for digest in [&small, &large] {
        assert!(cache.stored_blob(digest).await.unwrap().is_some());
        // Gone from its name: a hit that opened the file would miss it.
        std::fs::remove_file(cache.inner.store.path(digest)).unwrap();
    }
    let hit = cache.stored_blob(&small).await.unwrap().expect("kept");
    assert_eq!(hit.content.as_deref(), Some(&small_content[..]));
    let hit = cache.stored_blob(&large).await.unwrap().expect("kept open");
    assert!(hit.content.is_none(), "only small blobs are kept in memory");
    let mut buf = vec![0u8; large_content.len()];
    pread::read_exact_at(&hit.file, &mut buf, 0).unwrap();
    assert!(buf == large_content);
    drop(hit);
    // Evicted: forgotten.
    cache.inner.usage.forget(&large);
    cache.inner.remove_victims(vec![large.clone()]);
    assert!(cache.inner.open_blobs.get(&large).is_none());
    assert!(cache.stored_blob(&large).await.unwrap().is_none());
}

#[tokio::test]
async fn a_stored_blob_reads_exactly_the_range_asked_for_or_fails() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let small_content: Vec<u8> = (0..100u8).collect();
    let large_content: Vec<u8> = (0..3 * IN_MEMORY_UP_TO as u32).map(|i| i as u8).collect();
    for content in [small_content, large_content] {
        let digest = fill(&cache, &content).await;
        let blob = cache.stored_blob(&digest).await.unwrap().unwrap();
        let (at, len) = (content.len() / 3, content.len() / 2);
        let part = blob.read_exact(at as u64, len).await.unwrap();
        assert_eq!(&part[..], &content[at..at + len]);
        let whole = blob.read_exact(0, content.len()).await.unwrap();
        assert!(whole == content);
        let past = blob.read_exact(at as u64, content.len()).await;
        assert!(
            past.is_err(),
            "a range past the end is an error, not a short read"
        );
    }
}

#[tokio::test]
async fn a_blob_chosen_for_eviction_while_it_is_opened_is_not_kept_open() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let digest = fill(&cache, &vec![5u8; 2 * IN_MEMORY_UP_TO as usize]).await;
    // Chosen for eviction (out of the usage table) before its file is
    // removed: a hit that opens the file in between must not keep it.
    cache.inner.usage.forget(&digest);
    let open = cache.open_blob(&digest, false).await.unwrap();
    assert!(open.is_some(), "the file is still there");
    assert!(cache.inner.open_blobs.get(&digest).is_none());
    // Stored: kept.
    let kept = fill(&cache, &vec![6u8; 2 * IN_MEMORY_UP_TO as usize]).await;
    cache.open_blob(&kept, false).await.unwrap();
    assert!(cache.inner.open_blobs.get(&kept).is_some());
}

#[tokio::test]
async fn a_manifest_served_from_memory_stays_hot() {
    let dir = tempfile::tempdir().unwrap();
    // Room for three block-sized objects.
    let cache = open(dir.path(), 3 * 4096 + 100).await;
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2,\"hot\":true}");
    let manifest = Arc::new(Manifest {
        digest: Digest::sha256_of(&bytes),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        bytes,
    });
    let m = manifest.digest.clone();
    cache.put_manifest(manifest).await.unwrap();
    let a = fill(&cache, b"a").await;
    let _b = fill(&cache, b"b").await;
    // Served from memory: it must count as used.
    assert!(cache.manifest(&m).await.unwrap().is_some());
    let _c = fill(&cache, b"c").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.inner.store.path(&a).exists() {
        assert!(std::time::Instant::now() < deadline, "never evicted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cache.inner.store.path(&m).exists(),
        "the least recently used blob went, not the hot manifest"
    );
}

#[test]
fn a_hit_never_waits_behind_fills_from_a_stalled_upstream() {
    // A blocking pool far smaller than the fills in flight: a fill that
    // kept a thread for its whole fetch would leave none for the hit.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path(), 1 << 30).await;
        let stored = fill(&cache, b"a cached blob").await;
        let mut writers = Vec::new();
        let mut contents = Vec::new();
        for n in 0..8u8 {
            let content = vec![n; 64 * 1024];
            let digest = Digest::sha256_of(&content);
            let BlobLookup::Missing(mut writer, _) = cache.lookup(&digest).await.unwrap() else {
                panic!("a new blob");
            };
            writer.start(Some(content.len() as u64), None).unwrap();
            // The upstream sends the first half, then stalls.
            writer
                .write(Bytes::copy_from_slice(&content[..32 * 1024]))
                .await
                .unwrap();
            writers.push(writer);
            contents.push(content);
        }
        let hit = tokio::time::timeout(Duration::from_secs(20), cache.stored_blob(&stored))
            .await
            .expect("the hit got a blocking thread while the fills stalled");
        assert!(hit.unwrap().is_some());
        // The stalled fills still complete once the upstream goes on.
        for (mut writer, content) in writers.into_iter().zip(contents) {
            writer
                .write(Bytes::copy_from_slice(&content[32 * 1024..]))
                .await
                .unwrap();
            writer.finish().await.unwrap();
            let digest = Digest::sha256_of(&content);
            assert!(cache.stored_blob(&digest).await.unwrap().is_some());
        }
    });
}

/// Readers that fall behind a large fill written around the page cache,
/// one from the start and one from an unaligned offset, read its file
/// through the page cache (they are two): both get exactly the blob's
/// bytes, the block with the published tail included, whatever the
/// chunking.
#[tokio::test]
async fn readers_behind_a_direct_written_fill_get_every_byte() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let (content, digest, mut writer, first) = large_fill(&cache, 3 * 4096 + 123, 31).await;
    let size = content.len();
    let behind = reader::BlobReader::filling(first, 0, Some(size as u64));
    let BlobLookup::Filling(second) = cache.lookup(&digest).await.unwrap() else {
        panic!("the fill is under way");
    };
    let from = 4096 * 5 + 77;
    let ranged = reader::BlobReader::filling(second, from as u64, Some(size as u64));
    let BlobLookup::Filling(probe) = cache.lookup(&digest).await.unwrap() else {
        panic!("the fill is under way");
    };

    // Chunks of odd sizes, far more than the live channel holds, written
    // before either reader reads anything.
    let mut at = 0;
    let mut step = 1000;
    let mut direct = None;
    while at < size {
        let n = step.min(size - at);
        writer
            .write(Bytes::copy_from_slice(&content[at..at + n]))
            .await
            .unwrap();
        at += n;
        step = step * 7 % 300_001 + 4093;
        if direct.is_none() && at > size / 2 {
            direct = Some(probe.progress.borrow().direct.is_some());
        }
    }
    let reading = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut stream = std::pin::pin!(behind.into_stream());
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.unwrap());
        }
        let mut part = Vec::new();
        let mut stream = std::pin::pin!(ranged.into_stream());
        while let Some(chunk) = stream.next().await {
            part.extend_from_slice(&chunk.unwrap());
        }
        (all, part)
    });
    writer.finish().await.unwrap();
    let (all, part) = tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the readers reach the end of the blob")
        .unwrap();
    assert!(all == content, "the reader behind the fill got other bytes");
    assert!(part == content[from..], "the range reader got other bytes");
    // ext4 and xfs take O_DIRECT; elsewhere the buffered reads were checked.
    eprintln!("written around the page cache: {direct:?}");
}

/// Reads a stored blob's `[start, size)` through a reader, with `delivery`.
async fn read_stored(hit: StoredBlob, start: u64, delivery: reader::Delivery) -> Vec<u8> {
    use futures_util::StreamExt;
    let reader = reader::BlobReader::stored(hit.file, start, hit.size, Some(hit.lease))
        .with_delivery(delivery)
        .reading_around_page_cache(hit.direct_reads);
    let mut all = Vec::new();
    let mut stream = std::pin::pin!(reader.into_stream());
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    all
}

/// A hit of a large blob that is not in the page cache (its fill was
/// written around it) reads it from the disk around the page cache too
/// when it is the blob's only reader, by either delivery and from an
/// unaligned offset, and leaves the page cache as it was; with a second
/// client reading the blob, it reads through the page cache, where the
/// pages it brings in serve the other. Every read gets the blob's bytes.
#[tokio::test]
async fn a_large_uncached_hit_reads_around_the_page_cache_unless_shared() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let size = file_writer::DIRECT_FROM_BYTES as usize + 5 * 4096 + 321;
    let content: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let digest = fill(&cache, &content).await;
    let first_window = |hit: &StoredBlob| {
        mapped::Mapping::new(&hit.file, 0, mapped::WINDOW as usize)
            .unwrap()
            .is_resident()
    };
    let hit = cache.stored_blob(&digest).await.unwrap().unwrap();
    let uncached = !first_window(&hit);
    let from = 4096 * 3 + 5;
    let got = read_stored(hit, from as u64, reader::Delivery::Copied).await;
    assert!(
        got == content[from..],
        "a ranged copied read got other bytes"
    );
    let hit = cache.stored_blob(&digest).await.unwrap().unwrap();
    let got = read_stored(hit, 0, reader::Delivery::Mapped(Arc::default())).await;
    assert!(got == content, "a mapped read got other bytes");
    let hit = cache.stored_blob(&digest).await.unwrap().unwrap();
    if !uncached {
        // tmpfs and file systems without O_DIRECT: the fill went through
        // the page cache, and so did every read; the bytes were checked.
        eprintln!("the fill was written through the page cache; bytes checked only");
        return;
    }
    assert!(
        !first_window(&hit),
        "a lone reader left the page cache alone"
    );

    let other = cache.stored_blob(&digest).await.unwrap().unwrap();
    let got = read_stored(hit, 0, reader::Delivery::Mapped(Arc::default())).await;
    assert!(got == content, "a shared mapped read got other bytes");
    assert!(
        first_window(&other),
        "a shared read went through the page cache"
    );
    drop(other);
}

/// `cache.direct_reads = false`: a lone hit of the same large, uncached
/// blob reads it through the page cache, which then holds it.
#[tokio::test]
async fn without_direct_reads_a_lone_hit_reads_through_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig {
        direct_reads: false,
        ..CacheConfig::default()
    };
    let cache = Cache::open(dir.path(), &config, Default::default())
        .await
        .unwrap();
    let size = file_writer::DIRECT_FROM_BYTES as usize + 4096;
    let content: Vec<u8> = (0..size).map(|i| (i * 13 % 241) as u8).collect();
    let digest = fill(&cache, &content).await;
    let hit = cache.stored_blob(&digest).await.unwrap().unwrap();
    assert!(!hit.direct_reads);
    let window = mapped::Mapping::new(&hit.file, 0, mapped::WINDOW as usize).unwrap();
    if window.is_resident() {
        eprintln!("the fill was written through the page cache; nothing to check");
        return;
    }
    let got = read_stored(hit, 0, reader::Delivery::Copied).await;
    assert!(got == content, "the read got other bytes");
    assert!(window.is_resident(), "the hit went through the page cache");
}

/// The lone reader behind a large fill written around the page cache reads
/// the written blocks around it too (so the page cache stays as the fill
/// left it), and gets exactly the blob's bytes.
#[tokio::test]
async fn a_lone_reader_behind_a_direct_written_fill_reads_around_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let (content, _, mut writer, first) = large_fill(&cache, 2 * 4096 + 77, 17).await;
    let size = content.len();
    let file = Arc::clone(&first.file);
    let progress = first.progress.clone();
    let behind = reader::BlobReader::filling(first, 0, Some(size as u64));
    // Far more chunks than the live channel holds: the reader falls behind.
    for piece in content.chunks(65_536) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let direct = progress.borrow().direct.is_some();
    let reading = read_all(behind);
    writer.finish().await.unwrap();
    let all = read_to_end(reading, "the reader").await;
    assert!(all == content, "the reader behind the fill got other bytes");
    if !direct {
        eprintln!("the fill was written through the page cache; bytes checked only");
        return;
    }
    let window = mapped::Mapping::new(&file, 0, mapped::WINDOW as usize).unwrap();
    assert!(
        !window.is_resident(),
        "the lone reader left the page cache alone"
    );
}

/// Writes the fill's first bytes and waits until it has sent them on its
/// live channel: a client that joins from then on reads the file.
async fn write_first(writer: &mut fill::FillWriter, first: &[u8], live: &Subscription) {
    writer.write(Bytes::copy_from_slice(first)).await.unwrap();
    let mut progress = live.progress.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| p.streamed > 0),
    )
    .await
    .expect("the fill streams its first bytes")
    .expect("the fill is under way");
}

/// A large fill written around the page cache, with the client that
/// started it on the live channel (never reading, so never reading the
/// file either) and a client that joined late, which reads the file; the
/// late client's bytes are checked. Whether the fill offered its readers
/// its `O_DIRECT` handle, and whether the file's first window is in the
/// page cache afterwards.
async fn late_reader_of_a_large_fill(config: CacheConfig) -> (bool, bool) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path(), &config, Default::default())
        .await
        .unwrap();
    let (content, digest, mut writer, live) = large_fill(&cache, 4096 + 55, 19).await;
    let size = content.len();
    assert!(
        live.live.is_some(),
        "the first client is on the live channel"
    );
    let file = Arc::clone(&live.file);
    write_first(&mut writer, &content[..65_536], &live).await;
    let late = cache.filling(&digest).expect("the fill is under way");
    assert!(late.live.is_none(), "a late joiner reads the file");
    let late = reader::BlobReader::filling(late, 0, Some(size as u64));
    for piece in content[65_536..].chunks(65_536) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let reading = read_all(late);
    writer.finish().await.unwrap();
    let all = read_to_end(reading, "the late reader").await;
    assert!(all == content, "the late reader got other bytes");
    let announced = live.progress.borrow().direct.is_some();
    let window = mapped::Mapping::new(&file, 0, mapped::WINDOW as usize).unwrap();
    (announced, window.is_resident())
}

/// Readers on a fill's live channel read no file, so they do not count
/// against the lone reader of the file: a client that joined a direct-
/// written fill late reads its blocks around the page cache even while the
/// client that started the fill is still on the channel. With
/// `cache.direct_reads = false`, it reads them through the page cache.
#[tokio::test]
async fn live_readers_do_not_count_against_the_lone_reader_of_a_fill_file() {
    let (direct, cached) = late_reader_of_a_large_fill(CacheConfig::default()).await;
    if !direct {
        eprintln!("the fill was written through the page cache; bytes checked only");
        return;
    }
    assert!(!cached, "the lone file reader left the page cache alone");
    let off = CacheConfig {
        direct_reads: false,
        ..CacheConfig::default()
    };
    let (direct, cached) = late_reader_of_a_large_fill(off).await;
    assert!(!direct, "no reader is handed the O_DIRECT handle");
    assert!(cached, "the file was read through the page cache");
}

/// Two readers of a fill's file that read it at once both go through the
/// page cache, also once the fill has ended (when nothing but the readers
/// themselves holds the count).
#[tokio::test]
async fn two_readers_of_an_ended_fill_file_share_the_page_cache() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let (content, digest, mut writer, live) = large_fill(&cache, 8192, 23).await;
    let size = content.len();
    let file = Arc::clone(&live.file);
    write_first(&mut writer, &content[..4096], &live).await;
    let a = cache.filling(&digest).expect("the fill is under way");
    let b = cache.filling(&digest).expect("the fill is under way");
    let direct = {
        let progress = a.progress.clone();
        let a = reader::BlobReader::filling(a, 0, Some(size as u64));
        let b = reader::BlobReader::filling(b, 0, Some(size as u64));
        for piece in content[4096..].chunks(1 << 20) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        writer.finish().await.unwrap();
        drop(writer);
        drop(live);
        let direct = progress.borrow().direct.is_some();
        let mut a = std::pin::pin!(a.into_stream());
        let mut b = std::pin::pin!(b.into_stream());
        let first_a = a.next().await.unwrap().unwrap();
        let first_b = b.next().await.unwrap().unwrap();
        assert!(first_a[..] == content[..first_a.len()]);
        assert!(first_b[..] == content[..first_b.len()]);
        direct
    };
    if !direct {
        eprintln!("the fill was written through the page cache; bytes checked only");
        return;
    }
    let first_page = mapped::Mapping::new(&file, 0, 4096).unwrap();
    assert!(
        first_page.is_resident(),
        "the second reader read through the page cache"
    );
}

/// A live reader gets every byte in order, and the blob verifies, when the
/// fill's batches alternate between small ones (written and hashed on one
/// thread) and large ones (hashed on one thread while another writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_small_and_large_reach_a_live_reader_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 30).await;
    let (content, digest, mut writer, live) = large_fill(&cache, 12_345, 29).await;
    let size = content.len();
    let reader = reader::BlobReader::filling(live, 0, Some(size as u64));
    let reading = read_all(reader);
    let sizes = [1_000, 700_000, 3_000, 2_500_000, 100, 1_200_000];
    let mut at = 0;
    for n in sizes.iter().cycle() {
        if at == size {
            break;
        }
        let n = (*n).min(size - at);
        writer
            .write(Bytes::copy_from_slice(&content[at..at + n]))
            .await
            .unwrap();
        at += n;
        // Lets the sink take a small chunk as a batch of its own.
        tokio::task::yield_now().await;
    }
    assert_eq!(writer.finish().await.unwrap(), size as u64);
    let all = read_to_end(reading, "the live reader").await;
    assert!(all == content, "the live reader got other bytes");
    let stored = cache.stored_blob(&digest).await.unwrap().unwrap();
    assert_eq!(stored.size, size as u64);
}

#[tokio::test]
async fn a_source_that_announces_another_size_cannot_take_over_a_fill() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20).await;
    let content = b"twelve bytes";
    let digest = Digest::sha256_of(content);
    let BlobLookup::Missing(mut writer, _) = cache.lookup(&digest).await.unwrap() else {
        panic!("a fresh cache has nothing");
    };
    writer.start(Some(12), None).unwrap();
    // The first source broke off before its first byte; the next one
    // speaks of another blob.
    assert_eq!(
        writer.start(Some(13), None),
        Err(FillError::SizeChanged {
            announced: 12,
            now: 13
        })
    );
    // One that agrees (or does not say) goes on.
    writer.start(Some(12), None).unwrap();
    writer.start(None, None).unwrap();
    writer.write(Bytes::from_static(content)).await.unwrap();
    assert_eq!(writer.finish().await, Ok(12));
}
