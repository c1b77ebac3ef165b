//! Crashes placed exactly between the two devices of a link: `qkd-node` built with the feature
//! `failpoints` (`cargo test -p qkd-node --features failpoints -- failpoints`, run by `.ci/run`)
//! aborts where the environment variable `QKD_FAILPOINT` says, in the link-key ingest
//! (`qkd_kms::failpoint`). The default build has no such points: the last test here proves it
//! of the very binary the other tests run.

use std::collections::HashSet;

use crate::devices::Emu;
use crate::harness::Net;

/// The environment variable that arms a point (`qkd_kms::failpoint::ENV`).
const ENV: &str = "QKD_FAILPOINT";

#[cfg(feature = "failpoints")]
mod crashes {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    use qkd_types::KeyId;

    use super::*;
    use crate::devices::{
        fetch_owed, link_status, tail, until_device_key_flows, use_key_if_served, wait_link,
    };
    use crate::harness::ends_agree;

    /// What the test saw of one crash.
    struct Crash {
        /// Keys waiting at the slave's device when the node died.
        pending: Vec<KeyId>,
        /// dec_keys answered "not found" by the slave's device up to the crash.
        refusals_at_crash: u64,
    }

    /// Uses key until `node`, armed at `point`, dies there (by SIGABRT, its log naming the
    /// point), then restarts it armed at `next`, or unarmed and then uses key until the link
    /// carries new key from the devices again. Keys delivered meanwhile are new and the same at
    /// both ends. With `stranding`, the keys waiting at the slave's device when the node died are
    /// expected never to be fetched.
    async fn crash_at(
        net: &Net,
        emu: &Emu,
        (node, point): (&str, &str),
        next: Option<&str>,
        stranding: bool,
        seen: &mut HashSet<String>,
    ) -> Crash {
        assert!(qkd_kms::failpoint::POINTS.contains(&point));
        // Shown with a failure's output.
        eprintln!("crash {node} at {point}");
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut owed = Vec::new();
        let status = loop {
            if let Some(status) = net.exited(node) {
                break status;
            }
            owed.extend(use_key_if_served(net, seen).await);
            assert!(
                Instant::now() < deadline,
                "{node} never reached {point}\n{}",
                tail(&net.log(node))
            );
        };
        // SIGABRT, as `std::process::abort` raises it: a crash, not an orderly exit.
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{node}: {status}");
        assert!(
            net.log(node)
                .contains(&format!("failpoint {point}: aborting the process")),
            "{}",
            tail(&net.log(node))
        );
        let crash = Crash {
            pending: emu.pair.pending_ids(),
            refusals_at_crash: emu.pair.dec_keys_refusals(),
        };
        if stranding {
            emu.strand(crash.pending.iter().copied());
        }
        if let Some(next) = next {
            net.start_env(node, &[(ENV, next)]);
            return crash;
        }
        net.start(node);
        for end in ["A", "B"] {
            wait_link(net, end, "up", |s| s["state"] == "up").await;
        }
        fetch_owed(net, &owed).await;
        let issued = emu.pair.issued_keys();
        until_device_key_flows(net, emu, issued, seen).await;
        crash
    }

    /// Restarts a running node armed at `point`.
    fn arm(net: &Net, node: &str, point: &str) {
        net.stop(node);
        net.start_env(node, &[(ENV, point)]);
    }

    /// Each point in turn on one running link (master points at A, slave points at B):
    ///
    /// * `master-after-enc-keys`: A's device handed out keys A never recorded. A never offers
    ///   them, B's device keeps them pending for good, and neither store has them.
    /// * `master-after-store`: A recorded the keys (pending) but never offered them. After the
    ///   restart A offers them first; B fetches them; both ends hold them.
    /// * `slave-after-dec-keys`: B's device handed the offered keys to B, which died before
    ///   recording them. A offers them again, B's device no longer has them ("not found",
    ///   HTTP 400), A drops them, B skips their sequence numbers: neither end uses them.
    /// * `slave-after-store`: B recorded the keys but never answered A. A offers them again, B
    ///   already holds them and says yes without asking its device.
    ///
    /// Throughout: every key an SAE gets is new and the same at both ends; after each restart
    /// key flows from the devices again on its own; at the end the two stores agree on the link
    /// (`ends_agree`) and no device key ID was refused as re-issued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashes_between_enc_keys_and_dec_keys_use_no_key_and_the_link_recovers() {
        let net = Net::setup(1_000_000);
        let emu = Emu::start(&net).await;
        emu.attach(&net);
        // A is armed from its start, and re-armed as it restarts from each crash, so that no
        // orderly stop of A leaves keys behind at B's device the test would have to tell apart.
        net.start_env("A", &[(ENV, "master-after-enc-keys@3")]);
        net.start("B");
        let mut seen = HashSet::new();

