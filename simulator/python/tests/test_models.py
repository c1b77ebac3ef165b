"""The models through Python: published check values, NumPy in and out, clear errors."""

import math

import numpy as np
import pytest

import qkd_sim


def test_gys_vacuum_weak_reach_matches_ma_2005():
    # Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005): 140.55 km with vacuum + weak decoy (1 %).
    reach = qkd_sim.decoy_max_distance(0.48, method="vacuum-weak", nu=0.05, hardware="gys")
    assert abs(reach - 140.55) / 140.55 < 0.01
    inf = qkd_sim.decoy_max_distance(0.48, method="infinite", hardware="gys")
    assert abs(inf - 142.05) / 142.05 < 0.01


def test_gys_rate_table_of_qkd_models_2_1():
    hw = qkd_sim.hardware("gys")
    lengths = np.array([0.0, 50.0, 100.0, 125.0])
    eta = qkd_sim.db_to_transmittance(hw["alpha_db_per_km"] * lengths) * hw["eta_bob"]
    inf = qkd_sim.decoy_bb84(eta, method="infinite", hardware="gys")
    vw = qkd_sim.decoy_bb84(eta, 0.48, method="vacuum-weak", nu=0.05, hardware="gys")
    np.testing.assert_allclose(inf["key_per_pulse"], [2.555e-3, 2.226e-4, 1.719e-5, 3.212e-6], rtol=5e-3)
    np.testing.assert_allclose(vw["key_per_pulse"], [2.414e-3, 2.096e-4, 1.602e-5, 2.855e-6], rtol=5e-3)
    # Estimator direction at 50 km: Y1 lower bound below the truth, e1 upper bound above.
    assert vw["y1"][1] == pytest.approx(3.955e-3, rel=2e-3) and vw["y1"][1] < inf["y1"][1]
    assert vw["e1"][1] == pytest.approx(0.0354, rel=5e-3) and vw["e1"][1] > inf["e1"][1]


def test_bounds_keep_shape_and_match_the_table():
    eta = qkd_sim.db_to_transmittance(np.array([[10.0, 20.0], [40.0, 160.0]]))
    p = qkd_sim.plob(eta)
    assert p.shape == (2, 2) and p.dtype == np.float64
    np.testing.assert_allclose(p, [[0.152, 1.45e-2], [1.443e-4, 1.443e-16]], rtol=3e-3)
    np.testing.assert_allclose(qkd_sim.tgw(eta[0]), [0.290, 2.89e-2], rtol=3e-3)
    # Single-repeater bound: PLOB of half the loss.
    np.testing.assert_allclose(qkd_sim.single_repeater(eta[1, 0]), qkd_sim.plob(eta[0, 1]), rtol=1e-12)
    assert float(qkd_sim.plob(0.1)) == pytest.approx(0.152, rel=3e-3)
    assert qkd_sim.plob_thermal([0.1], 0.2)[0] == 0.0


def test_finite_key_optimiser_and_fixed_parameters():
    eta = 0.1 * qkd_sim.db_to_transmittance(0.2 * np.array([20.0, 80.0, 300.0]))
    free = qkd_sim.finite_key_lim(eta, 1e7)
    assert free["key_bits"][0] > 0 and free["key_bits"][2] == 0
    assert (free["key_per_pulse"] <= qkd_sim.plob(eta / 0.1)).all()
    held = qkd_sim.finite_key_lim(eta, 1e7, mu1=0.5, q_x=0.8)
    assert (held["mu1"] == 0.5).all() and (held["q_x"] == 0.8).all()
    assert (held["key_per_pulse"] <= free["key_per_pulse"] * (1 + 1e-9)).all()
    r = qkd_sim.one_decoy_rusca(eta[:2], 1e7, p_z=0.9)
    assert (r["p_z"] == 0.9).all() and (r["key_bits"] > 0).all()
    with pytest.raises(ValueError, match="mu2"):
        qkd_sim.finite_key_lim(eta, 1e7, mu1=0.2, mu2=0.3)


def test_rate_curve_estimates_and_bound_family():
    c = qkd_sim.rate_curve("finite-key", 10, 150, 15, hardware="lim2014", block_bits=1e7, p_basis=0.9)
    with_key = c["key_per_pulse"] > 0
    assert with_key.sum() >= 10
    assert (c["p_basis"] == 0.9).all()
    assert (c["y1_lower"][with_key] > 0).all() and (c["phase_error_upper"][with_key] < 0.5).all()
    assert c["bound"] == "plob" and not c["exceeds_bound"].any()
    tf = qkd_sim.rate_curve("twin-field", 0, 700, 15)
    assert tf["bound"] == "single-repeater"
    assert (tf["key_per_pulse"] > tf["plob_per_use"]).any() and not tf["exceeds_bound"].any()
    # Arbitrary x values (a NumPy array in).
    x = np.array([5.0, 50.0, 100.0])
    pts = qkd_sim.rate_curve("decoy-infinite", x=x)
    assert (pts["x"] == x).all()


