//! The tester's configuration file: which KMEs, which SAE identities, how many keys it may use.
//!
//! ```toml
//! ca = "pki/ca.crt"        # CA of the KMEs' server certificates
//! max_keys = 300           # never consume more keys than this (default 300)
//! read_only = false        # true: status and requests that cannot deliver a key only
//!
//! [master]                 # the SAE that calls enc_keys
//! url = "https://kme-a.example:443"
//! sae_id = "ENC-A1"
//! cert = "pki/sae-ENC-A1.crt"
//! key = "pki/sae-ENC-A1.key"
//!
//! [slave]                  # the SAE named as slave; calls dec_keys at its own KME
//! url = "https://kme-b.example:443"
//! sae_id = "ENC-B1"
//! cert = "pki/sae-ENC-B1.crt"
//! key = "pki/sae-ENC-B1.key"
//!
//! [third]                  # optional: an SAE at the slave's KME that is neither master nor
//! url = "https://kme-b.example:443"   # slave of the test keys (401 cases; multicast target)
//! sae_id = "ENC-B2"
//! cert = "pki/sae-ENC-B2.crt"
//! key = "pki/sae-ENC-B2.key"
//! ```
//!
//! Relative paths are read from the configuration file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// CA certificates (PEM) the KMEs' server certificates chain to.
    pub ca: PathBuf,
    /// Most keys the run may consume (delivered by enc_keys), counted at the worst case of every
    /// case: a KME that wrongly answers an error case with keys counts too.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// Only requests that cannot deliver a key, even from a faulty KME (production devices).
    #[serde(default)]
    pub read_only: bool,
    /// The master SAE.
    pub master: Sae,
    /// The slave SAE.
    pub slave: Sae,
    /// A third SAE at the slave's KME, neither master nor slave of the test keys.
    #[serde(default)]
    pub third: Option<Sae>,
}

fn default_max_keys() -> u32 {
    300
}

/// One SAE identity and the KME it talks to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sae {
    /// Base URL of its KME (`https://host:port`, optionally with a path prefix).
    pub url: String,
    /// Its SAE ID, as the KMEs know it.
    pub sae_id: String,
    /// Its certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The configuration file cannot be used. Caused by the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is invalid (the message names line and member).
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// toml's message, with line and column.
        message: String,
    },
}

impl Config {
    /// Reads a configuration file; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.ca = base.join(&config.ca);
        for sae in [
            Some(&mut config.master),
            Some(&mut config.slave),
            config.third.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            sae.cert = base.join(&sae.cert);
            sae.key = base.join(&sae.key);
        }
        Ok(config)
    }
}
