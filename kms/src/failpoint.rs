//! Test-only crash points, built only with the cargo feature `failpoints` (off by default; the
//! node's default build never enables it). A point, `failpoint!("name")` in this crate, aborts
//! the process when the environment variable [`ENV`] names it, as SIGKILL would: no destructor
//! runs, nothing is flushed, the store sees a crash. Without the feature this module does not
//! exist and the macro expands to nothing, so neither the points nor the variable's name are in
//! the binary.
//!
//! The points sit in the link-key ingest, where a crash leaves a device key fetched by one end
//! of a link and not the other (`docs/devices.md` §9 lists them and what each proves):
//!
//! * `master-after-enc-keys`: the master's device answered `enc_keys`; nothing recorded yet.
//! * `master-after-store`: the new blocks are durable (pending); the peer was not told.
//! * `slave-after-dec-keys`: the slave's device answered `dec_keys`; nothing recorded yet.
//! * `slave-after-store`: the fetched blocks are durable; the master was not answered.

/// The environment variable that names the point to abort at.
pub const ENV: &str = "QKD_FAILPOINT";

/// Every point, as the environment variable names it.
pub const POINTS: [&str; 4] = [
    "master-after-enc-keys",
    "master-after-store",
    "slave-after-dec-keys",
    "slave-after-store",
];

/// Aborts the process if [`ENV`] names `point` (`point`, or `point@N` to abort at its N-th
/// hit rather than its first). Called through the crate's `failpoint!`.
pub fn hit(point: &'static str) {
    static ARMED: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        Some(match value.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (value, 1),
        })
    });
    let Some((name, n)) = armed else { return };
    if name == point && HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == *n {
        // Written straight to stderr (unbuffered): the test reads it from the node's log.
        eprintln!("failpoint {point}: aborting the process");
        std::process::abort();
    }
}
