//! Deterministic simulation of whole networks of real key managers.
//!
//! One run puts N real [`KeyManager`]s (a chain or a mesh) in one process, on one thread, under
//! a tokio runtime whose clock is simulated (`start_paused`: time jumps to the next timer when
//! every task waits). Everything that could make two runs differ is either simulated or drawn
//! from the run's seed:
//!
//! * **Network.** Neighbours call each other through [`SimLink`] instead of gRPC: every call is
//!   delayed, and some are dropped (request or reply), duplicated, or cut by a partition; a call
//!   to a crashed node fails as a refused connection would.
//! * **Store.** Each node's redb store and its write-ahead log live on a simulated disk that
//!   outlives the node ([`qkd_kms::store::faulty::Disk`]); its writer commits inline
//!   ([`Writer::inline`]). A crash loses every write the store had not synced. Or, with
//!   [`StoreKind::Memory`], the store is the in-memory model ([`MemStore`]), which outlives the
//!   node the same way: the same store operations on another implementation of the store.
//! * **Devices.** Each link is a [`SimulatedLink`] pair on the simulated clock; the master end
//!   keeps its position in a file, which a fault may delete (the device then re-issues key IDs).
//! * **Crashes.** A crash aborts every task of the node at its next await point
//!   ([`KeyManager::halt`]) and drops its memory; the restart rebuilds the node from its disk,
//!   possibly under a newer configuration (a larger key size, a pair moved from `qkd-only` to
//!   hybrid).
//! * **KEK rotations.** An operator rotates a node's KEK while it runs (disk store): a fresh
//!   data-key epoch, then a pass re-encrypting the older epochs one bounded step after each
//!   batch, which a crash may interrupt (the next start finishes it).
//! * **Reloads.** A configuration change reaches the nodes either by restarts or by live reloads
//!   ([`KeyManager::reconfigure`], voiding pools); a node whose reload is refused (it would
//!   strand keys) is restarted instead.
//! * **Workload.** SAEs ask for keys at the master's node (pool and on-demand sizes, and requests
//!   whose pairs differ in policy) and fetch them at the slave's node, sometimes twice.
//!
//! After every step (one workload action or fault, then a random stretch of simulated time) and
//! at every event a node reports ([`Observer`]), the run checks the invariants: no key delivered
//! twice to either side; master and slave copies identical; no key released to the master
//! before the slave's node holds it durably; no byte of link key taken twice at a node (by the
//! device's block ID, so a re-issuing device is caught too); both ends of every link agree on
//! its blocks; every delivered key of the default size has the size configured now, and every
//! key was made under the policy and suite configured now for every pair it reached; and no
//! node refuses a neighbour's message as tampered (the simulated network never alters one).
//!
//! A run is a pure function of its [`Options`]: [`run`] twice gives the same trace (checked by
//! a test), and a failing seed prints the one command that replays it.
//!
//! The faults are an option ([`Faults`]; [`Faults::none`] keeps only the network's delays), and
//! the simulated network counts every peer call by kind ([`Traffic`]): [`scale`] measures how
//! control traffic, route convergence and relay latency grow with the size of the network.

#![forbid(unsafe_code)]

pub mod scale;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qkd_hardware::LinkRole;
use qkd_kms::api::{
    DecKeysRequest, DeliveredKey, EncKeysRequest, KeyLimits, KeyService, OpenStreamRequest,
};
use qkd_kms::core::stream::Qos;
use qkd_kms::events::defects::Defects;
use qkd_kms::events::{Event, Observer};
use qkd_kms::hybrid::{LocalIdentity, NodeSigningKey, PeerPublicKeys, PinnedPeers, Protection};
use qkd_kms::manager::{
    E2eKeys, KeyManager, KeyMode, LinkSetup, ManagerConfig, NeighbourEntry, RelayConfig, SaeEntry,
};
use qkd_kms::peer::{PeerLink, status_of};
use qkd_kms::store::faulty::Disk;
use qkd_kms::store::mem::MemStore;
use qkd_kms::store::vault::FileKek;
use qkd_kms::store::{
    KeyStore, MadeUnder, Op as StoreOp, Outcome as StoreOutcome, SpaceGauge, Store, StoreError,
    StoreOptions, Tables,
};
use qkd_kms::writer::Writer;
use qkd_proto::peer as pb;
use qkd_simulator::link::{SimLinkConfig, SimulatedLink};
use qkd_simulator::model::ConstantRate;
use qkd_types::{
    BlockId, Clock, KeyId, KeyStreamId, KmeId, LinkId, NodeId, SaeId, Secret, UnixMillis,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Status;

/// Shape of the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Nodes `n0 - n1 - ... - n(N-1)` in a line: the end pair is relayed over N-1 hops.
    Chain(usize),
    /// A chain plus N/2 extra links drawn from the seed: several routes, and routing around
    /// failures.
    Mesh(usize),
    /// A random spanning tree (each node `i > 0` linked to a node before it, drawn from the
    /// seed) plus N/2 extra links: an average degree of about 3, the shape of the scaling
    /// measurement ([`scale`]).
    Random(usize),
}

impl Shape {
    fn nodes(self) -> usize {
        match self {
            Shape::Chain(n) | Shape::Mesh(n) | Shape::Random(n) => n.max(2),
        }
    }

    /// The spelling `SIM_SHAPE` takes: `chain5`, `mesh6`.
    pub fn name(self) -> String {
        match self {
            Shape::Chain(n) => format!("chain{n}"),
            Shape::Mesh(n) => format!("mesh{n}"),
            Shape::Random(n) => format!("random{n}"),
        }
    }

    /// Parses [`Shape::name`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(n) = s.strip_prefix("chain") {
            return n.parse().ok().map(Shape::Chain);
        }
        if let Some(n) = s.strip_prefix("random") {
            return n.parse().ok().map(Shape::Random);
        }
        s.strip_prefix("mesh")?.parse().ok().map(Shape::Mesh)
    }
}

/// Which store the nodes keep their keys in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// The redb store on a simulated disk (what a node runs).
    #[default]
    Disk,
    /// The in-memory model of the store ([`MemStore`]).
    Memory,
}

impl StoreKind {
    /// The spelling `SIM_STORE` takes: `disk`, `memory`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Disk => "disk",
            StoreKind::Memory => "memory",
        }
    }

    /// Parses [`StoreKind::name`]'s spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disk" => Some(StoreKind::Disk),
            "memory" => Some(StoreKind::Memory),
            _ => None,
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything random in the run derives from it.
    pub seed: u64,
    /// Steps (workload actions and faults), each followed by a random stretch of time.
    pub steps: u32,
    /// The network.
    pub shape: Shape,
    /// Known defects put back (test seams), to show the run finds them.
    pub defects: Defects,
    /// Which faults the run injects ([`Faults::default`]: all of them).
    pub faults: Faults,
    /// Where nodes keep their keys.
    pub store: StoreKind,
}

/// The faults a run injects. [`Faults::default`] is what the invariant runs use; [`Faults::none`]
/// leaves only the network's delays, for measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Requests lost, per mille of calls (the caller times out).
    pub drop_request_permille: u32,
    /// Replies lost, per mille of calls.
    pub drop_reply_permille: u32,
    /// Requests delivered twice, per mille of calls.
    pub duplicate_permille: u32,
    /// Crashes, partitions, devices that lose their position and configuration changes among
    /// the steps of [`run`] (when off, those steps are quiet stretches instead).
    pub disruptions: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop_request_permille: DROP_REQUEST,
            drop_reply_permille: DROP_REPLY,
            duplicate_permille: DUPLICATE,
            disruptions: true,
        }
    }
}

