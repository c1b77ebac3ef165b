//! Small derivative-free optimisers used to tune protocol parameters: golden-section search in one
//! dimension and a box-constrained Nelder–Mead simplex in several. Deterministic, no allocation in
//! the inner loop beyond the simplex itself.

/// Maximises `f` on `[lo, hi]` by golden-section search with `iters` iterations; returns
/// `(argmax, max)`. Assumes `f` is unimodal on the interval.
pub fn golden_max(mut f: impl FnMut(f64) -> f64, lo: f64, hi: f64, iters: u32) -> (f64, f64) {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo, hi);
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..iters {
        if fc > fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    if fc > fd { (c, fc) } else { (d, fd) }
}

/// Maximises `f` on `[lo, hi]` by Brent's method (golden section with parabolic steps; Brent,
/// "Algorithms for Minimization without Derivatives", 1973, ch. 5), to an absolute tolerance
/// `tol` in x. Returns `(argmax, max)`. Assumes `f` is unimodal on the interval; converges
/// superlinearly where it is smooth, so a dozen or two evaluations usually suffice.
pub fn brent_max(mut f: impl FnMut(f64) -> f64, lo: f64, hi: f64, tol: f64) -> (f64, f64) {
    const CGOLD: f64 = 0.381_966_011_250_105;
    let (mut a, mut b) = (lo, hi);
    let mut x = a + CGOLD * (b - a);
    let (mut w, mut v) = (x, x);
    let mut fx = -f(x);
    let (mut fw, mut fv) = (fx, fx);
    let (mut d, mut e) = (0.0f64, 0.0f64);
    for _ in 0..100 {
        let m = 0.5 * (a + b);
        let tol1 = tol + 1e-12 * x.abs();
        let tol2 = 2.0 * tol1;
        if (x - m).abs() <= tol2 - 0.5 * (b - a) {
            break;
        }
        let mut golden = true;
        if e.abs() > tol1 {
            // Parabola through x, w, v.
            let r = (x - w) * (fx - fv);
            let mut q = (x - v) * (fx - fw);
            let mut p = (x - v) * q - (x - w) * r;
            q = 2.0 * (q - r);
            if q > 0.0 {
                p = -p;
            }
            q = q.abs();
            if p.abs() < (0.5 * q * e).abs() && p > q * (a - x) && p < q * (b - x) {
                e = d;
                d = p / q;
                let u = x + d;
                if u - a < tol2 || b - u < tol2 {
                    d = if m >= x { tol1 } else { -tol1 };
                }
                golden = false;
            }
        }
        if golden {
            e = if x >= m { a - x } else { b - x };
            d = CGOLD * e;
        }
        let u = if d.abs() >= tol1 {
            x + d
        } else if d > 0.0 {
            x + tol1
        } else {
            x - tol1
        };
        let fu = -f(u);
        if fu <= fx {
            if u >= x {
                a = x;
            } else {
                b = x;
            }
            (v, fv, w, fw, x, fx) = (w, fw, x, fx, u, fu);
        } else {
            if u < x {
                a = u;
            } else {
                b = u;
            }
            if fu <= fw || w == x {
                (v, fv, w, fw) = (w, fw, u, fu);
            } else if fu <= fv || v == x || v == w {
                (v, fv) = (u, fu);
            }
        }
    }
    (x, -fx)
}

/// Maximises `f` on `[lo, hi]` (lo > 0) when it may be zero on most of the interval: a
/// logarithmic grid of `grid` points locates the best cell, then golden-section search refines
/// it. Returns `(argmax, max)`.
pub fn log_grid_golden_max(
    mut f: impl FnMut(f64) -> f64,
    lo: f64,
    hi: f64,
    grid: u32,
) -> (f64, f64) {
    let ratio = (hi / lo).ln() / f64::from(grid - 1);
    let x_at = |i: u32| lo * (ratio * f64::from(i)).exp();
    let mut best = (0, f64::NEG_INFINITY);
    for i in 0..grid {
        let v = f(x_at(i));
        if v > best.1 {
            best = (i, v);
        }
    }
    let a = x_at(best.0.saturating_sub(1));
    let b = x_at((best.0 + 1).min(grid - 1));
    let refined = golden_max(&mut f, a, b, 40);
    if refined.1 >= best.1 {
        refined
    } else {
        (x_at(best.0), best.1)
    }
}

