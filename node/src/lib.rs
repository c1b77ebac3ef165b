//! The node's code behind its two binaries: `qkd-node` (the daemon, its checks and the demo) and
//! `qkdctl` (the operator's tool, which reuses the configuration parser and the offline checks).
//! The configuration parser is also what the `config_toml` fuzz target (docs/fuzzing.md) and its
//! corpus test run on text without any file. Nothing else depends on this crate.

#![forbid(unsafe_code)]

pub mod alarms;
pub mod audit;
pub mod check;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod etsi015;
pub mod monitor;
pub mod operations;
pub mod reload;
pub mod rotate;
pub mod siem;
pub mod status;
pub mod telemetry;

/// The body of the `config_toml` fuzz target: arbitrary bytes as the text of a node's
/// configuration, parsed and checked by [`config::NodeConfig::parse`] (which reads no file).
/// It must answer with a configuration or an error naming a key, never panic; a configuration it
/// accepts must hold what its checks promise.
#[doc(hidden)]
pub fn fuzz_config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/fuzz/node.toml");
    match config::NodeConfig::parse(path, text) {
        Ok(cfg) => {
            let l = &cfg.limits;
            assert!(l.min_key_size <= l.key_size && l.key_size <= l.max_key_size);
            assert!(l.key_size > 0 && l.key_size % 8 == 0);
            assert!(l.max_key_per_request > 0);
            assert!(cfg.node.data_dir.is_absolute(), "paths are made absolute");
            assert!(cfg.tls.cert.is_absolute() && cfg.tls.key.is_absolute());
            for lk in &cfg.links {
                assert!(lk.capacity_bytes > 0);
            }
        }
        Err(e) => {
            assert_eq!(e.file, path);
            assert!(!e.key.is_empty(), "an error names where the problem is");
        }
    }
}