def test_rate_curve_columns_are_independent_contiguous_arrays():
    # Filled in blocks while the curve is computed: every block and the partial last one land
    # in the right column, and each column is its own contiguous float64 array.
    n = 77
    c = qkd_sim.rate_curve("decoy-infinite", 0, 150, n)
    floats = [k for k, v in c.items() if isinstance(v, np.ndarray) and v.dtype == np.float64]
    assert len(floats) == 35
    for k in floats:
        a = c[k]
        assert a.shape == (n,) and a.flags["C_CONTIGUOUS"] and a.flags["WRITEABLE"], k
    assert c["exceeds_bound"].dtype == np.bool_ and c["exceeds_bound"].shape == (n,)
    np.testing.assert_array_equal(c["x"], 150.0 * np.arange(n) / (n - 1))
    np.testing.assert_array_equal(c["length_km"], c["x"])
    np.testing.assert_allclose(c["loss_db"], 0.21 * c["x"] + qkd_sim.hardware("gys")["extra_loss_db"])
    assert (c["p_mu1"] == 1.0).all() and (c["p_basis"] == 0.5).all() and np.isnan(c["mu2"]).all()
    # Points from the first block, the second and the partial last one, on their own (the
    # columns that do not depend on the previous point's optimum; test_cli_parity compares
    # every column of whole sweeps bit for bit).
    at = [0, 40, 76]
    one = qkd_sim.rate_curve("decoy-infinite", x=c["x"][at])
    for k in ["length_km", "loss_db", "plob_per_use", "plob_bps", "tgw_per_use", "bound_bps"]:
        np.testing.assert_array_equal(one[k], c[k][at], err_msg=k)
    np.testing.assert_allclose(one["key_bps"], c["key_bps"][at], rtol=1e-9)
    c["key_bps"][:] = 0.0
    assert (c["key_per_pulse"][:10] > 0).all()


def test_cv_and_twin_field():
    cv = qkd_sim.cv_gg02(qkd_sim.db_to_transmittance(np.array([0.0, 5.0, 10.0])))
    assert (np.diff(cv["key_per_symbol"]) < 0).all()
    assert (cv["key_per_symbol"] <= cv["i_ab"]).all()
    tf = qkd_sim.twin_field([100.0, 500.0], params={"phase_slices": 8})
    assert (tf["key_per_pulse"] > 0).all() and (tf["qber"] < 0.1).all()
    with pytest.raises(ValueError, match="phase_slices|unknown field"):
        qkd_sim.twin_field([1.0], params={"phase_slice": 8})


def test_errors_name_the_parameter():
    with pytest.raises(ValueError, match="eta_bob"):
        qkd_sim.rate_curve("decoy-infinite", hardware={"preset": "gys", "eta_bob": 1.5})
    with pytest.raises(ValueError, match="protocol `bb85`"):
        qkd_sim.rate_curve("bb85")
    with pytest.raises(ValueError, match="not a parameter"):
        qkd_sim.rate_curve("cv-gg02", mu2=0.1)
    with pytest.raises(ValueError, match="length_km"):
        qkd_sim.Link({"kind": "decoy-bb84", "length_km": -3})


def test_link_models_and_satellite_passes(repo):
    link = qkd_sim.Link('kind = "finite-key-bb84"\nlength_km = 20\nevents = [{ kind = "fibre-cut", at_s = 60, repair_s = 60 }]\n')
    s = link.sample(np.array([30e3, 90e3, 150e3]))
    assert s["phase"] == ["up", "down", "up"]
    assert s["cumulative_bits"].dtype == np.uint64
    assert math.isnan(s["qber"][1]) and s["qber"][0] > 0
    assert link.status(90e3)["state"].startswith("Down")
    orbit = {"altitude_km": 500.0, "inclination_deg": 97.4}
    station = {"lat_deg": 40.65, "lon_deg": 16.7, "min_elevation_deg": 15.0}
    passes = qkd_sim.satellite_passes(orbit, station, 1781049600.0, horizon_s=2 * 86400.0)
    assert 2 <= len(passes) <= 12
    assert all(10.0 < p["end_s"] - p["start_s"] < 600.0 and p["max_elevation_deg"] >= 15.0 for p in passes)
    sat = qkd_sim.Link({"kind": "satellite-downlink", "orbit": orbit, "station": station,
                        "start_unix_s": 1781049600.0, "horizon_s": 7 * 86400.0})
    outcomes = sat.passes()
    assert outcomes and all("key_bits" in p for p in outcomes)
    assert any(p["key_bits"] > 0 for p in outcomes) or all(p["lost"] for p in outcomes)


def test_network_run_arrays(repo, tmp_path):
    r = qkd_sim.run_scenario(str(repo / "simulator/scenarios/metro-2node.toml"), aggregate_s=600,
                             out=str(tmp_path))
    assert len(r["times_s"]) == 144 and r["times_s"][-1] == 86400
    link = r["links"][0]
    assert len(link["cumulative_bits"]) == 144
    assert (np.diff(link["cumulative_bits"].astype(np.int64)) >= 0).all()
    assert (tmp_path / "links.csv").exists() and (tmp_path / "summary.json").exists()
    # The finite-key BB84 link is repeaterless: held against PLOB, far below it (bit/s).
    b = link["bound"]
    assert b["bound"] == "plob" and 0 < b["key"] < b["limit"] and 0 < b["ratio"] < 0.01
    with pytest.raises(ValueError, match="no node"):
        qkd_sim.run_scenario(str(repo / "simulator/scenarios/metro-2node.toml"), pairs=["a:b"])