/// Maximises `f` over the box `lo[i] ≤ x[i] ≤ hi[i]` with a Nelder–Mead simplex started at `x0`
/// (points are clamped into the box). Returns `(argmax, max)` after at most `max_evals`
/// evaluations.
pub fn nelder_mead_max<const D: usize>(
    f: impl FnMut(&[f64; D]) -> f64,
    x0: [f64; D],
    lo: [f64; D],
    hi: [f64; D],
    max_evals: usize,
) -> ([f64; D], f64) {
    let search = Simplex {
        max_evals,
        ..Simplex::DEFAULT
    };
    nelder_mead_max_with(f, x0, lo, hi, &search)
}

/// How a Nelder–Mead search starts and when it stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Simplex {
    /// Evaluations at most.
    pub max_evals: usize,
    /// Stop once the simplex's best and worst values agree to this relative tolerance.
    pub rel_tol: f64,
    /// Each initial vertex lies this fraction of the box's width from the start, along one axis.
    pub step: f64,
}

impl Simplex {
    /// [`nelder_mead_max`]'s settings (with its `max_evals`): values to 10⁻¹³, steps of a tenth
    /// of the box.
    pub const DEFAULT: Simplex = Simplex {
        max_evals: 300,
        rel_tol: 1e-13,
        step: 0.1,
    };
}

