"""Benchmarks of the Python bindings (not tests: nothing fails when a figure is slow).

    python simulator/python/benchmarks/bench.py            # full size
    python simulator/python/benchmarks/bench.py --quick    # tiny, without TNO (a smoke test)
    python simulator/python/benchmarks/bench.py --rounds 40 --calls 10 --curve-only

Prints, on this machine:
* the 1,000-point infinite-decoy curve (GYS, 0-200 km) through `qkd_sim.rate_curve` (the dict
  of NumPy columns) against the Rust library call behind it (`qkd_sim._rust_rate_curve`:
  `rate_curve_detailed`, its vector of points returned unconverted). Both are timed the same
  way: from Python, CPU time of this thread (`time.thread_time_ns`, so other processes on a
  shared machine do not count), one call at a time, each result freed only after the clock
  stops, the two calls alternated (ABAB..., the order swapped every round). Each round takes
  the median of `--calls` calls of each and their ratio; the rounds give the median ratio, the
  mean with its 95 % interval and the spread. Wall time is printed beside it;
* one Lim 2014 finite-key optimisation (n_X = 1e7) at 50 distances from 0 to the reach;
* the same kinds of computation with TNO's `qkd_key_rate` package (PyPI
  `tno-quantum-communication-qkd-key-rate`), if installed: the fully asymptotic BB84 rate
  optimised over mu, and the finite-key BB84 optimisation, each at a few attenuations.
"""

import argparse
import math
import statistics
import time

import numpy as np

import qkd_sim

# Two-sided 95 % quantiles of Student's t by degrees of freedom (the normal value beyond 30).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
       17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
       25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def timed(f):
    """(CPU ns, wall ns) of one call of `f`, its result freed after both clocks stop."""
    w, c = time.perf_counter_ns(), time.thread_time_ns()
    r = f()
    c, w = time.thread_time_ns() - c, time.perf_counter_ns() - w
    del r
    return c, w


def python_vs_rust(n, rounds, calls):
    """Per-round medians (CPU and wall, seconds) of the Python call and the Rust call."""
    py = lambda: qkd_sim.rate_curve("decoy-infinite", 0.0, 200.0, n)  # noqa: E731
    rust = lambda: qkd_sim._rust_rate_curve("decoy-infinite", 0.0, 200.0, n)  # noqa: E731
    assert len(rust()) == len(py()["key_bps"]) == n
    for _ in range(3):  # warm-up: caches, allocator, NumPy's first array
        timed(py)
        timed(rust)
    out = []
    for r in range(rounds):
        a, b = [], []
        for _ in range(calls):
            if r % 2 == 0:
                a.append(timed(py))
                b.append(timed(rust))
            else:
                b.append(timed(rust))
                a.append(timed(py))
        out.append(tuple(statistics.median(t[i] for t in s) * 1e-9 for s in (a, b) for i in (0, 1)))
    return out  # (py cpu, py wall, rust cpu, rust wall) per round


def summary(ratios):
    """Median, mean, 95 % interval of the mean, min, max of per-round ratios, in %."""
    k = len(ratios)
    mean = statistics.fmean(ratios)
    half = T95.get(k - 1, 1.96) * statistics.stdev(ratios) / math.sqrt(k) if k > 1 else math.nan
    return tuple(100 * (v - 1) for v in
                 (statistics.median(ratios), mean, mean - half, mean + half, min(ratios), max(ratios)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, no TNO comparison")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    ap.add_argument("--calls", type=int, default=10, help="calls of each per round (default 10)")
    ap.add_argument("--points", type=int, default=1000, help="points of the curve (default 1000)")
    ap.add_argument("--curve-only", action="store_true", help="only the Python-vs-Rust curve")
    args = ap.parse_args()
    quick = args.quick
    n, fk_points = (50, 3) if quick else (args.points, 50)
    rounds, calls = (3, 2) if quick else (args.rounds, args.calls)

    res = python_vs_rust(n, rounds, calls)
    py_cpu = statistics.median(r[0] for r in res)
    py_wall = statistics.median(r[1] for r in res)
    rust_cpu = statistics.median(r[2] for r in res)
    med, mean, lo, hi, mn, mx = summary([r[0] / r[2] for r in res])
    wmed, wmean, wlo, whi, _, _ = summary([r[1] / r[3] for r in res])
    print(f"{n}-point infinite-decoy curve, {rounds} rounds x {calls} calls alternated, CPU time: "
          f"Python call {py_cpu * 1e3:.4f} ms, Rust call {rust_cpu * 1e3:.4f} ms (medians); "
          f"overhead median {med:+.2f} %, mean {mean:+.2f} % (95 % interval {lo:+.2f} to "
          f"{hi:+.2f} %), rounds {mn:+.2f} to {mx:+.2f} %; wall time: median {wmed:+.2f} %, "
          f"mean {wmean:+.2f} % ({wlo:+.2f} to {whi:+.2f} %)")
    if args.curve_only:
        return

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
          f"{tno_point * 1e3 * 1000:.0f} ms for 1000 points ({tno_point * 1000 / py_wall:.0f}x the binding's wall time)")
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
