//! Deterministic OCI image layouts on disk, for pushing with skopeo.
//!
//! Layers are pseudo-random bytes (incompressible) derived from the image's
//! seed and the layer's index, so the same [`ImageSpec`] always gives the
//! same digests. They are not tar archives unless the spec asks for
//! [`ImageSpec::unpackable`] layers, for clients that unpack what they pull. Layers are streamed to disk in chunks, so a
//! 200 MiB layer never sits in memory. Because the layers are stored
//! uncompressed, each layer's digest is also its `rootfs.diff_ids` entry.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type.
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Uncompressed OCI layer media type.
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation by which `oci:<dir>:<tag>` finds an image in index.json.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Bytes generated, hashed and written per step when streaming a layer.
const CHUNK: usize = 1 << 20;

/// One layer: `size` pseudo-random bytes.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    /// Layer size in bytes.
    pub size: usize,
}

/// One single-platform image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Seeds every layer's bytes: equal seeds give equal layers.
    pub seed: u64,
    /// The layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// `(os, architecture)`, e.g. `("linux", "amd64")`.
    pub platform: (String, String),
    /// Each layer is a tar archive holding one file of random bytes.
    pub tar: bool,
}

impl ImageSpec {
    /// A `linux/amd64` image with layers of the given sizes.
    pub fn linux_amd64(seed: u64, sizes: &[usize]) -> ImageSpec {
        ImageSpec::new(seed, sizes, "linux", "amd64")
    }

    /// An image for `os/arch` with layers of the given sizes.
    pub fn new(seed: u64, sizes: &[usize], os: &str, arch: &str) -> ImageSpec {
        ImageSpec {
            seed,
            layers: sizes.iter().map(|&size| LayerSpec { size }).collect(),
            platform: (os.to_owned(), arch.to_owned()),
            tar: false,
        }
    }

    /// Makes every layer a valid tar archive of exactly its size (one file
    /// of random bytes, then the end-of-archive blocks), so podman and
    /// containerd can unpack the image. Sizes must be multiples of 512 and
    /// at least 2 KiB.
    pub fn unpackable(mut self) -> ImageSpec {
        assert!(
            self.layers
                .iter()
                .all(|l| l.size % 512 == 0 && l.size >= 2048),
            "tar layer sizes are whole 512-byte blocks, at least 2 KiB"
        );
        self.tar = true;
        self
    }
}

/// What [`Layout`] wrote for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:<hex>` of `manifest_bytes`.
    pub manifest_digest: String,
    /// The exact image manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// `sha256:<hex>` of `config_bytes`.
    pub config_digest: String,
    /// The exact image config bytes.
    pub config_bytes: Vec<u8>,
    /// Layer digests, bottom first.
    pub layer_digests: Vec<String>,
    /// Layer sizes in bytes, bottom first.
    pub layer_sizes: Vec<u64>,
}

impl BuiltImage {
    /// Every blob digest the image references: config, then layers.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut digests = vec![self.config_digest.clone()];
        digests.extend(self.layer_digests.iter().cloned());
        digests
    }
}

/// What [`Layout::multi`] wrote: an image index over several images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltIndex {
    /// `sha256:<hex>` of `index_bytes`.
    pub index_digest: String,
    /// The exact image index bytes.
    pub index_bytes: Vec<u8>,
    /// The images, in the index's order.
    pub images: Vec<BuiltImage>,
}

/// An OCI image layout directory with one tagged entry in `index.json`.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The layout's root (holds `oci-layout`, `index.json`, `blobs/`).
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) of its one entry.
    pub tag: String,
}

impl Layout {
    /// Writes a layout at `dir` whose entry `tag` is one image manifest.
    pub fn single(dir: &Path, spec: &ImageSpec, tag: &str) -> (Layout, BuiltImage) {
        let layout = Layout::create(dir, tag);
        let image = layout.put_image(spec);
        layout.write_index_json(
            MT_MANIFEST,
            &image.manifest_digest,
            image.manifest_bytes.len(),
        );
        (layout, image)
    }

    /// Writes a layout at `dir` whose entry `tag` is an image index over one
    /// manifest per spec, each with its `platform`.
    pub fn multi(dir: &Path, specs: &[ImageSpec], tag: &str) -> (Layout, BuiltIndex) {
        let layout = Layout::create(dir, tag);
        let images: Vec<BuiltImage> = specs.iter().map(|spec| layout.put_image(spec)).collect();
        let manifests: Vec<Value> = specs
            .iter()
            .zip(&images)
            .map(|(spec, image)| {
                let mut desc = descriptor(
                    MT_MANIFEST,
                    &image.manifest_digest,
                    image.manifest_bytes.len(),
                );
                desc["platform"] =
                    json!({ "architecture": spec.platform.1, "os": spec.platform.0 });
                desc
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests });
        let index_bytes = to_bytes(&index);
        let index_digest = layout.put_bytes(&index_bytes);
        layout.write_index_json(MT_INDEX, &index_digest, index_bytes.len());
        let built = BuiltIndex {
            index_digest,
            index_bytes,
            images,
        };
        (layout, built)
    }