impl Faults {
    /// No faults: every call arrives once, after its delay; no crash, partition or
    /// configuration change.
    pub fn none() -> Self {
        Faults {
            drop_request_permille: 0,
            drop_reply_permille: 0,
            duplicate_permille: 0,
            disruptions: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Steps run.
    pub steps: u32,
    /// Keys delivered to masters and to slaves.
    pub master_keys: u64,
    /// Keys delivered to slaves.
    pub slave_keys: u64,
    /// Keys delivered to masters for two slaves at once (multicast).
    pub multicast_keys: u64,
    /// Requests refused or failed (no key, node down, mixed profiles...).
    pub refused: u64,
    /// Node crashes.
    pub crashes: u32,
    /// Configuration changes.
    pub config_changes: u32,
    /// Nodes that took a configuration change by a live reload (the others restarted).
    pub reloads: u32,
    /// Devices that lost their position (and re-issued key IDs).
    pub reissues: u32,
    /// Live KEK rotations (each starts a re-encryption pass that runs between batches).
    pub kek_rotations: u32,
    /// Partitions cut.
    pub partitions: u32,
    /// Runs of link key taken.
    pub link_runs: u64,
    /// Waiting keys whose expiry a delivery notice set.
    pub notified_keys: u64,
    /// Pool keys that left their pool past the pool TTL (to be discarded, never served).
    pub expired_pool_keys: u64,
    /// ETSI 004 key streams opened.
    pub streams: u32,
    /// Keys delivered from key streams, both ends together.
    pub stream_keys: u64,
    /// Simulated time, in milliseconds.
    pub sim_ms: u64,
    /// Hash of the trace (the same for two runs of the same options).
    pub trace_hash: u64,
}

/// An invariant that did not hold.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The run.
    pub options: Options,
    /// The step after which it was found.
    pub step: u32,
    /// What was wrong.
    pub what: String,
    /// The last lines of the trace.
    pub trace: Vec<String>,
}

impl Violation {
    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let d = self.options.defects;
        let defects: Vec<&str> = [
            (d.mixed_profiles, "mixed_profiles"),
            (d.stale_keys, "stale_keys"),
            (d.reissued_ids, "reissued_ids"),
            (d.stream_redelivery, "stream_redelivery"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        let mut defects = if defects.is_empty() {
            String::new()
        } else {
            format!("SIM_DEFECTS={} ", defects.join(","))
        };
        if self.options.store != StoreKind::Disk {
            defects += &format!("SIM_STORE={} ", self.options.store.name());
        }
        format!(
            "{defects}SIM_SEED={} SIM_STEPS={} SIM_SHAPE={} cargo test -p qkd-netsim --test it -- \
             replay --exact --nocapture",
            self.options.seed,
            self.options.steps,
            self.options.shape.name()
        )
    }

    /// Parses the `SIM_DEFECTS` spelling of [`Violation::replay_command`].
    pub fn parse_defects(s: &str) -> Option<Defects> {
        let mut d = Defects::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "mixed_profiles" => d.mixed_profiles = true,
                "stale_keys" => d.stale_keys = true,
                "reissued_ids" => d.reissued_ids = true,
                "stream_redelivery" => d.stream_redelivery = true,
                _ => return None,
            }
        }
        Some(d)
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "invariant violated (seed {}, {}, step {}): {}",
            self.options.seed,
            self.options.shape.name(),
            self.step,
            self.what
        )?;
        writeln!(f, "last steps:")?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        write!(f, "replay: {}", self.replay_command())
    }
}

/// Runs one simulation on a fresh single-threaded runtime with simulated time.
pub fn run(options: &Options) -> Result<Outcome, Box<Violation>> {
    run_paused(options.defects, async {
        let mut sim = Sim::new(options.clone());
        sim.drive().await
    })
}

/// Runs `fut` on a fresh single-threaded runtime with simulated time, `defects` put back.
fn run_paused<T>(defects: Defects, fut: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        // Invariant: building a current-thread runtime only fails when the OS is out of
        // resources; the harness cannot run without one.
        .unwrap_or_else(|e| panic!("cannot build the simulation runtime: {e}"));
    qkd_kms::events::defects::set(defects);
    let out = rt.block_on(fut);
    qkd_kms::events::defects::set(Defects::default());
    out
}

// ---------------------------------------------------------------------------------------------
// Configuration of the simulated network.

/// Key size of pool keys under configuration version 0; version 1 and later double it.
const KEY_BITS_V0: u32 = 256;
/// Configuration versions: 0 as started; 1: larger default key size; 2: the `T` pairs move from
/// `qkd-only` to hybrid.
const LAST_VERSION: u32 = 2;
const BLOCK_BITS: u32 = 4096;
const LINK_BPS: u64 = 200_000;
const DEVICE_POLL: Duration = Duration::from_millis(100);
/// Link-state flooding interval of every node.
const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_millis(300);

fn node_id(i: usize) -> NodeId {
    NodeId::parse(&format!("n{i}")).unwrap_or_else(|e| panic!("node ID: {e}"))
}

fn kme_id(i: usize) -> KmeId {
    KmeId::parse(&format!("KME-{i}")).unwrap_or_else(|e| panic!("KME ID: {e}"))
}

fn sae(s: &str) -> SaeId {
    SaeId::parse(s).unwrap_or_else(|e| panic!("SAE ID: {e}"))
}

fn link_id(a: usize, b: usize) -> LinkId {
    LinkId::parse(&format!("n{a}-n{b}")).unwrap_or_else(|e| panic!("link ID: {e}"))
}

/// One SAE pair of the workload.
#[derive(Debug, Clone)]
struct Pair {
    master: SaeId,
    slave: SaeId,
    master_node: usize,
    slave_node: usize,
    /// `qkd-only` until configuration version 2.
    qkd_only_until_v2: bool,
}

/// The pair's mode under configuration `version`.
fn mode_of(qkd_only_until_v2: bool, version: u32) -> KeyMode {
    if qkd_only_until_v2 && version < 2 {
        KeyMode {
            protection: Protection::QkdOnly,
            ..KeyMode::default()
        }
    } else {
        KeyMode::default()
    }
}

fn names(mode: KeyMode) -> MadeUnder {
    MadeUnder {
        policy: mode.policy_name().to_string(),
        suite: mode.suite_name().to_string(),
    }
}

/// The pairs: `S0 -> S(last)` relayed end to end, `S1 -> S2` between neighbours, `T0 -> T(last)`
/// `qkd-only` (until version 2), `S0 -> T(last)`, `qkd-only` too, which makes a request of S0
/// for S(last) with T(last) as additional slave mix two policies, and `S0 -> U(N/2)`, hybrid,
/// which makes a request of S0 for S(last) with U(N/2) as additional slave a multicast to slaves
/// at two nodes.
fn pairs(n: usize) -> Vec<Pair> {
    let last = n - 1;
    let p = |m: &str, mn: usize, s: &str, sn: usize, q: bool| Pair {
        master: sae(m),
        slave: sae(s),
        master_node: mn,
        slave_node: sn,
        qkd_only_until_v2: q,
    };
    vec![
        p("S0", 0, &format!("S{last}"), last, false),
        p("S1", 1, &format!("S{}", 2.min(last)), 2.min(last), false),
        p("T0", 0, &format!("T{last}"), last, true),
        p("S0", 0, &format!("T{last}"), last, true),
        p("S0", 0, &format!("U{}", n / 2), n / 2, false),
    ]
}

fn links_of(shape: Shape, rng: &mut ChaCha8Rng) -> Vec<(usize, usize)> {
    let n = shape.nodes();
    if let Shape::Random(_) = shape {
        let mut links: BTreeSet<(usize, usize)> =
            (1..n).map(|i| (rng.random_range(0..i), i)).collect();
        let extra = n / 2;
        let mut tries = 0;
        while links.len() < n - 1 + extra && tries < 100 * n {
            tries += 1;
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n);
            if a != b {
                links.insert((a.min(b), a.max(b)));
            }
        }
        return links.into_iter().collect();
    }
    let mut links: BTreeSet<(usize, usize)> = (0..n - 1).map(|i| (i, i + 1)).collect();
    if let Shape::Mesh(_) = shape {
        let extra = n / 2;
        let mut tries = 0;
        while links.len() < n - 1 + extra && tries < 100 {
            tries += 1;
            let a = rng.random_range(0..n);
            let b = rng.random_range(0..n);
            if a != b {
                links.insert((a.min(b), a.max(b)));
            }
        }
    }
    links.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Simulated clock and network.