/// [`nelder_mead_max`] with the start and stopping rule of `search`.
pub fn nelder_mead_max_with<const D: usize>(
    mut f: impl FnMut(&[f64; D]) -> f64,
    x0: [f64; D],
    lo: [f64; D],
    hi: [f64; D],
    search: &Simplex,
) -> ([f64; D], f64) {
    let max_evals = search.max_evals;
    let clamp = |mut x: [f64; D]| {
        for i in 0..D {
            x[i] = x[i].clamp(lo[i], hi[i]);
        }
        x
    };
    // Minimise −f.
    let mut eval = |x: &[f64; D]| {
        let v = f(x);
        if v.is_nan() { f64::INFINITY } else { -v }
    };
    // Each vertex carries x/D, its share of the centroid, divided once when it enters the
    // simplex rather than at every iteration (the centroid sums the same quotients in the same
    // order, so the search is unchanged to the last bit).
    let vertex = |x: [f64; D], v: f64| Vertex {
        x,
        v,
        share: x.map(|xi| xi / D as f64),
    };
    let mut simplex: Vec<Vertex<D>> = Vec::with_capacity(D + 1);
    let x0 = clamp(x0);
    simplex.push(vertex(x0, eval(&x0)));
    for i in 0..D {
        let mut x = x0;
        let step = search.step * (hi[i] - lo[i]);
        x[i] = if x[i] + step <= hi[i] {
            x[i] + step
        } else {
            x[i] - step
        };
        let x = clamp(x);
        simplex.push(vertex(x, eval(&x)));
    }
    let mut evals = D + 1;
    while evals < max_evals {
        simplex.sort_by(|a, b| a.v.total_cmp(&b.v));
        let best = simplex[0].v;
        let worst = simplex[D].v;
        if (worst - best).abs() <= search.rel_tol * best.abs().max(1e-300) {
            break;
        }
        let mut centroid = [0.0; D];
        for p in &simplex[..D] {
            for (c, share) in centroid.iter_mut().zip(&p.share) {
                *c += share;
            }
        }
        let along = |t: f64| {
            let mut x = [0.0; D];
            for i in 0..D {
                x[i] = centroid[i] + t * (simplex[D].x[i] - centroid[i]);
            }
            clamp(x)
        };
        let xr = along(-1.0);
        let fr = eval(&xr);
        evals += 1;
        if fr < simplex[0].v {
            let xe = along(-2.0);
            let fe = eval(&xe);
            evals += 1;
            simplex[D] = if fe < fr {
                vertex(xe, fe)
            } else {
                vertex(xr, fr)
            };
        } else if fr < simplex[D - 1].v {
            simplex[D] = vertex(xr, fr);
        } else {
            let xc = if fr < simplex[D].v {
                along(-0.5)
            } else {
                along(0.5)
            };
            let fc = eval(&xc);
            evals += 1;
            if fc < simplex[D].v.min(fr) {
                simplex[D] = vertex(xc, fc);
            } else {
                // Shrink towards the best point.
                let x_best = simplex[0].x;
                for item in simplex.iter_mut().skip(1) {
                    let mut x = [0.0; D];
                    for i in 0..D {
                        x[i] = x_best[i] + 0.5 * (item.x[i] - x_best[i]);
                    }
                    let x = clamp(x);
                    *item = vertex(x, eval(&x));
                    evals += 1;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.v.total_cmp(&b.v));
    (simplex[0].x, -simplex[0].v)
}

/// A simplex vertex: the point, −f there, and x/D (its term of the centroid).
#[derive(Clone, Copy)]
struct Vertex<const D: usize> {
    x: [f64; D],
    v: f64,
    share: [f64; D],
}

/// Nelder–Mead from each of `starts` (`evals_each` evaluations), then `refine` more from the
/// best point: a cheap guard against a simplex stalling on a bound or in a local optimum.
pub fn multi_start_max<const D: usize>(
    mut f: impl FnMut(&[f64; D]) -> f64,
    starts: &[[f64; D]],
    lo: [f64; D],
    hi: [f64; D],
    evals_each: usize,
    refine: usize,
) -> ([f64; D], f64) {
    let mut best = (lo, f64::NEG_INFINITY);
    for x0 in starts {
        let r = nelder_mead_max(&mut f, *x0, lo, hi, evals_each);
        if r.1 > best.1 {
            best = r;
        }
    }
    let again = nelder_mead_max(&mut f, best.0, lo, hi, refine);
    if again.1 > best.1 { again } else { best }
}

/// Largest `x` in `[lo, hi]` with `pred(x)` true, by bisection, assuming `pred` is true at `lo`
/// and switches to false once. Returns `lo` if `pred(lo)` is false.
pub fn bisect_last_true(mut pred: impl FnMut(f64) -> bool, lo: f64, hi: f64, tol: f64) -> f64 {
    if !pred(lo) {
        return lo;
    }
    if pred(hi) {
        return hi;
    }
    let (mut a, mut b) = (lo, hi);
    while b - a > tol {
        let m = 0.5 * (a + b);
        if pred(m) { a = m } else { b = m }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_known_optima() {
        let (x, v) = golden_max(|x| -(x - 0.3) * (x - 0.3), 0.0, 1.0, 60);
        assert!((x - 0.3).abs() < 1e-6 && v.abs() < 1e-10);
        let mut evals = 0;
        let (x, _) = brent_max(
            |x| {
                evals += 1;
                x * (-x).exp() - 0.1 * x * x
            },
            0.0,
            5.0,
            1e-9,
        );
        // d/dx: e^-x (1 - x) = 0.2 x, at x ≈ 0.7183.
        assert!(
            ((-x).exp() * (1.0 - x) - 0.2 * x).abs() < 1e-8 && evals < 30,
            "{x} {evals}"
        );
        let (x, _) = nelder_mead_max(
            |x: &[f64; 2]| -((x[0] - 0.2).powi(2) + 10.0 * (x[1] - 0.7).powi(2)),
            [0.5, 0.5],
            [0.0, 0.0],
            [1.0, 1.0],
            500,
        );
        assert!((x[0] - 0.2).abs() < 1e-3 && (x[1] - 0.7).abs() < 1e-3);
        // Optimum on the boundary.
        let (x, _) = nelder_mead_max(|x: &[f64; 1]| x[0], [0.5], [0.0], [2.0], 200);
        assert!((x[0] - 2.0).abs() < 1e-6);
        let r = bisect_last_true(|x| x < 1.2345, 0.0, 10.0, 1e-9);
        assert!((r - 1.2345).abs() < 1e-8);
    }
}
