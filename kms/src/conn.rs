//! Connection caps of the TLS front doors (the ETSI 014 port and the node-to-node port): how many
//! connections one client identity may hold at once, and a rate-limited warning whenever a cap
//! refuses a connection.
//!
//! A total cap alone lets one authenticated client take every slot (connections that send headers
//! and then nothing); a per-identity cap leaves room for everyone else. The identity is what the
//! server read from the client certificate after the handshake, so the cap cannot be dodged by
//! opening connections from other addresses. This module holds counters only; it never reads a
//! certificate, a socket or a clock other than for rate-limiting its own log lines.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections per client identity and refuses those beyond a cap.
#[derive(Debug)]
pub struct ClientCaps<K: Eq + Hash> {
    /// Most connections per identity.
    per_client: usize,
    /// Open connections per identity; an identity with none has no entry (the map stays as
    /// small as the set of connected clients).
    open: Mutex<HashMap<K, usize>>,
    /// Refusals are logged, but not once per refused connection.
    log: CapLog,
}

impl<K: Eq + Hash + Clone + Display> ClientCaps<K> {
    /// Caps every identity at `per_client` connections; `port` names the port in log lines.
    pub fn new(per_client: usize, port: &'static str) -> Arc<Self> {
        Arc::new(Self {
            per_client,
            open: Mutex::new(HashMap::new()),
            log: CapLog::new(port),
        })
    }

    /// A slot for one more connection of `client`, held until the returned guard drops; `None`
    /// (and a rate-limited warning) if `client` already holds its cap.
    pub fn try_acquire(self: &Arc<Self>, client: K) -> Option<ClientSlot<K>> {
        {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = open.entry(client.clone()).or_insert(0);
            if *n >= self.per_client {
                drop(open);
                self.log.refused(|suppressed| {
                    tracing::warn!(
                        client = %client,
                        cap = self.per_client,
                        suppressed,
                        "{}: client {client} holds its cap of {} connections; refusing more \
                         ({suppressed} other refusals since the last warning)",
                        self.log.port,
                        self.per_client,
                    );
                });
                return None;
            }
            *n += 1;
        }
        Some(ClientSlot {
            caps: self.clone(),
            client,
        })
    }

    /// Connections `client` holds now.
    pub fn open(&self, client: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(client).copied().unwrap_or(0)
    }
}

/// One connection's place under its client's cap; dropping it frees the place.
#[derive(Debug)]
pub struct ClientSlot<K: Eq + Hash> {
    caps: Arc<ClientCaps<K>>,
    client: K,
}

impl<K: Eq + Hash> Drop for ClientSlot<K> {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A warning at most every [`CapLog::INTERVAL`], counting the refusals in between.
#[derive(Debug)]
pub struct CapLog {
    port: &'static str,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl CapLog {
    /// Shortest time between two warnings of one cap.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// A log for the cap of `port`.
    pub fn new(port: &'static str) -> Self {
        Self {
            port,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Records a refusal; calls `warn` with the number of refusals not logged since the last
    /// warning if the interval has passed, else only counts.
    pub fn refused(&self, warn: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(t) if now.saturating_duration_since(t) < Self::INTERVAL => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                *last = Some(now);
                warn(self.suppressed.swap(0, Ordering::Relaxed));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_client_and_frees_on_drop() {
        let caps = ClientCaps::new(2, "test");
        let a1 = caps.try_acquire("a".to_string()).unwrap();
        let _a2 = caps.try_acquire("a".to_string()).unwrap();
        assert!(caps.try_acquire("a".to_string()).is_none());
        // Another client is not affected.
        let _b = caps.try_acquire("b".to_string()).unwrap();
        assert_eq!(caps.open(&"a".to_string()), 2);
        drop(a1);
        assert_eq!(caps.open(&"a".to_string()), 1);
        let _a3 = caps.try_acquire("a".to_string()).unwrap();
    }

    #[test]
    fn log_is_rate_limited() {
        let log = CapLog::new("test");
        let mut warned = Vec::new();
        for _ in 0..5 {
            log.refused(|n| warned.push(n));
        }
        // One warning; the other four refusals are counted for the next one.
        assert_eq!(warned, vec![0]);
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 4);
    }
}
