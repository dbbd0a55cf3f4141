//! The warm list: images lasti pulls into its cache by itself, at start and
//! then on a schedule, so the first deployment of the day never waits on an
//! upstream (and, with back-fill, finds the image stream already there).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::oci::ImageRef;

/// `[warm]`: empty by default (nothing is pulled unasked).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmConfig {
    /// Images as people name them: `centos:7`, `ghcr.io/org/app:v1`,
    /// `python@sha256:...`. Names route like a client's (first component a
    /// registry host, or the default upstream).
    pub images: Vec<String>,
    /// For images that are indexes, the platforms to pull (`linux/amd64`);
    /// empty pulls every platform.
    pub platforms: Vec<String>,
    /// How often the list is pulled again, so moved tags are followed;
    /// `0s` pulls it once, at start.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for WarmConfig {
    fn default() -> Self {
        WarmConfig {
            images: Vec::new(),
            platforms: Vec::new(),
            interval: Duration::from_secs(6 * 3600),
        }
    }
}

impl WarmConfig {
    /// Every image must parse, and every platform be `os/arch[/variant]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for image in &self.images {
            ImageRef::parse(image)
                .map_err(|e| ConfigError::Invalid(format!("warm.images: {e}")))?;
        }
        for platform in &self.platforms {
            let parts = platform.split('/').count();
            if !(2..=3).contains(&parts) || platform.split('/').any(str::is_empty) {
                return Err(ConfigError::Invalid(format!(
                    "warm.platforms: {platform:?} is not os/arch or os/arch/variant"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_platforms_are_checked() {
        let good = WarmConfig {
            images: vec!["centos:7".into(), "ghcr.io/org/app:v1".into()],
            platforms: vec!["linux/amd64".into(), "linux/arm/v7".into()],
            ..WarmConfig::default()
        };
        good.validate().unwrap();
        let bad_image = WarmConfig {
            images: vec!["app@".into()],
            ..WarmConfig::default()
        };
        assert!(bad_image.validate().is_err());
        let bad_platform = WarmConfig {
            platforms: vec!["amd64".into()],
            ..WarmConfig::default()
        };
        assert!(bad_platform.validate().is_err());
    }
}