    /// Path of the blob `sha256:<hex>` inside this layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .expect("digest must be sha256:<hex>");
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// The `oci:<dir>:<tag>` reference skopeo reads this layout by.
    pub fn skopeo_ref(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }

    /// Creates `dir/blobs/sha256` and `dir/oci-layout`.
    fn create(dir: &Path, tag: &str) -> Layout {
        fs::create_dir_all(dir.join("blobs").join("sha256")).expect("create layout blobs dir");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        Layout {
            dir: dir.to_owned(),
            tag: tag.to_owned(),
        }
    }

    /// Writes an image's layers, config and manifest.
    fn put_image(&self, spec: &ImageSpec) -> BuiltImage {
        let layer_digests: Vec<String> = (0..spec.layers.len())
            .map(|index| self.put_layer(spec, index))
            .collect();
        let layer_sizes: Vec<u64> = spec.layers.iter().map(|l| l.size as u64).collect();
        let config_bytes = to_bytes(&config_json(spec, &layer_digests));
        let config_digest = self.put_bytes(&config_bytes);
        let layers: Vec<Value> = layer_digests
            .iter()
            .zip(&spec.layers)
            .map(|(digest, layer)| descriptor(MT_LAYER, digest, layer.size))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": descriptor(MT_CONFIG, &config_digest, config_bytes.len()),
            "layers": layers,
        });
        let manifest_bytes = to_bytes(&manifest);
        let manifest_digest = self.put_bytes(&manifest_bytes);
        BuiltImage {
            manifest_digest,
            manifest_bytes,
            config_digest,
            config_bytes,
            layer_digests,
            layer_sizes,
        }
    }

    /// Streams layer `index` of `spec` to disk and returns its digest.
    fn put_layer(&self, spec: &ImageSpec, index: usize) -> String {
        let tmp = self
            .dir
            .join("blobs")
            .join(format!("tmp-layer-{}-{index}", spec.seed));
        let mut file = File::create(&tmp).expect("create layer temp file");
        let mut rng = SplitMix64::for_layer(spec.seed, index);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = spec.layers[index].size;
        if spec.tar {
            // Header, file content, then two zero blocks end the archive.
            left -= 3 * 512;
            let mut header = tar::Header::new_gnu();
            header.set_path(format!("layer-{index}")).expect("tar path");
            header.set_size(left as u64);
            header.set_mode(0o644);
            header.set_cksum();
            hasher.update(header.as_bytes());
            file.write_all(header.as_bytes()).expect("write tar header");
        }
        while left > 0 {
            let chunk = &mut buf[..left.min(CHUNK)];
            rng.fill(chunk);
            hasher.update(&*chunk);
            file.write_all(chunk).expect("write layer chunk");
            left -= chunk.len();
        }
        if spec.tar {
            let end = [0u8; 2 * 512];
            hasher.update(end);
            file.write_all(&end).expect("write tar end");
        }
        drop(file);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        fs::rename(&tmp, self.blob_path(&digest)).expect("rename layer into blobs/sha256");
        digest
    }

    /// Writes a small blob and returns its digest.
    fn put_bytes(&self, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        fs::write(self.blob_path(&digest), bytes).expect("write blob");
        digest
    }

    /// Writes `index.json` with one entry, annotated with the layout's tag.
    fn write_index_json(&self, media_type: &str, digest: &str, size: usize) {
        let mut desc = descriptor(media_type, digest, size);
        desc["annotations"] = json!({ REF_NAME: self.tag });
        let index = json!({ "schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc] });
        fs::write(self.dir.join("index.json"), to_bytes(&index)).expect("write index.json");
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An OCI content descriptor.
fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// A minimal valid OCI image config; diff_ids equal the (uncompressed) layer digests.
fn config_json(spec: &ImageSpec, layer_digests: &[String]) -> Value {
    json!({
        "architecture": spec.platform.1,
        "os": spec.platform.0,
        "config": { "Env": ["PATH=/usr/bin:/bin"], "Labels": { "lasti.test.seed": spec.seed.to_string() } },
        "rootfs": { "type": "layers", "diff_ids": layer_digests },
        "history": layer_digests.iter().enumerate()
            .map(|(i, _)| json!({ "created_by": format!("lasti test layer {i}") }))
            .collect::<Vec<_>>(),
    })
}

/// Compact JSON bytes.
fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize JSON")
}

/// SplitMix64: tiny, fast even unoptimised, and fixed forever (unlike
/// `StdRng`, whose algorithm may change between rand versions).
struct SplitMix64(u64);

impl SplitMix64 {
    /// A stream for layer `index` of the image seeded with `seed`.
    fn for_layer(seed: u64, index: usize) -> SplitMix64 {
        let mut mixer = SplitMix64(seed);
        let base = mixer.next_u64();
        SplitMix64(base ^ SplitMix64(index as u64).next_u64().rotate_left(17))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}
