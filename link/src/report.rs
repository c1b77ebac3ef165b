//! What `qkd-link` reports on stdout: one JSON object per line, for operators and tests
//! (`listening` with the bound address, `tunnel_open`, `tunnel_closed` with the stream indices
//! whose keys carried data and the error that closed the tunnel, `psk_installed`). Key bytes never appear: only
//! stream IDs and indices. Logs go to stderr (`QKD_LOG`).

use std::io::Write;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::tunnel::Stats;

/// Prints one report line.
pub fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A listener is bound (port 0 becomes the real port here).
pub fn listening(role: &str, addr: std::net::SocketAddr) {
    tracing::info!(role, %addr, "listening");
    emit(json!({"event": "listening", "role": role, "addr": addr.to_string()}));
}

/// A tunnel's key stream is open at this end.
pub fn tunnel_open(conn: u64, ksid: &str, master: bool) {
    tracing::info!(conn, ksid, master, "tunnel opening");
    emit(json!({"event": "tunnel_open", "conn": conn, "key_stream_id": ksid, "master": master}));
}

/// A tunnel closed, cleanly (`error` None) or failed closed.
pub fn tunnel_closed(
    conn: u64,
    ksid: &str,
    master: bool,
    stats: &Stats,
    error: Option<anyhow::Error>,
) {
    let epochs: Vec<u64> = stats
        .epochs
        .lock()
        .map(|e| e.iter().copied().collect())
        .unwrap_or_default();
    let error = error.map(|e| format!("{e:#}"));
    match &error {
        Some(e) => tracing::error!(conn, ksid, "tunnel closed: {e}"),
        None => tracing::info!(conn, ksid, epochs = epochs.len(), "tunnel closed"),
    }
    emit(json!({
        "event": "tunnel_closed",
        "conn": conn,
        "key_stream_id": ksid,
        "master": master,
        "ok": error.is_none(),
        "error": error,
        "epochs": epochs,
        "bytes_sent": stats.sent.load(Ordering::Relaxed),
        "bytes_received": stats.received.load(Ordering::Relaxed),
    }));
}

/// A WireGuard preshared key derived from the stream's key of `index` was installed.
pub fn psk_installed(ksid: &str, index: u64) {
    tracing::info!(ksid, index, "preshared key installed");
    emit(json!({"event": "psk_installed", "key_stream_id": ksid, "index": index}));
}
