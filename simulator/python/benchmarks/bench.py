"""Benchmarks of the Python bindings (not tests: nothing fails when a figure is slow).

    python simulator/python/benchmarks/bench.py            # full size
    python simulator/python/benchmarks/bench.py --quick    # tiny, without TNO (a smoke test)

Prints, on this machine:
* the 1,000-point infinite-decoy curve (GYS, 0-200 km) through `qkd_sim.rate_curve`, best of
  20, beside the same curve timed inside Rust (`qkd_sim._rust_time_rate_curve`, the library
  call without any conversion), so the overhead of the binding is measured under one load;
* one Lim 2014 finite-key optimisation (n_X = 1e7) at 50 distances from 0 to the reach;
* the same kinds of computation with TNO's `qkd_key_rate` package (PyPI
  `tno-quantum-communication-qkd-key-rate`), if installed: the fully asymptotic BB84 rate
  optimised over mu, and the finite-key BB84 optimisation, each at a few attenuations.
"""

import argparse
import statistics
import time

import numpy as np

import qkd_sim


def best(f, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, no TNO comparison")
    quick = ap.parse_args().quick
    n, runs, fk_points = (50, 2, 3) if quick else (1000, 20, 50)
    py_best, py_med = best(lambda: qkd_sim.rate_curve("decoy-infinite", 0.0, 200.0, n), runs)
    rust = [qkd_sim._rust_time_rate_curve("decoy-infinite", 0.0, 200.0, n) for _ in range(runs)]
    print(f"{n}-point infinite-decoy curve: Python call {py_best * 1e3:.3f} ms best "
          f"({py_med * 1e3:.3f} median); Rust call {min(rust) * 1e3:.3f} ms best "
          f"({statistics.median(rust) * 1e3:.3f} median); overhead {100 * (py_best / min(rust) - 1):+.1f} %")

    hw = qkd_sim.hardware("lim2014")
    reach_km = 178.0
    lengths = np.linspace(0.0, reach_km, fk_points)
    eta = qkd_sim.db_to_transmittance(hw["alpha_db_per_km"] * lengths) * hw["eta_bob"]
    t = time.perf_counter()
    r = qkd_sim.finite_key_lim(eta, 1e7)
    per = (time.perf_counter() - t) / len(eta)
    print(f"finite-key optimisation (Lim 2014, n_X = 1e7), {fk_points} points 0-{reach_km:.0f} km: "
          f"{per * 1e3:.3f} ms per point ({int((r['key_bits'] > 0).sum())} with key)")

    if quick:
        return
    try:
        from tno.quantum.communication.qkd_key_rate.quantum import standard_detector
        from tno.quantum.communication.qkd_key_rate.quantum.bb84 import (
            BB84FiniteKeyRateEstimate,
            BB84FullyAsymptoticKeyRateEstimate,
        )
    except ImportError:
        print("TNO qkd_key_rate not installed: pip install tno-quantum-communication-qkd-key-rate")
        return
    det = standard_detector.customise(dark_count_rate=1e-6, polarization_drift=0,
                                      error_detector=0.033, efficiency_party=1)
    fa = BB84FullyAsymptoticKeyRateEstimate(detector=det)
    atts = np.linspace(0.0, 30.0, 10)
    t = time.perf_counter()
    for a in atts:
        fa.optimize_rate(attenuation=float(a))
    tno_point = (time.perf_counter() - t) / len(atts)
    print(f"TNO fully asymptotic BB84, mu optimised: {tno_point * 1e3:.2f} ms per point, "
          f"{tno_point * 1e3 * 1000:.0f} ms for 1000 points ({tno_point * 1000 / py_best:.0f}x the binding)")
    fk = BB84FiniteKeyRateEstimate(detector=det, number_of_pulses=int(1e10))
    atts = [3.0, 10.0, 20.0]
    t = time.perf_counter()
    for a in atts:
        fk.optimize_rate(attenuation=a)
    tno_fk = (time.perf_counter() - t) / len(atts)
    print(f"TNO finite-key BB84 optimisation: {tno_fk * 1e3:.1f} ms per point "
          f"({tno_fk / per:.0f}x qkd_sim's Lim 2014)")


if __name__ == "__main__":
    main()