        let lost = crash_at(
            &net,
            &emu,
            ("A", "master-after-enc-keys"),
            Some("master-after-store@2"),
            true,
            &mut seen,
        )
        .await;
        assert!(!lost.pending.is_empty(), "the crash left no key behind");

        let resumed = crash_at(
            &net,
            &emu,
            ("A", "master-after-store"),
            None,
            false,
            &mut seen,
        )
        .await;
        let resumed: Vec<KeyId> = resumed
            .pending
            .into_iter()
            .filter(|id| !lost.pending.contains(id))
            .collect();
        assert!(!resumed.is_empty(), "the crash left no key pending");

        arm(&net, "B", "slave-after-dec-keys@2");
        let dropped = crash_at(
            &net,
            &emu,
            ("B", "slave-after-dec-keys"),
            None,
            false,
            &mut seen,
        )
        .await;
        assert!(
            emu.pair.dec_keys_refusals() > dropped.refusals_at_crash,
            "B's device was never asked again for the keys it had handed out"
        );
        assert!(
            net.log("A")
                .contains("peer refused blocks; discarding them"),
            "{}",
            tail(&net.log("A"))
        );
        assert!(
            net.log("B")
                .contains("dec_keys: the device answered HTTP 400"),
            "{}",
            tail(&net.log("B"))
        );

        arm(&net, "B", "slave-after-store@2");
        let kept = crash_at(
            &net,
            &emu,
            ("B", "slave-after-store"),
            None,
            false,
            &mut seen,
        )
        .await;
        assert_eq!(
            emu.pair.dec_keys_refusals(),
            kept.refusals_at_crash,
            "B asked its device again for keys it held"
        );

        for node in ["A", "B"] {
            assert_eq!(
                link_status(&net, node).await["device_reissued_ids"],
                0,
                "{node}"
            );
        }
        net.stop("A");
        net.stop("B");
        let a = net.link_book("A");
        let b = net.link_book("B");
        let dropped = ends_agree(&a, &b);
        let as_block = |k: &KeyId| qkd_types::BlockId::from_bytes(*k.as_bytes());
        // master-after-enc-keys: at neither end, still at B's device.
        let still_pending = emu.pair.pending_ids();
        for id in &lost.pending {
            let block = as_block(id);
            assert!(!a.device_ids.contains(&block) && !b.device_ids.contains(&block));
            assert!(still_pending.contains(id));
        }
        // master-after-store: taken in at both ends, fetched from B's device.
        for id in &resumed {
            let block = as_block(id);
            assert!(a.device_ids.contains(&block) && b.device_ids.contains(&block));
            assert!(!still_pending.contains(id));
        }
        // slave-after-dec-keys: dropped by A (never used: pending blocks are never allocated),
        // taken in by B never; B's device handed them out once, to the B that died.
        assert!(!dropped.is_empty(), "no block was dropped");
        for block in &dropped {
            let key = KeyId::from_bytes(*block.as_bytes());
            assert!(!still_pending.contains(&key));
        }
    }
}

/// The binary built with the feature names the variable that arms its points: the search in
/// [`the_default_build_has_no_failpoints`] finds it where it is.
#[cfg(feature = "failpoints")]
#[test]
fn the_failpoints_build_is_armed_by_its_variable() {
    assert_eq!(ENV, qkd_kms::failpoint::ENV);
    assert!(binary_names_env());
}

/// Whether the node binary the tests run holds the bytes of [`ENV`].
fn binary_names_env() -> bool {
    let binary = std::fs::read(crate::harness::BIN).unwrap();
    let needle = ENV.as_bytes();
    binary.windows(needle.len()).any(|w| w == needle)
}

/// The binary the tests run, built without the feature: it holds no failpoint (not even the
/// name of the variable that arms one), and nodes started armed (A at a master point, B at a
/// slave point) carry key across a device link as usual, neither of them aborting.
#[cfg(not(feature = "failpoints"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_build_has_no_failpoints() {
    assert!(
        !binary_names_env(),
        "{} contains {ENV}",
        crate::harness::BIN
    );

    let net = Net::setup(1_000_000);
    let emu = Emu::start(&net).await;
    emu.attach(&net);
    net.start_env("A", &[(ENV, "master-after-enc-keys")]);
    net.start_env("B", &[(ENV, "slave-after-dec-keys")]);
    net.wait_for_keys("ENC-A1", "ENC-B1", 1).await;
    let mut seen = HashSet::new();
    let issued = emu.pair.issued_keys();
    crate::devices::until_device_key_flows(&net, &emu, issued, &mut seen).await;
    for node in ["A", "B"] {
        assert!(net.exited(node).is_none(), "{node} exited");
        assert!(!net.log(node).contains("failpoint"), "{node}");
    }
}