/// Unix time on the runtime's (paused, auto-advancing) clock.
#[derive(Debug)]
struct SimClock {
    base: UnixMillis,
    t0: tokio::time::Instant,
}

impl Clock for SimClock {
    fn now(&self) -> UnixMillis {
        self.base + self.t0.elapsed().as_millis() as u64
    }
}

/// Per-call fault probabilities, in per mille.
const DROP_REQUEST: u32 = 15;
const DROP_REPLY: u32 = 15;
const DUPLICATE: u32 = 20;
const MAX_DELAY_MS: u64 = 30;

#[derive(Debug)]
struct NetState {
    managers: Vec<Option<KeyManager>>,
    /// Neighbour pairs (low, high) whose traffic is cut.
    cut: BTreeSet<(usize, usize)>,
    rng: ChaCha8Rng,
    faults: Faults,
    /// Peer calls made, by kind.
    traffic: Traffic,
}

/// The kinds of peer call ([`PeerLink`]'s methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CallKind {
    /// Link-state flooding.
    Advertise,
    /// Link key offered by a link's master end to its slave end.
    OfferBlocks,
    /// Reserving link key on a relay hop.
    RelayAllocate,
    /// A relay batch on one hop.
    Relay,
    /// Messages to a remote node (delivery notices, end-to-end exchange).
    Forward,
}

impl CallKind {
    /// Every kind, in table order.
    pub const ALL: [CallKind; 5] = [
        CallKind::Advertise,
        CallKind::OfferBlocks,
        CallKind::RelayAllocate,
        CallKind::Relay,
        CallKind::Forward,
    ];

    /// The name the tables print.
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Advertise => "Advertise",
            CallKind::OfferBlocks => "OfferBlocks",
            CallKind::RelayAllocate => "RelayAllocate",
            CallKind::Relay => "Relay",
            CallKind::Forward => "Forward",
        }
    }
}

/// Peer calls counted by the simulated network, by kind: every call made (whatever became of
/// it), the protobuf-encoded size of its request and of the reply the caller received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// (calls, request bytes + reply bytes) by kind.
    pub by_kind: BTreeMap<CallKind, (u64, u64)>,
}

impl Traffic {
    /// Calls of `kind`.
    pub fn calls(&self, kind: CallKind) -> u64 {
        self.by_kind.get(&kind).map_or(0, |c| c.0)
    }

    /// Payload bytes (requests and replies) of `kind`.
    pub fn bytes(&self, kind: CallKind) -> u64 {
        self.by_kind.get(&kind).map_or(0, |c| c.1)
    }
}

#[derive(Debug)]
struct Net {
    state: Mutex<NetState>,
}

/// What happens to one call.
struct Fate {
    drop_request: bool,
    drop_reply: bool,
    duplicate: bool,
    delay_request: Duration,
    delay_reply: Duration,
}

