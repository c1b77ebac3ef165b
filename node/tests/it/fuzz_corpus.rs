//! The `config_toml` fuzz target's body over its committed corpus, as an ordinary test
//! (docs/fuzzing.md): `fuzz/corpus/config_toml/` and `fuzz/regressions/config_toml/`.

#[test]
fn config_toml_corpus() {
    let fuzz_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    qkd_kms::fuzzing::run_corpus(&fuzz_dir, "config_toml", qkd_node::fuzz_config_toml);
}
