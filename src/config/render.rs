//! The effective configuration written back as TOML, for `check-config`:
//! a file the loader reads back to the same configuration, with sizes in
//! the units people write ("50 GiB", not 53687091200), durations as
//! humantime strings ("10m"), and secrets shown as `[redacted]`.

use bytesize::ByteSize;
use serde::Serializer;

use super::Config;
use crate::secret::Secret;

/// What stands in for a secret in the output.
pub const REDACTED: &str = "[redacted]";

/// Units a size may be written in, largest first within each family.
const UNITS: [(u64, &str); 10] = [
    (1 << 50, "PiB"),
    (1 << 40, "TiB"),
    (1 << 30, "GiB"),
    (1 << 20, "MiB"),
    (1 << 10, "KiB"),
    (1_000_000_000_000_000, "PB"),
    (1_000_000_000_000, "TB"),
    (1_000_000_000, "GB"),
    (1_000_000, "MB"),
    (1_000, "KB"),
];

impl Config {
    /// The configuration as a TOML file. A password or token read from an
    /// environment variable or a file is left out (the variable or file
    /// name is there); one given inline is `[redacted]`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        for upstream in &mut shown.upstreams {
            if upstream.password_env.is_some() || upstream.password_file.is_some() {
                upstream.password = None;
            }
        }
        if shown.target.token_env.is_some() {
            shown.target.token = None;
        }
        toml::to_string(&shown)
    }
}

/// A size in the largest unit that holds it exactly ("50 GiB", "2 GB"),
/// else in bytes: read back, it is the same number.
pub fn size_text(size: ByteSize) -> String {
    let bytes = size.as_u64();
    let exact = UNITS
        .iter()
        .filter(|(unit, _)| bytes > 0 && bytes % unit == 0)
        .min_by_key(|(unit, _)| bytes / unit);
    match exact {
        Some((unit, name)) => format!("{} {name}", bytes / unit),
        None => format!("{bytes} B"),
    }
}

/// `serialize_with` for a [`ByteSize`].
pub fn size<S: Serializer>(size: &ByteSize, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&size_text(*size))
}

/// `serialize_with` for an optional [`Secret`]: never its value.
pub fn secret<S: Serializer>(secret: &Option<Secret>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str(REDACTED),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Overrides;
    use super::*;

    #[test]
    fn sizes_read_back_to_the_same_number() {
        for bytes in [
            0,
            1,
            4096,
            65536,
            1_000_000,
            1536,
            50 << 30,
            64 << 30,
            2_000_000_000,
            (1 << 40) + 1,
        ] {
            let text = size_text(ByteSize::b(bytes));
            let back: ByteSize = text.parse().unwrap();
            assert_eq!(back.as_u64(), bytes, "{text}");
        }
        assert_eq!(size_text(ByteSize::gib(50)), "50 GiB");
        assert_eq!(size_text(ByteSize::mib(16)), "16 MiB");
        assert_eq!(size_text(ByteSize::gb(2)), "2 GB");
        assert_eq!(size_text(ByteSize::b(1536)), "1536 B");
    }

    /// The example file plus secrets of every kind, loaded as `serve` would.
    fn effective() -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("pw");
        std::fs::write(&password_file, "from-a-file\n").unwrap();
        let text = format!(
            "{}\n[[upstream]]\nname = \"private.example\"\nurl = \"https://private.example\"\n\
             username = \"me\"\npassword = \"inline-secret\"\n\
             [[upstream]]\nname = \"filed.example\"\nurl = \"https://filed.example\"\n\
             username = \"me\"\npassword_file = {:?}\n",
            include_str!("../../config/lasti.toml"),
            password_file.display().to_string(),
        );
        let path = dir.path().join("lasti.toml");
        std::fs::write(&path, text).unwrap();
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        (config, dir)
    }

    #[test]
    fn the_output_reads_back_to_the_same_configuration() {
        let (config, _dir) = effective();
        let text = config.to_toml().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &text).unwrap();
        let mut back = Config::load(Some(&path), Overrides::default()).unwrap();

        // Secrets aside: the inline one reads back as the placeholder.
        let private = back
            .upstreams
            .iter_mut()
            .find(|u| u.name == "private.example")
            .unwrap();
        assert_eq!(private.password.as_ref().unwrap().expose(), REDACTED);
        private.password = Some(Secret::new("inline-secret".into()));
        assert_eq!(back, config, "{text}");
    }

    #[test]
    fn the_output_is_in_the_units_people_write_and_hides_secrets() {
        let (config, _dir) = effective();
        let text = config.to_toml().unwrap();
        for wanted in [
            "max_size = \"50 GiB\"",
            "manifest_memory = \"64 MiB\"",
            "tag_ttl = \"10m\"",
            "shutdown_grace = \"30s\"",
            "admin_listen = \"127.0.0.1:",
            "password = \"[redacted]\"",
        ] {
            assert!(text.contains(wanted), "no {wanted:?} in\n{text}");
        }
        for unwanted in ["inline-secret", "from-a-file", "Some(", "GB\""] {
            assert!(!text.contains(unwanted), "{unwanted:?} in\n{text}");
        }
        assert_eq!(text.matches(REDACTED).count(), 1, "{text}");
    }
}
