//! Fundamental limits of repeaterless QKD over a lossy channel.
//!
//! * PLOB: Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017):
//!   K(η) = −log₂(1 − η) bits per channel use for the pure-loss channel.
//! * TGW: Takeoka, Guha, Wilde, Nat. Commun. 5, 5235 (2014): K(η) = log₂[(1 + η)/(1 − η)].
//! * Single-repeater bound: Pirandola, Commun. Phys. 2, 51 (2019): with one (untrusted or
//!   trusted) node in the middle of a pure-loss channel of end-to-end transmittance η, at most
//!   −log₂(1 − √η) bits per use. Twin-field protocols are held against it.
//! * Thermal-loss upper bound (PLOB): −log₂[(1 − η)ηⁿ̄] − h(n̄), valid for n̄ < η/(1 − η).
//!
//! All are computed with `ln_1p` so they stay accurate down to η = 10⁻³⁰⁰ (thousands of km):
//! the naive `-(1-η).log2()` is already 11 % off at 160 dB and exactly 0 beyond ~163 dB.
//! The η here is always the *channel* transmittance (an "absolute" bound).

use std::f64::consts::LN_2;

/// PLOB bound in bits per channel use at channel transmittance `eta_ch` ∈ [0, 1].
pub fn plob(eta_ch: f64) -> f64 {
    if eta_ch >= 1.0 {
        return f64::INFINITY;
    }
    -(-eta_ch.max(0.0)).ln_1p() / LN_2
}

/// Single-repeater bound in bits per channel use at end-to-end channel transmittance `eta_ch`:
/// −log₂(1 − √η), the PLOB bound of one of the two halves.
pub fn single_repeater(eta_ch: f64) -> f64 {
    plob(eta_ch.max(0.0).sqrt())
}

/// TGW bound in bits per channel use: 2·atanh(η)/ln 2.
pub fn tgw(eta_ch: f64) -> f64 {
    if eta_ch >= 1.0 {
        return f64::INFINITY;
    }
    let e = eta_ch.max(0.0);
    (e.ln_1p() - (-e).ln_1p()) / LN_2
}

/// PLOB upper bound for a thermal-loss channel with `n_bar` mean thermal photons, clamped at 0
/// (the bound is 0 from n̄ ≥ η/(1 − η) on).
pub fn plob_thermal(eta_ch: f64, n_bar: f64) -> f64 {
    if n_bar <= 0.0 {
        return plob(eta_ch);
    }
    if eta_ch >= 1.0 {
        return f64::INFINITY;
    }
    if n_bar >= eta_ch / (1.0 - eta_ch) {
        return 0.0;
    }
    let g = (n_bar + 1.0) * n_bar.ln_1p() / LN_2 - n_bar * n_bar.log2();
    let v = -((-eta_ch).ln_1p() / LN_2 + n_bar * eta_ch.log2()) - g;
    v.max(0.0)
}

/// A bound per channel use turned into bit/s at repetition rate `rep_rate_hz`.
pub fn per_second(bits_per_use: f64, rep_rate_hz: f64) -> f64 {
    bits_per_use * rep_rate_hz
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physics::channel::db_to_transmittance;

    #[test]
    fn table_values_of_section_3() {
        // (loss dB, PLOB, TGW or NaN, PLOB at 1 GHz)
        let rows = [
            (10.0, 0.152, 0.290),
            (20.0, 1.45e-2, 2.89e-2),
            (30.0, 1.443e-3, f64::NAN),
            (40.0, 1.443e-4, 2.885e-4),
            (100.0, 1.443e-10, f64::NAN),
            (160.0, 1.443e-16, 2.885e-16),
        ];
        for (db, p, t) in rows {
            let eta = db_to_transmittance(db);
            assert!((plob(eta) / p - 1.0).abs() < 3e-3, "PLOB at {db} dB");
            if !t.is_nan() {
                assert!((tgw(eta) / t - 1.0).abs() < 3e-3, "TGW at {db} dB");
            }
        }
        assert!((per_second(plob(0.1), 1e9) / 152e6 - 1.0).abs() < 3e-3);
    }

    #[test]
    fn no_underflow_at_1000km_and_beyond() {
        // 1000 km of SMF at 0.2 dB/km = 200 dB: PLOB ≈ 1.4427·η, never 0.
        for db in [160.0, 200.0, 300.0, 1000.0] {
            let eta = db_to_transmittance(db);
            let k = plob(eta);
            assert!(k > 0.0);
            assert!((k / (eta / LN_2) - 1.0).abs() < 1e-12, "{db} dB");
            assert!((tgw(eta) / (2.0 * eta / LN_2) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn single_repeater_bound_is_plob_of_half_the_loss() {
        // 40 dB end to end: each half 20 dB, −log₂(1 − 0.01) = 1.45e-2.
        let eta = db_to_transmittance(40.0);
        assert!((single_repeater(eta) / 1.45e-2 - 1.0).abs() < 3e-3);
        assert!((single_repeater(eta) / plob(db_to_transmittance(20.0)) - 1.0).abs() < 1e-12);
        // √η scaling far away: 200 dB → 100 dB per half, ≈ 1.4427e-10.
        let far = single_repeater(db_to_transmittance(200.0));
        assert!((far / (1e-10 / LN_2) - 1.0).abs() < 1e-9);
        assert!(single_repeater(eta) > plob(eta));
    }

    #[test]
    fn thermal_bound_is_below_pure_loss_and_clamped() {
        let eta = 0.1;
        assert!(plob_thermal(eta, 0.01) < plob(eta));
        assert_eq!(plob_thermal(eta, 0.2), 0.0);
        assert_eq!(plob_thermal(eta, 0.0), plob(eta));
    }
}
