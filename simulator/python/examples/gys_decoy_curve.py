"""Reproduces Fig. 3 of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005): the key rate of decoy-state
BB84 versus fibre length with the GYS setting (alpha 0.21 dB/km, e_d 3.3 %, Y0 1.7e-6,
eta_Bob 4.5 %, f = 1.22), infinitely many decoys against vacuum + one weak decoy (mu 0.48,
nu 0.05), with the PLOB bound. Published maximum distances: 140.55 km (vacuum + weak) and
142.05 km (infinite decoys).

    pip install ./simulator/python matplotlib
    python simulator/python/examples/gys_decoy_curve.py --out gys.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import qkd_sim  # noqa: E402

PUBLISHED_KM = {"vacuum-weak": 140.55, "infinite": 142.05}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gys_decoy_curve.png", help="PNG file to write")
    args = ap.parse_args()

    inf = qkd_sim.rate_curve("decoy-infinite", 0.0, 160.0, 801, hardware="gys", mu=0.48)
    vw = qkd_sim.rate_curve("decoy-vacuum-weak", 0.0, 160.0, 801, hardware="gys", mu=0.48, nu=0.05)
    reach = {
        "vacuum-weak": qkd_sim.decoy_max_distance(0.48, method="vacuum-weak", nu=0.05, hardware="gys"),
        "infinite": qkd_sim.decoy_max_distance(0.48, method="infinite", hardware="gys"),
    }
    for k, km in reach.items():
        print(f"{k:12s} reach {km:.2f} km (published {PUBLISHED_KM[k]:.2f} km, "
              f"{100 * (km / PUBLISHED_KM[k] - 1):+.2f} %)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keep = inf["key_per_pulse"] > 0
    ax.semilogy(inf["x"][keep], inf["key_per_pulse"][keep], label="infinite decoys (mu 0.48)")
    keep = vw["key_per_pulse"] > 0
    ax.semilogy(vw["x"][keep], vw["key_per_pulse"][keep], "--", label="vacuum + weak (mu 0.48, nu 0.05)")
    ax.semilogy(inf["x"], inf["plob_per_use"], ":", color="grey", label="PLOB bound")
    for i, km in enumerate(PUBLISHED_KM.values()):
        ax.axvline(km, color="black", lw=0.5, alpha=0.5, label="published reach" if i == 0 else None)
    ax.set_ylim(1e-8, 1)
    ax.set_xlabel("fibre length (km)")
    ax.set_ylabel("secret key rate (bit per pulse)")
    ax.set_title("Decoy BB84, GYS setting (Ma, Qi, Zhao, Lo 2005, Fig. 3)")
    ax.legend(loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
