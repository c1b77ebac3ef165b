//! No repeaterless model exceeds the PLOB bound for the same channel loss (property test).
//!
//! The bound uses the channel transmittance η_ch ("absolute" bound); the models see η_ch times
//! their detector efficiency, so this is what a real link is held to. Key rates are per channel
//! use (per pulse, per symbol).

use proptest::prelude::*;
use qkd_simulator::physics::bounds::plob;
use qkd_simulator::physics::channel::DvHardware;
use qkd_simulator::physics::cv::Gg02;
use qkd_simulator::physics::decoy::{AsymptoticBb84, DecoyMethod};
use qkd_simulator::physics::finite::{Lim2014, Rusca2018};
use qkd_simulator::physics::postproc::EcModel;

fn hardware() -> impl Strategy<Value = DvHardware> {
    (
        0.15..0.25f64,
        0.0..3.0f64,
        0.01..1.0f64,
        0.0..1e-5f64,
        0.0..0.05f64,
        0.0..0.05f64,
    )
        .prop_map(|(alpha, extra, eta_bob, pdc, pap, emis)| DvHardware {
            rep_rate_hz: 1e9,
            alpha_db_per_km: alpha,
            extra_loss_db: extra,
            eta_bob,
            dark_count_prob: pdc,
            afterpulse_prob: pap,
            misalignment: emis,
            dead_time_s: 0.0,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn asymptotic_decoy_models_stay_under_plob(
        hw in hardware(),
        length in 0.0..400.0f64,
        mu in 0.01..1.2f64,
        nu_frac in 0.05..0.9f64,
        p_z in 0.5..0.99f64,
        f_ec in 1.0..1.5f64,
    ) {
        let eta_ch = hw.eta_ch(length);
        for method in [DecoyMethod::Infinite, DecoyMethod::VacuumWeak { nu: mu * nu_frac }, DecoyMethod::NoDecoy] {
            let m = AsymptoticBb84 { hw, f_ec, p_z, method };
            let r = m.at_distance(length, mu).key_per_pulse;
            prop_assert!(r >= 0.0);
            prop_assert!(r <= plob(eta_ch), "{method:?} at {length} km: {r} > {}", plob(eta_ch));
            let (_, best) = m.optimal_mu(hw.eta_sys(length));
            prop_assert!(best.key_per_pulse <= plob(eta_ch));
        }
    }

    #[test]
    fn cv_qkd_stays_under_plob(
        length in 0.0..300.0f64,
        v_a in 1.0..40.0f64,
        xi in 0.0..0.1f64,
        eta_det in 0.3..1.0f64,
        v_el in 0.0..0.1f64,
        beta in 0.85..0.99f64,
    ) {
        let m = Gg02 { v_a, xi, eta_det, v_el, beta, alpha_db_per_km: 0.2, symbol_rate_hz: 1e8 };
        let t = 10f64.powf(-0.02 * length);
        let k = m.at_distance(length).key_per_symbol;
        prop_assert!(k >= 0.0 && k <= plob(t), "{k} > {} at {length} km", plob(t));
    }
}

proptest! {
    // Finite-key optimisations cost ~1 ms each: fewer cases.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn finite_key_models_stay_under_plob(hw in hardware(), length in 0.0..250.0f64, log_n in 4.0..10.0f64) {
        let eta_ch = hw.eta_ch(length);
        let eta = hw.eta_sys(length);
        let lim = Lim2014 { hw, ..Lim2014::paper(10f64.powf(log_n)) };
        let (_, k) = lim.optimise(eta);
        prop_assert!(k.key_per_pulse <= plob(eta_ch), "Lim: {} > {}", k.key_per_pulse, plob(eta_ch));
        let mut r = Rusca2018::new(hw, 10f64.powf(log_n));
        r.ec = EcModel::Ldpc { f_crit: 1.22, frame_bits: 4096 };
        let (_, k) = r.optimise(eta);
        prop_assert!(k.key_per_pulse <= plob(eta_ch), "Rusca: {} > {}", k.key_per_pulse, plob(eta_ch));
    }
}

/// Near-ideal hardware at short distance is where a model error would show: a lossless detector
/// and no errors must still stay below −log₂(1 − η).
#[test]
fn ideal_hardware_at_zero_loss_edge() {
    let hw = DvHardware {
        eta_bob: 1.0,
        dark_count_prob: 0.0,
        misalignment: 0.0,
        afterpulse_prob: 0.0,
        ..DvHardware::GYS
    };
    for l in [0.0, 1.0, 10.0, 100.0, 1000.0] {
        let m = AsymptoticBb84 {
            hw,
            f_ec: 1.0,
            p_z: 0.99,
            method: DecoyMethod::Infinite,
        };
        let (_, p) = m.optimal_mu(hw.eta_sys(l));
        assert!(p.key_per_pulse <= plob(hw.eta_ch(l)), "{l} km");
    }
}