type Handler<Req, Resp> = fn(
    KeyManager,
    NodeId,
    Req,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Resp, qkd_kms::manager::PeerError>> + Send>,
>;

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fate(&self) -> Fate {
        let mut st = self.lock();
        let f = st.faults;
        let r = &mut st.rng;
        Fate {
            drop_request: r.random_range(0..1000) < f.drop_request_permille,
            drop_reply: r.random_range(0..1000) < f.drop_reply_permille,
            duplicate: r.random_range(0..1000) < f.duplicate_permille,
            delay_request: Duration::from_millis(r.random_range(0..=MAX_DELAY_MS)),
            delay_reply: Duration::from_millis(r.random_range(0..=MAX_DELAY_MS)),
        }
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.lock().cut.contains(&(a.min(b), a.max(b)))
    }

    fn manager(&self, i: usize) -> Option<KeyManager> {
        self.lock().managers[i].clone()
    }

    fn count(&self, kind: CallKind, calls: u64, bytes: usize) {
        let mut st = self.lock();
        let c = st.traffic.by_kind.entry(kind).or_default();
        c.0 += calls;
        c.1 += bytes as u64;
    }

    /// One call from node `from` to node `to`, as the network treats it.
    async fn call<Req, Resp>(
        &self,
        from: usize,
        to: usize,
        timeout: Duration,
        kind: CallKind,
        req: Req,
        handler: Handler<Req, Resp>,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + Clone + Send + 'static,
        Resp: prost::Message + Send + 'static,
    {
        self.count(kind, 1, req.encoded_len());
        let fate = self.fate();
        let work = async {
            tokio::time::sleep(fate.delay_request).await;
            if fate.drop_request || self.is_cut(from, to) {
                return std::future::pending().await;
            }
            let rx = {
                // The callee's handle is dropped at the end of this block: only the callee's own
                // tasks may keep a crashed node alive, and its crash aborts them.
                let Some(callee) = self.manager(to) else {
                    return Err(Status::unavailable("simulated: connection refused"));
                };
                if fate.duplicate {
                    let again = callee.clone();
                    let (f, r) = (node_id(from), req.clone());
                    callee.spawn(async move {
                        let _ = handler(again, f, r).await;
                    });
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let me = callee.clone();
                let f = node_id(from);
                callee.spawn(async move {
                    let _ = tx.send(handler(me, f, req).await);
                });
                rx
            };
            let r = rx
                .await
                .map_err(|_| Status::unavailable("simulated: peer crashed"))?;
            tokio::time::sleep(fate.delay_reply).await;
            if fate.drop_reply || self.is_cut(from, to) {
                return std::future::pending().await;
            }
            if let Ok(reply) = &r {
                self.count(kind, 0, reply.encoded_len());
            }
            r.map_err(|e| status_of(&e))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded("simulated: no answer in time")),
        }
    }
}

/// A neighbour over the simulated network.
#[derive(Debug)]
struct SimLink {
    from: usize,
    to: usize,
    net: Arc<Net>,
}

#[async_trait::async_trait]
impl PeerLink for SimLink {
    async fn offer_blocks(
        &self,
        req: pb::OfferBlocksRequest,
        timeout: Duration,
    ) -> Result<pb::OfferBlocksReply, Status> {
        self.net
            .call(
                self.from,
                self.to,
                timeout,
                CallKind::OfferBlocks,
                req,
                |m, f, r| {
                    Box::pin(
                        async move { m.on_offer(&f, r).await.map(|()| pb::OfferBlocksReply {}) },
                    )
                },
            )
            .await
    }

    async fn advertise(
        &self,
        req: pb::AdvertiseRequest,
        timeout: Duration,
    ) -> Result<pb::AdvertiseReply, Status> {
        self.net
            .call(
                self.from,
                self.to,
                timeout,
                CallKind::Advertise,
                req,
                |m, f, r| {
                    Box::pin(async move { m.on_advertise(&f, r).map(|()| pb::AdvertiseReply {}) })
                },
            )
            .await
    }

    async fn relay_allocate(
        &self,
        req: pb::RelayAllocateRequest,
        timeout: Duration,
    ) -> Result<pb::RelayAllocateReply, Status> {
        self.net
            .call(
                self.from,
                self.to,
                timeout,
                CallKind::RelayAllocate,
                req,
                |m, f, r| Box::pin(async move { m.on_relay_allocate(&f, r).await }),
            )
            .await
    }

    async fn relay(
        &self,
        req: pb::RelayRequest,
        timeout: Duration,
    ) -> Result<pb::RelayReply, Status> {
        self.net
            .call(
                self.from,
                self.to,
                timeout,
                CallKind::Relay,
                req,
                |m, f, r| Box::pin(async move { m.on_relay(&f, r).await }),
            )
            .await
    }

    async fn forward(
        &self,
        req: pb::ForwardRequest,
        timeout: Duration,
    ) -> Result<pb::ForwardReply, Status> {
        self.net
            .call(
                self.from,
                self.to,
                timeout,
                CallKind::Forward,
                req,
                |m, f, r| Box::pin(async move { m.on_forward(&f, r).await }),
            )
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Invariant checks fed by the nodes' events.

#[derive(Debug, Default)]
struct Checker {
    violations: Vec<String>,
    /// Runs of link key taken at each node, by (node, link, device block ID).
    taken: BTreeMap<(usize, LinkId, BlockId), Vec<(u32, u32)>>,
    /// Expiry of waiting keys at slaves' nodes, as delivery notices set it, by (node, key).
    expiry: BTreeMap<(usize, KeyId), UnixMillis>,
    /// Pool keys that left their pool past the pool TTL, by (node, key).
    expired_pool: BTreeSet<(usize, KeyId)>,
    link_runs: u64,
}

impl Checker {
    fn take(&mut self, node: usize, link: &LinkId, block: BlockId, offset: u32, len: u32) {
        self.link_runs += 1;
        let runs = self.taken.entry((node, link.clone(), block)).or_default();
        let end = offset + len;
        if let Some((o, l)) = runs.iter().find(|(o, l)| offset < o + l && *o < end) {
            self.violations.push(format!(
                "link key used twice at n{node}: link {link}, device block {block}, bytes \
                 {offset}..{end} overlap bytes {o}..{} taken before",
                o + l
            ));
        }
        runs.push((offset, len));
    }
}

/// One node's subscription: checks its events against its configuration now.
#[derive(Debug)]
struct NodeObserver {
    node: usize,
    /// Policy and suite names per (master, slave), under the node's configuration (a live
    /// reload replaces them in the same step).
    modes: Arc<Mutex<BTreeMap<(SaeId, SaeId), MadeUnder>>>,
    checker: Arc<Mutex<Checker>>,
}

impl Observer for NodeObserver {
    fn event(&self, event: &Event<'_>) {
        let mut c = self.checker.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::LinkKeyTaken { link, runs } => {
                for (block, offset, len) in runs.iter() {
                    c.take(self.node, link, *block, *offset, *len);
                }
            }
            // The simulated network delays, drops, duplicates and reorders messages and crashes
            // nodes, but never alters one: nothing may look like tampering (an operator would
            // be paged for an attack that is not there).
            Event::PeerRefused {
                from,
                cause,
                tampering: true,
            } => c.violations.push(format!(
                "n{} refused a message from {from} as tampered ({cause}) on an honest network",
                self.node
            )),
            Event::PeerRefused { .. } | Event::Reachability { .. } | Event::BatchVoided { .. } => {}
            Event::PoolKeysExpired { keys } => {
                c.expired_pool
                    .extend(keys.iter().map(|id| (self.node, *id)));
            }
            Event::ExpiryMoved { keys, expires_at } => {
                for id in keys.iter() {
                    let e = c.expiry.entry((self.node, *id)).or_insert(*expires_at);
                    *e = (*e).min(*expires_at);
                }
            }
            Event::Delivered {
                side,
                master,
                slaves,
                keys,
            } => {
                let modes = self.modes.lock().unwrap_or_else(|p| p.into_inner());
                for (id, made) in keys.iter() {
                    let Some(made) = made else { continue };
                    for s in slaves.iter() {
                        let want = modes.get(&((*master).clone(), s.clone()));
                        if want != Some(made) {
                            c.violations.push(format!(
                                "key {id} delivered to the {side:?} at n{} made under {}/{} but \
                                 pair {master}->{s} is configured {:?}",
                                self.node, made.policy, made.suite, want
                            ));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

#[derive(Debug)]
struct NodeSlot {
    disk: Arc<Disk>,
    /// The node's store when the run keeps it in memory ([`StoreKind::Memory`]).
    memory: SharedMemory,
    dir: PathBuf,
    /// Configuration version it runs (or will run at its next start).
    version: u32,
    /// What its observer holds deliveries to (see [`NodeObserver::modes`]).
    modes: Arc<Mutex<BTreeMap<(SaeId, SaeId), MadeUnder>>>,
    signing: Option<NodeSigningKey>,
    /// Its store writer while it runs on the disk store (the KEK rotations go to it).
    writer: Option<Writer>,
    up: bool,
}

/// Most key streams open at once in a run.
const MAX_STREAMS: usize = 2;

/// An ETSI 004 key stream the run opened, and what each of its ends got.
#[derive(Debug)]
struct SimStream {
    /// Its pair (the master opens it, the slave joins).
    pair: usize,
    id: KeyStreamId,
    joined: bool,
    /// Key bytes delivered, by (end: 0 the master's, 1 the slave's; index).
    got: BTreeMap<(usize, u64), Secret>,
    /// The next index each end asks for.
    next: [u64; 2],
}

/// A key the master got, waiting for (or fetched by) its slaves.
#[derive(Debug)]
struct MasterKey {
    /// Order in which the master got it (key IDs are random; the run's choices must not be).
    seq: u64,
    pair: usize,
    slaves: Vec<SaeId>,
    key: Secret,
    fetched: BTreeSet<SaeId>,
}

struct Sim {
    opts: Options,
    rng: ChaCha8Rng,
    n: usize,
    links: Vec<(usize, usize)>,
    link_seeds: Vec<Secret>,
    pairs: Vec<Pair>,
    nodes: Vec<NodeSlot>,
    public: Vec<PeerPublicKeys>,
    net: Arc<Net>,
    clock: Arc<SimClock>,
    checker: Arc<Mutex<Checker>>,
    /// Latest configuration version; nodes adopt it when they restart.
    version: u32,
    /// How often each node floods its link state (the scaling measurement may lower the
    /// per-node work by raising it).
    advert_interval: Duration,
    /// Devices whose position is lost at their node's next start, by link index.
    lose_position: BTreeSet<usize>,
    master_keys: BTreeMap<KeyId, MasterKey>,
    /// Keys released to a master whose slave node was down: checked when it is back.
    deferred: BTreeMap<usize, Vec<KeyId>>,
    /// Key streams open (closed ones are dropped).
    streams: Vec<SimStream>,
    trace: Vec<String>,
    outcome: Outcome,
    _tmp: tempfile::TempDir,
}

impl Sim {
    fn new(opts: Options) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let n = opts.shape.nodes();
        let links = links_of(opts.shape, &mut rng);
        let link_seeds = links
            .iter()
            .map(|_| {
                let mut s = [0u8; 32];
                rng.fill(&mut s);
                Secret::copy_from(&s)
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let mut nodes = Vec::new();
        let mut public = Vec::new();
        for i in 0..n {
            let dir = tmp.path().join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("keys"))
                .unwrap_or_else(|e| panic!("node directory: {e}"));
            let signing =
                NodeSigningKey::generate(&mut rng).unwrap_or_else(|e| panic!("signing key: {e}"));
            public.push(
                PeerPublicKeys::new(kme_id(i), vec![signing.public_key()])
                    .unwrap_or_else(|e| panic!("public key: {e}")),
            );
            nodes.push(NodeSlot {
                disk: Disk::new(1 << 30),
                memory: SharedMemory::default(),
                dir,
                version: 0,
                modes: Arc::default(),
                signing: Some(signing),
                writer: None,
                up: false,
            });
        }
        let net = Arc::new(Net {
            state: Mutex::new(NetState {
                managers: vec![None; n],
                cut: BTreeSet::new(),
                rng: ChaCha8Rng::seed_from_u64(opts.seed ^ 0x006e_6574_776f_726b),
                faults: opts.faults,
                traffic: Traffic::default(),
            }),
        });
        Sim {
            rng,
            n,
            links,
            link_seeds,
            pairs: pairs(n),
            nodes,
            public,
            net,
            clock: Arc::new(SimClock {
                base: 1_800_000_000_000,
                t0: tokio::time::Instant::now(),
            }),
            checker: Arc::default(),
            version: 0,
            advert_interval: DEFAULT_ADVERT_INTERVAL,
            lose_position: BTreeSet::new(),
            master_keys: BTreeMap::new(),
            deferred: BTreeMap::new(),
            streams: Vec::new(),
            trace: Vec::new(),
            outcome: Outcome::default(),
            _tmp: tmp,
            opts,
        }
    }

    fn modes(&self, version: u32) -> BTreeMap<(SaeId, SaeId), MadeUnder> {
        self.pairs
            .iter()
            .map(|p| {
                (
                    (p.master.clone(), p.slave.clone()),
                    names(mode_of(p.qkd_only_until_v2, version)),
                )
            })
            .collect()
    }

    fn config(&mut self, i: usize) -> ManagerConfig {
        let version = self.nodes[i].version;
        let mut saes: BTreeMap<SaeId, SaeEntry> = BTreeMap::new();
        let mut add = |s: &SaeId, node: usize, peer: &SaeId| {
            saes.entry(s.clone())
                .or_insert_with(|| SaeEntry {
                    node: node_id(node),
                    peers: BTreeSet::new(),
                })
                .peers
                .insert(peer.clone());
        };
        for p in &self.pairs {
            add(&p.master, p.master_node, &p.slave);
            add(&p.slave, p.slave_node, &p.master);
        }
        let neighbours = self
            .links
            .iter()
            .filter_map(|&(a, b)| {
                let other = if a == i {
                    b
                } else if b == i {
                    a
                } else {
                    return None;
                };
                Some((
                    node_id(other),
                    NeighbourEntry {
                        kme: kme_id(other),
                        link: link_id(a, b),
                    },
                ))
            })
            .collect();
        let mut pinned = PinnedPeers::new();
        for (j, p) in self.public.iter().enumerate() {
            if j != i {
                pinned.insert(p.clone());
            }
        }
        let signing = self.nodes[i]
            .signing
            .take()
            .unwrap_or_else(|| NodeSigningKey::generate(&mut self.rng).expect("signing key"));
        // The key is kept for the next start: a node's identity survives its restarts.
        let local_signing = signing
            .to_raw()
            .and_then(NodeSigningKey::from_raw)
            .unwrap_or_else(|e| panic!("signing key copy: {e}"));
        self.nodes[i].signing = Some(signing);
        let key_bits = if version >= 1 {
            2 * KEY_BITS_V0
        } else {
            KEY_BITS_V0
        };
        let pair_modes = self
            .pairs
            .iter()
            .map(|p| {
                let (a, b) = if p.master <= p.slave {
                    (p.master.clone(), p.slave.clone())
                } else {
                    (p.slave.clone(), p.master.clone())
                };
                ((a, b), mode_of(p.qkd_only_until_v2, version))
            })
            .collect();
        ManagerConfig {
            node: node_id(i),
            kme: kme_id(i),
            saes,
            neighbours,
            limits: KeyLimits {
                key_size: key_bits,
                ..KeyLimits::default()
            },
            // Short enough that keys expire during a run: a delivery notice must make the slave's
            // copy expire a key TTL after the master got it.
            key_ttl_ms: 20_000,
            peer_timeout: Duration::from_millis(500),
            tombstone_retention_ms: 86_400_000,
            relay: RelayConfig {
                kme_ids: (0..self.n).map(|j| (node_id(j), kme_id(j))).collect(),
                pool_keys: 8,
                batch_keys: 4,
                // As short as the key TTL: pooled keys go stale within a run, so the relay tick's
                // discarding of them runs under every fault too.
                pool_ttl_ms: 20_000,
                hop_timeout: Duration::from_millis(500),
                advert_interval: self.advert_interval,
                pairs: pair_modes,
                default_mode: KeyMode::default(),
                tamper_relay: false,
                e2e: Arc::new(E2eKeys {
                    local: Some(LocalIdentity::new(kme_id(i), local_signing)),
                    peers: pinned,
                    replay: Default::default(),
                }),
            },
        }
    }

    /// Starts (or restarts) node `i` from its disk.
    async fn start(&mut self, i: usize) -> Result<(), String> {
        // A crashed node's tasks go at their next poll: wait until nothing holds its store.
        let mut waited = 0;
        while Arc::strong_count(&self.nodes[i].disk) > 1
            || Arc::strong_count(&self.nodes[i].memory.0) > 1
        {
            waited += 1;
            if waited > 1000 {
                return Err(format!("n{i} still holds its store after its crash"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.nodes[i].version = self.version;
        let now = self.clock.now();
        let dir = self.nodes[i].dir.clone();
        let kek = FileKek::open(&dir.join("keys"), now, 86_400_000)
            .map_err(|e| format!("n{i}: KEK: {e}"))?;
        let disk = self.nodes[i].disk.clone();
        let options = StoreOptions {
            watermark_bytes: 1 << 20,
            reserve_bytes: 0,
            rotation_batch: 64,
            // A small log, so that seeds wrap it and checkpoint often.
            log_bytes: 64 << 10,
        };
        let (writer, recovered) = match self.opts.store {
            StoreKind::Disk => {
                let (store, recovered) = Store::open_backend(
                    disk.backend(),
                    disk.log(),
                    &kek,
                    options,
                    disk.space(),
                    usize::MAX,
                )
                .map_err(|e| format!("n{i}: store: {e}"))?;
                // The KEK can rotate while the node runs (a step of the run asks for it).
                let store = store.with_live_rotation(Arc::new(kek));
                (Writer::inline(store), recovered)
            }
            StoreKind::Memory => {
                let memory = self.nodes[i].memory.clone();
                let recovered = memory.lock().recovered();
                (Writer::inline(memory), recovered)
            }
        };
        drop(disk);
        let mut setups = Vec::new();
        for (li, &(a, b)) in self.links.iter().enumerate() {
            if a != i && b != i {
                continue;
            }
            let (role, other) = if a == i {
                (LinkRole::Master, b)
            } else {
                (LinkRole::Slave, a)
            };
            let id = link_id(a, b);
            let source = SimulatedLink::new(
                SimLinkConfig {
                    link: id.clone(),
                    role,
                    block_bits: BLOCK_BITS,
                    start: self.clock.base,
                },
                &self.link_seeds[li],
                Box::new(ConstantRate::new(LINK_BPS)),
                self.clock.clone(),
            )
            .map_err(|e| format!("link {id}: {e}"))?;
            let source = if role == LinkRole::Master {
                let file = dir.join(format!("{id}.position"));
                if self.lose_position.remove(&li) {
                    // The device lost its position: it starts its key stream again from the
                    // beginning and re-issues every key ID it issued before.
                    let _ = std::fs::remove_file(&file);
                }
                source
                    .with_position_file(file)
                    .map_err(|e| format!("link {id}: position: {e}"))?
            } else {
                source
            };
            setups.push(LinkSetup {
                id,
                peer: node_id(other),
                source: Arc::new(source),
                capacity_bytes: 4 << 10,
                client: Arc::new(SimLink {
                    from: i,
                    to: other,
                    net: self.net.clone(),
                }),
            });
        }
        let config = self.config(i);
        self.nodes[i].writer = match self.opts.store {
            StoreKind::Disk => Some(writer.clone()),
            StoreKind::Memory => None,
        };
        let manager = KeyManager::new(config, self.clock.clone(), writer, setups, recovered);
        let modes = Arc::new(Mutex::new(self.modes(self.nodes[i].version)));
        self.nodes[i].modes = modes.clone();
        manager.observe(Arc::new(NodeObserver {
            node: i,
            modes,
            checker: self.checker.clone(),
        }));
        manager
            .void_stale_keys()
            .await
            .map_err(|e| format!("n{i}: voiding stale keys: {e}"))?;
        // Keys released to masters while this node was down must be here.
        for id in self.deferred.remove(&i).unwrap_or_default() {
            self.check_held(&manager, i, id);
        }
        let bg = manager.clone();
        manager.spawn(async move { bg.run_background(DEVICE_POLL).await });
        self.net.lock().managers[i] = Some(manager);
        self.nodes[i].up = true;
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        if let Some(m) = self.net.lock().managers[i].take() {
            m.halt();
        }
        self.nodes[i].up = false;
        self.nodes[i].writer = None;
        // The machine goes down with the process: what the store wrote but did not sync is lost.
        self.nodes[i].disk.crash();
        self.outcome.crashes += 1;
    }

    fn violation(&self, step: u32, what: String) -> Box<Violation> {
        let from = self.trace.len().saturating_sub(12);
        Box::new(Violation {
            options: self.opts.clone(),
            step,
            what,
            trace: self.trace[from..].to_vec(),
        })
    }

    fn note(&mut self, step: u32, line: String) {
        let t = self.clock.now() - self.clock.base;
        self.trace.push(format!("{step:>4} t={t:>7}ms {line}"));
    }

    /// The slave's node of a key just released to its master must hold it (or its tombstone).
    fn check_held(&self, m: &KeyManager, node: usize, id: KeyId) {
        let held = m
            .inspect_store(|tx| tx.key_id_used(id).unwrap_or(false))
            .unwrap_or(true);
        if !held {
            self.checker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .violations
                .push(format!(
                    "key {id} was released to its master before n{node} (its slave's node) \
                     committed it"
                ));
        }
    }

    /// Runs an SAE call as a task of `node`, so that a crash of the node ends it as it would
    /// end a real request. `None` if the node is down or crashed before answering.
    async fn sae_call<T: Send + 'static>(
        &self,
        node: usize,
        call: impl FnOnce(KeyManager) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>,
    ) -> Option<T> {
        let m = self.net.manager(node)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fut = call(m.clone());
        m.spawn(async move {
            let _ = tx.send(fut.await);
        });
        drop(m);
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(v)) => Some(v),
            _ => None,
        }
    }

    /// `extra`: the pair whose slave is named as additional slave (pair 3: the two pairs differ
    /// in policy until configuration version 2; pair 4: a multicast to slaves at two nodes).
    async fn enc(
        &mut self,
        step: u32,
        pair: usize,
        number: u32,
        size: Option<u32>,
        extra: Option<usize>,
    ) {
        let p = self.pairs[pair].clone();
        let mut slaves = vec![p.slave.clone()];
        let mut slave_nodes = vec![p.slave_node];
        let additional = match extra {
            Some(e) => {
                let t = self.pairs[e].slave.clone();
                slaves.push(t.clone());
                slave_nodes.push(self.pairs[e].slave_node);
                vec![t]
            }
            None => Vec::new(),
        };
        let version = self.nodes[p.master_node].version;
        let default_bits = if version >= 1 {
            2 * KEY_BITS_V0
        } else {
            KEY_BITS_V0
        };
        let size_bits = size.unwrap_or(default_bits);
        let req = EncKeysRequest {
            master: p.master.clone(),
            slave: p.slave.clone(),
            additional_slaves: additional,
            number,
            size_bits,
        };
        let r = self
            .sae_call(p.master_node, move |m| {
                Box::pin(async move { m.enc_keys(req).await })
            })
            .await;
        let keys: Vec<DeliveredKey> = match r {
            Some(Ok(keys)) => keys,
            Some(Err(e)) => {
                self.outcome.refused += 1;
                self.note(
                    step,
                    format!("enc {}->{:?} n={number}: {e}", p.master, slaves),
                );
                return;
            }
            None => {
                self.outcome.refused += 1;
                self.note(step, format!("enc {}->{:?}: no answer", p.master, slaves));
                return;
            }
        };
        self.note(
            step,
            format!(
                "enc {}->{:?} n={number} size={size_bits}: {} keys",
                p.master,
                slaves,
                keys.len()
            ),
        );
        for k in keys {
            self.outcome.master_keys += 1;
            if slaves.len() > 1 {
                self.outcome.multicast_keys += 1;
            }
            let bytes = k.key.expose().len() as u32 * 8;
            if bytes != size_bits {
                self.fail(format!(
                    "key {} delivered to master {} has {bytes} bits, {size_bits} asked \
                     (configuration version {version})",
                    k.id, p.master
                ));
            }
            if self.master_keys.contains_key(&k.id) {
                self.fail(format!("key {} delivered twice to a master", k.id));
                continue;
            }
            for &node in &slave_nodes {
                match self.net.manager(node) {
                    Some(m) => self.check_held(&m, node, k.id),
                    None => self.deferred.entry(node).or_default().push(k.id),
                }
            }
            self.master_keys.insert(
                k.id,
                MasterKey {
                    seq: self.outcome.master_keys,
                    pair,
                    slaves: slaves.clone(),
                    key: k.key,
                    fetched: BTreeSet::new(),
                },
            );
        }
    }

    async fn dec(&mut self, step: u32, again: bool) {
        // A key the master got and one of its slaves has not fetched yet (or, `again`, has).
        let mut candidates: Vec<(u64, KeyId, SaeId)> = self
            .master_keys
            .iter()
            .flat_map(|(id, k)| {
                k.slaves
                    .iter()
                    .filter(|s| k.fetched.contains(*s) == again)
                    .map(move |s| (k.seq, *id, s.clone()))
            })
            .collect();
        candidates.sort();
        if candidates.is_empty() {
            return;
        }
        let (seq, id, slave) = candidates[self.rng.random_range(0..candidates.len())].clone();
        let k = &self.master_keys[&id];
        let pair = &self.pairs[k.pair];
        let Some(node) = self
            .pairs
            .iter()
            .find(|q| q.master == pair.master && q.slave == slave)
            .map(|q| q.slave_node)
        else {
            return;
        };
        let req = DecKeysRequest {
            slave: slave.clone(),
            master: pair.master.clone(),
            key_ids: vec![id],
        };
        let r = self
            .sae_call(node, move |m| {
                Box::pin(async move { m.dec_keys(req).await })
            })
            .await;
        match r {
            Some(Ok(keys)) => {
                self.note(step, format!("dec {slave} key #{seq}: ok (again: {again})"));
                for got in keys {
                    self.outcome.slave_keys += 1;
                    let Some(k) = self.master_keys.get_mut(&got.id) else {
                        self.fail(format!("slave {slave} got key {} no master got", got.id));
                        continue;
                    };
                    let twice = !k.fetched.insert(slave.clone());
                    let now = self.clock.now();
                    let expired = self
                        .checker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .expiry
                        .get(&(node, got.id))
                        .copied()
                        .filter(|e| now >= *e);
                    let differs = k.key != got.key;
                    if twice {
                        self.fail(format!("key {} delivered twice to slave {slave}", got.id));
                    }
                    if let Some(e) = expired {
                        self.fail(format!(
                            "key {} served to slave {slave} at {now}, after the expiry {e} its \
                             master's node set (a key TTL after its master got it)",
                            got.id
                        ));
                    }
                    if differs {
                        self.fail(format!(
                            "key {}: the slave's copy differs from the master's",
                            got.id
                        ));
                    }
                }
            }
            Some(Err(e)) => {
                self.outcome.refused += 1;
                self.note(
                    step,
                    format!("dec {slave} key #{seq}: {e} (again: {again})"),
                );
            }
            None => {
                self.outcome.refused += 1;
                self.note(step, format!("dec {slave} key #{seq}: no answer"));
            }
        }
    }

    /// Key streams (issue 11): opens one for a pair at its master's node and joins it at its
    /// slave's, asks either end for the key at an index (its next one, or one it got already,
    /// which must be refused), or closes a stream at both ends. Checks that no end gets an index
    /// twice and that both ends get the same key at the same index, across crashes, partitions
    /// and restarts (a stream's state is durable at both ends).
    async fn stream_step(&mut self, step: u32) {
        if self.streams.len() < MAX_STREAMS
            && (self.streams.is_empty() || self.rng.random_bool(0.1))
        {
            return self.open_stream(step).await;
        }
        if self.streams.is_empty() {
            return;
        }
        let s = self.rng.random_range(0..self.streams.len());
        if !self.streams[s].joined {
            return self.join_stream(step, s).await;
        }
        if self.rng.random_bool(0.03) {
            return self.close_stream(step, s).await;
        }
        let end = self.rng.random_range(0..2);
        let delivered: Vec<u64> = self.streams[s]
            .got
            .keys()
            .filter(|(e, _)| *e == end)
            .map(|(_, i)| *i)
            .collect();
        let again = !delivered.is_empty() && self.rng.random_bool(0.1);
        let index = if again {
            delivered[self.rng.random_range(0..delivered.len())]
        } else {
            self.streams[s].next[end]
        };
        let p = self.pairs[self.streams[s].pair].clone();
        let (caller, node) = if end == 0 {
            (p.master.clone(), p.master_node)
        } else {
            (p.slave.clone(), p.slave_node)
        };
        let id = self.streams[s].id;
        let r = self
            .sae_call(node, move |m| {
                Box::pin(async move { m.stream_key(&caller, id, index).await })
            })
            .await;
        let what = format!("stream {s} end {end} index {index}");
        match r {
            Some(Ok(k)) => {
                self.note(step, format!("{what}: key (again: {again})"));
                self.outcome.stream_keys += 1;
                if self.streams[s].got.contains_key(&(end, index)) {
                    self.fail(format!("{what}: delivered twice to the same end"));
                    return;
                }
                if let Some(other) = self.streams[s].got.get(&(1 - end, index))
                    && other != &k.key
                {
                    self.fail(format!("{what}: the two ends got different keys"));
                }
                let stream = &mut self.streams[s];
                stream.got.insert((end, index), k.key);
                stream.next[end] = stream.next[end].max(index + 1);
            }
            Some(Err(e)) => {
                self.outcome.refused += 1;
                self.note(step, format!("{what}: {e} (again: {again})"));
                // An index that expired or went with a configuration change is skipped.
                if !again && self.rng.random_bool(0.5) {
                    self.streams[s].next[end] += 1;
                }
            }
            None => {
                self.outcome.refused += 1;
                self.note(step, format!("{what}: no answer"));
            }
        }
    }

    fn stream_qos() -> Qos {
        Qos {
            chunk_bytes: KEY_BITS_V0 / 8,
            max_bps: 0,
            timeout_ms: 1_000,
            ttl_s: 60,
            ..Qos::default()
        }
    }

    async fn open_stream(&mut self, step: u32) {
        let pair = self.rng.random_range(0..3);
        let p = self.pairs[pair].clone();
        let req = OpenStreamRequest {
            caller: p.master.clone(),
            peer: p.slave.clone(),
            qos: Self::stream_qos(),
            join: None,
        };
        let r = self
            .sae_call(p.master_node, move |m| {
                Box::pin(async move { m.open_stream(req).await })
            })
            .await;
        match r {
            Some(Ok(opened)) => {
                self.outcome.streams += 1;
                self.note(
                    step,
                    format!("open stream {} for pair {pair}", self.streams.len()),
                );
                self.streams.push(SimStream {
                    pair,
                    id: opened.id,
                    joined: false,
                    got: BTreeMap::new(),
                    next: [0, 0],
                });
            }
            Some(Err(e)) => self.note(step, format!("open stream for pair {pair}: {e}")),
            None => self.note(step, format!("open stream for pair {pair}: no answer")),
        }
    }

    async fn join_stream(&mut self, step: u32, s: usize) {
        let p = self.pairs[self.streams[s].pair].clone();
        let req = OpenStreamRequest {
            caller: p.slave.clone(),
            peer: p.master.clone(),
            qos: Self::stream_qos(),
            join: Some(self.streams[s].id),
        };
        let r = self
            .sae_call(p.slave_node, move |m| {
                Box::pin(async move { m.open_stream(req).await })
            })
            .await;
        match r {
            Some(Ok(_)) => {
                self.note(step, format!("join stream {s}"));
                self.streams[s].joined = true;
            }
            Some(Err(e)) => self.note(step, format!("join stream {s}: {e}")),
            None => self.note(step, format!("join stream {s}: no answer")),
        }
    }

    async fn close_stream(&mut self, step: u32, s: usize) {
        let p = self.pairs[self.streams[s].pair].clone();
        let id = self.streams[s].id;
        for (caller, node) in [
            (p.master.clone(), p.master_node),
            (p.slave.clone(), p.slave_node),
        ] {
            let r = self
                .sae_call(node, move |m| {
                    Box::pin(async move { m.close_stream(&caller, id).await })
                })
                .await;
            let said = match r {
                Some(Ok(())) => "closed".to_owned(),
                Some(Err(e)) => e.to_string(),
                None => "no answer".to_owned(),
            };
            self.note(step, format!("close stream {s} at n{node}: {said}"));
        }
        // Forgotten here either way: an end that missed its close expires with its keys.
        self.streams.remove(s);
    }

    fn fail(&self, what: String) {
        self.checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .violations
            .push(what);
    }

    /// Both ends of every link with both ends up agree on its blocks.
    fn check_links(&self) {
        for &(a, b) in &self.links {
            let (Some(ma), Some(mb)) = (self.net.manager(a), self.net.manager(b)) else {
                continue;
            };
            let id = link_id(a, b);
            let at_a: BTreeMap<u64, BlockId> = ma.link_blocks(&id).into_iter().collect();
            for (seq, block) in mb.link_blocks(&id) {
                if let Some(other) = at_a.get(&seq)
                    && *other != block
                {
                    self.fail(format!(
                        "link {id}: block {seq} is device block {other} at n{a} but {block} at n{b}"
                    ));
                }
            }
        }
    }

    async fn drive(&mut self) -> Result<Outcome, Box<Violation>> {
        for i in 0..self.n {
            if let Err(e) = self.start(i).await {
                return Err(self.violation(0, format!("start: {e}")));
            }
        }
        // Let the links fill and the routes form before the workload.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for step in 1..=self.opts.steps {
            self.step(step).await;
            let pause = self.rng.random_range(20..400);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            self.check_links();
            let found = std::mem::take(
                &mut self
                    .checker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .violations,
            );
            if let Some(first) = found.into_iter().next() {
                return Err(self.violation(step, first));
            }
            self.outcome.steps = step;
        }
        // Stop everything so that nothing outlives the run.
        for i in 0..self.n {
            if let Some(m) = self.net.lock().managers[i].take() {
                m.halt();
            }
        }
        {
            let c = self.checker.lock().unwrap_or_else(|p| p.into_inner());
            self.outcome.link_runs = c.link_runs;
            self.outcome.notified_keys = c.expiry.len() as u64;
            self.outcome.expired_pool_keys = c.expired_pool.len() as u64;
        }
        self.outcome.sim_ms = self.clock.now() - self.clock.base;
        self.outcome.trace_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.trace.hash(&mut h);
            h.finish()
        };
        Ok(self.outcome.clone())
    }

    async fn step(&mut self, step: u32) {
        let roll = self.rng.random_range(0..100u32);
        match roll {
            0..=29 => {
                let pair = self.rng.random_range(0..3);
                let number = self.rng.random_range(1..=3);
                self.enc(step, pair, number, None, None).await;
            }
            30..=37 => {
                let pair = self.rng.random_range(0..3);
                let size = [512, 1024][self.rng.random_range(0..2)];
                self.enc(step, pair, 1, Some(size), None).await;
            }
            38..=39 => self.enc(step, 0, 1, None, Some(3)).await,
            40..=41 => self.enc(step, 0, 1, None, Some(4)).await,
            42..=63 => self.dec(step, false).await,
            64..=69 => self.stream_step(step).await,
            70..=73 => self.dec(step, true).await,
            74..=96 if !self.opts.faults.disruptions => {
                let secs = self.rng.random_range(1..4);
                self.note(step, format!("quiet {secs} s"));
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            74..=81 => {
                let i = self.rng.random_range(0..self.n);
                if self.nodes[i].up {
                    self.crash(i);
                    self.note(step, format!("crash n{i}"));
                } else {
                    self.restart(step, i).await;
                }
            }
            82..=87 => {
                // Restart every node that is down.
                for i in 0..self.n {
                    if !self.nodes[i].up {
                        self.restart(step, i).await;
                    }
                }
            }
            88..=91 => {
                let li = self.rng.random_range(0..self.links.len());
                let cut = self.links[li];
                let now_cut = {
                    let mut st = self.net.lock();
                    if st.cut.remove(&cut) {
                        false
                    } else {
                        st.cut.insert(cut);
                        true
                    }
                };
                if now_cut {
                    self.outcome.partitions += 1;
                }
                self.note(
                    step,
                    format!(
                        "{} n{}-n{}",
                        if now_cut { "cut" } else { "heal" },
                        cut.0,
                        cut.1
                    ),
                );
            }
            92..=94 => {
                // The devices of a link restart and the master end's has lost its position: it
                // re-issues old key IDs, and the slave end's has forgotten which it handed out.
                // Both nodes crash and restart with them.
                let li = self.rng.random_range(0..self.links.len());
                let (a, b) = self.links[li];
                self.lose_position.insert(li);
                self.outcome.reissues += 1;
                self.note(
                    step,
                    format!("devices of link n{a}-n{b} restart; position lost"),
                );
                for i in [a, b] {
                    if self.nodes[i].up {
                        self.crash(i);
                    }
                }
                for i in [a, b] {
                    self.restart(step, i).await;
                }
            }
            95..=96 if self.version < LAST_VERSION => {
                self.version += 1;
                self.outcome.config_changes += 1;
                // Every node picks it up by a live reload (voiding pools), or at its next
                // restart; a node whose reload is refused (it would strand keys) is restarted,
                // as an operator would. Nodes go one by one.
                let live = self.rng.random_bool(0.5);
                let how = if live { "reloads" } else { "restarts" };
                self.note(
                    step,
                    format!("configuration version {} by {how}", self.version),
                );
                for i in 0..self.n {
                    if live && self.reload(step, i).await {
                        continue;
                    }
                    if self.nodes[i].up {
                        self.crash(i);
                    }
                    self.restart(step, i).await;
                }
            }
            97 if self.opts.faults.disruptions => {
                // An operator rotates a node's KEK: a fresh data-key epoch, and a pass that
                // re-encrypts the older epochs one step after each batch (a crash may stop it
                // half way; the next start finishes it).
                let i = self.rng.random_range(0..self.n);
                match self.nodes[i].writer.clone() {
                    Some(writer) if self.nodes[i].up => {
                        match writer.rotate_kek(self.clock.now()).await {
                            Ok(r) => {
                                self.outcome.kek_rotations += 1;
                                self.note(
                                    step,
                                    format!(
                                        "KEK of n{i} rotated: epoch {}, {} older",
                                        r.epoch, r.older_epochs
                                    ),
                                );
                            }
                            Err(e) => self.note(step, format!("KEK of n{i} not rotated: {e}")),
                        }
                    }
                    _ => self.note(step, format!("no KEK rotation at n{i}")),
                }
            }
            _ => {
                let secs = self.rng.random_range(1..4);
                self.note(step, format!("quiet {secs} s"));
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
        }
    }

    /// Reloads node `i` (if up) into the latest configuration version, voiding pools; whether
    /// it now runs that version. No SAE request is under way during a step, so the node's
    /// observer switches to the new version's modes here.
    async fn reload(&mut self, step: u32, i: usize) -> bool {
        let Some(m) = self.net.manager(i) else {
            return false;
        };
        let old = self.nodes[i].version;
        self.nodes[i].version = self.version;
        let live = qkd_kms::manager::LiveConfig::of(&self.config(i));
        let old_modes = std::mem::replace(
            &mut *self.nodes[i]
                .modes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
            self.modes(self.version),
        );
        match m.reconfigure(live, true).await {
            Ok(voided) => {
                let n: u64 = voided.iter().map(|v| v.keys).sum();
                self.outcome.reloads += 1;
                self.note(step, format!("reload n{i}: {n} keys voided"));
                true
            }
            Err(e) => {
                self.nodes[i].version = old;
                *self.nodes[i]
                    .modes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = old_modes;
                self.note(step, format!("reload n{i} refused: {e}"));
                false
            }
        }
    }

    async fn restart(&mut self, step: u32, i: usize) {
        self.note(step, format!("restart n{i}"));
        if let Err(e) = self.start(i).await {
            self.fail(format!("restart of n{i} failed: {e}"));
        }
    }
}

/// A node's in-memory store, which outlives the node (as a disk does): the node's writer holds
/// one handle while it runs, the simulation the other.
#[derive(Debug, Clone, Default)]
struct SharedMemory(Arc<Mutex<MemStore>>);

impl SharedMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemStore> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KeyStore for SharedMemory {
    fn apply(
        &mut self,
        ops: Vec<StoreOp>,
    ) -> Result<Vec<Result<StoreOutcome, StoreError>>, StoreError> {
        self.lock().apply(ops)
    }

    fn inspect(&mut self, read: &mut dyn FnMut(&mut dyn Tables)) -> Result<(), StoreError> {
        self.lock().inspect(read)
    }

    fn gauge(&self) -> SpaceGauge {
        self.lock().gauge()
    }
}

/// Seeds from `SIM_SEEDS` (a count) or the default, for the CI's fixed set of runs.
pub fn seed_count(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs seeds `0..count` of `shape` and returns the first violation, with a summary line.
pub fn run_seeds(
    shape: Shape,
    steps: u32,
    count: u64,
    defects: Defects,
    store: StoreKind,
) -> Result<Summary, Box<Violation>> {
    let mut s = Summary::default();
    for seed in 0..count {
        let o = run(&Options {
            seed,
            steps,
            shape,
            defects,
            faults: Faults::default(),
            store,
        })?;
        s.runs += 1;
        s.steps += u64::from(o.steps);
        s.master_keys += o.master_keys;
        s.slave_keys += o.slave_keys;
        s.multicast_keys += o.multicast_keys;
        s.stream_keys += o.stream_keys;
        s.notified_keys += o.notified_keys;
        s.expired_pool_keys += o.expired_pool_keys;
        s.crashes += u64::from(o.crashes);
        s.reloads += u64::from(o.reloads);
        s.kek_rotations += u64::from(o.kek_rotations);
        s.sim_ms += o.sim_ms;
    }
    Ok(s)
}

/// Totals over several runs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Runs.
    pub runs: u64,
    /// Steps.
    pub steps: u64,
    /// Keys delivered to masters.
    pub master_keys: u64,
    /// Keys delivered to slaves.
    pub slave_keys: u64,
    /// Keys delivered for two slaves at once.
    pub multicast_keys: u64,
    /// Keys delivered from key streams, both ends together.
    pub stream_keys: u64,
    /// Waiting keys whose expiry a delivery notice set.
    pub notified_keys: u64,
    /// Pool keys that left their pool past the pool TTL.
    pub expired_pool_keys: u64,
    /// Crashes.
    pub crashes: u64,
    /// Configuration changes nodes took by a live reload.
    pub reloads: u64,
    /// Live KEK rotations.
    pub kek_rotations: u64,
    /// Simulated milliseconds.
    pub sim_ms: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        let _ = write!(
            s,
            "{} runs, {} steps, {} keys to masters ({} for two slaves), {} to slaves, {} from key \
             streams, {} expiries set by delivery notices, {} pool keys expired, {} crashes, {} live \
             reloads, {} live KEK rotations, {:.0} s simulated",
            self.runs,
            self.steps,
            self.master_keys,
            self.multicast_keys,
            self.slave_keys,
            self.stream_keys,
            self.notified_keys,
            self.expired_pool_keys,
            self.crashes,
            self.reloads,
            self.kek_rotations,
            self.sim_ms as f64 / 1000.0
        );
        f.write_str(&s)
    }
}
