"""Is A better than B? Statistics over a handful of seeds, numpy only.

    import stats
    r = stats.compare([0.81, 0.80, 0.83], [0.78, 0.79, 0.77], alpha=0.05)
    r["p_value"], r["ci_low"], r["ci_high"], r["verdict"]   # 0.1, ..., "not resolved"

Each side is one value per seed (a metric of the last epoch, say). Nothing assumes the values are
normal except the seeds-needed estimate:

- `permutation_test`: two-sided permutation test on the difference of means (Fisher 1935; Good,
  "Permutation, Parametric and Bootstrap Tests of Hypotheses", 2005, ch. 3), two-sided as twice
  the smaller one-sided p, scipy.stats.permutation_test's definition. Exact over all
  C(n_a + n_b, n_a) relabelings of the pooled seeds when there are at most 100,000, else a seeded
  Monte Carlo estimate with the observed labeling counted once in each tail (Phipson & Smyth 2010).
- `welch_ci`: Welch's t interval of the difference of means (Welch 1947; Satterthwaite's degrees of
  freedom). It assumes roughly normal seeds, but holds its coverage at 2-5 seeds a side, where a
  percentile bootstrap (resampling 2 or 3 values) is far too narrow.
- `equivalence`: "A = B within a margin" by two one-sided Welch t tests (TOST; Schuirmann 1987):
  shown when the 1 - 2 alpha interval lies inside the margin, so a true difference at the margin is
  called equivalent with probability at most about alpha, however few the seeds.
- `cohens_d`: the difference over the pooled sample standard deviation (Cohen 1988, eq. 2.3.2).
- `seeds_needed`: seeds per side for a two-sided test at alpha to have the given power against the
  observed d: the normal approximation with Guenther's (1981) correction for the t-test, and never
  fewer than the exact permutation test needs to reach alpha at all. An estimate.
"""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np

from common import UsageError

MAX_EXACT = 100_000  # relabelings enumerated at most; beyond, Monte Carlo
N_PERMUTATIONS = 100_000  # Monte Carlo relabelings
SEED = 0
TIE_RTOL = 1e-9
VERDICTS = ("A better", "B better", "not resolved")


def _groups(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    for name, x in (("A", a), ("B", b)):
        if len(x) < 2:
            raise UsageError(f"group {name} has {len(x)} value(s); a comparison needs at least 2 per side")
        if not np.isfinite(x).all():
            raise UsageError(f"group {name} holds a non-finite value: {x.tolist()}")
    return a, b


def permutation_test(a, b, *, max_exact: int = MAX_EXACT, n_resamples: int = N_PERMUTATIONS,
                     seed: int = SEED) -> dict:
    """Two-sided permutation p-value of mean(a) - mean(b) under "the labels A/B do not matter".

    A relabeling splits the pooled n_a + n_b values into n_a for A and the rest for B (the observed
    split is one of them); diff* is its difference of means. With the one-sided shares
    p_less = #{diff* <= diff} / #relabelings and p_greater = #{diff* >= diff} / #relabelings,
    p = min(1, 2 * min(p_less, p_greater)). This is the two-sided p of
    scipy.stats.permutation_test(..., permutation_type="independent", alternative="two-sided"), so
    a user can check ours against it; with unequal group sizes the null distribution is not
    symmetric and it differs from counting |diff*| >= |diff| (2 and 3 seeds, fully separated:
    0.2 here and in scipy, 0.1 by |diff|). Two differences tie when they are within 1e-9 x the
    largest |value| of each other, in both tails: the same values summed in another order differ
    by ~1e-16 of that, so ties that are exact on paper count as ties. On rounded values (metrics
    are k / n, or 4 digits in a CSV) scipy's tolerance (100 eps x |observed|) can miss such ties;
    on values without exact ties the two agree.
    Exact (all C(n_a + n_b, n_a) splits) when that is <= `max_exact`; else `n_resamples` random
    splits from numpy's default_rng(`seed`) and, as in scipy, each one-sided share is
    (1 + count) / (1 + n_resamples) before the doubling, so p is never 0.

    Returns {"p_value", "method": "exact" | "monte-carlo", "n_permutations", "seed" (None if exact)}.
    """
    a, b = _groups(a, b)
    pooled = np.concatenate([a, b])
    n, n_a = len(pooled), len(a)
    observed = a.mean() - b.mean()
    total = math.comb(n, n_a)
    if total <= max_exact:
        to_a = np.array(list(itertools.combinations(range(n), n_a)))  # (relabelings, n_a) indices of A's seeds
        method, count_observed, used_seed = "exact", 0, None
    else:
        to_a = np.random.default_rng(seed).random((n_resamples, n)).argsort(axis=1)[:, :n_a]  # random n_a-subsets
        method, count_observed, used_seed = "monte-carlo", 1, seed
    sum_a = pooled[to_a].sum(axis=1)
    diffs = sum_a / n_a - (pooled.sum() - sum_a) / (n - n_a)  # (relabelings,)
    tol = TIE_RTOL * np.abs(pooled).max()
    at_most = np.count_nonzero(diffs <= observed + tol) + count_observed
    at_least = np.count_nonzero(diffs >= observed - tol) + count_observed
    p = 2 * min(at_most, at_least) / (len(diffs) + count_observed)
    return {"p_value": float(min(p, 1.0)), "method": method, "n_permutations": len(diffs), "seed": used_seed}


def min_p_value(n_a: int, n_b: int) -> float:
    """The smallest p the exact test can give: 2 / C(n_a + n_b, n_a), twice the one-sided share of
    the observed split alone (groups fully separated). 5 and 5 seeds: 2/252 = 0.0079; 3 and 3:
    0.1; 2 and 3: 0.2."""
    return 2 / math.comb(n_a + n_b, n_a)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz;
    Numerical Recipes, 3rd ed., 6.4), on the side of x where it converges fast."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # the even step, then the odd one
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, 0 < p < 1: Newton's method on the cdf, kept inside a bracket that a
    bisection step shrinks whenever Newton would leave it (the cdf is monotone, so this always converges)."""
    if not 0 < p < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:  # df 1 at p 0.9995: 637
        low, high = high, 2 * high
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    t = (low + high) / 2
    for _ in range(100):
        error = t_cdf(t, df) - p
        low, high = (t, high) if error < 0 else (low, t)
        density = math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        step = t - error / density
        t_next = step if low < step < high else (low + high) / 2
        if abs(t_next - t) <= 1e-14 * max(1.0, abs(t)):
            return t_next
        t = t_next
    return t


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(difference of means, its standard error, Welch-Satterthwaite degrees of freedom). With no spread
    on either side the error is 0 and the degrees of freedom n_a + n_b - 2 (they no longer matter)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if np.ptp(a) == 0:
        va = 0.0  # exactly (see pooled_std)
    if np.ptp(b) == 0:
        vb = 0.0
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else len(a) + len(b) - 2
    return float(a.mean() - b.mean()), se, float(df)


def welch_ci(a, b, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, df): Welch's t interval of mean(a) - mean(b), difference +- t_{(1+confidence)/2, df} x
    sqrt(s_a^2/n_a + s_b^2/n_b); df by Welch-Satterthwaite. Same units as the inputs. The interval of
    scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)."""
    a, b = _groups(a, b)
    diff, se, df = _welch(a, b)
    half = t_quantile((1 + confidence) / 2, df) * se
    return diff - half, diff + half, df


def equivalence(a, b, margin: float, *, alpha: float = 0.05) -> dict:
    """Is |mean(a) - mean(b)| <= margin shown at level alpha? Two one-sided Welch t tests (TOST): H0
    "difference <= -margin" and H0 "difference >= +margin" are both rejected at alpha, which is the
    1 - 2 alpha Welch interval lying inside [-margin, +margin]. "shown" then; "shown outside" when that
    interval lies wholly beyond one end of the margin (the difference is resolved as larger); else
    "not resolved". Margin in the inputs' units.

    Returns {"status", "p_value" (TOST: the larger one-sided p), "low", "high", "confidence", "df"}.
    """
    a, b = _groups(a, b)
    if not margin >= 0:
        raise UsageError(f"the equivalence margin cannot be negative, got {margin}")
    diff, se, df = _welch(a, b)
    if se == 0:  # no spread: the statistics are +-inf, and the interval is the point itself
        p = 0.0 if abs(diff) < margin else 1.0
    else:
        p = max(1 - t_cdf((diff + margin) / se, df), t_cdf((diff - margin) / se, df))
    low, high = (diff, diff) if se == 0 else welch_ci(a, b, confidence=1 - 2 * alpha)[:2]
    status = ("shown" if p <= alpha else
              "shown outside" if low > margin or high < -margin else "not resolved")
    return {"status": status, "p_value": float(p), "low": float(low), "high": float(high),
            "confidence": 1 - 2 * alpha, "df": df}


def pooled_std(a, b) -> float:
    """sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2)), s = sample std (ddof 1)."""
    a, b = _groups(a, b)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0  # exactly: the float mean of equal values can be off by an ulp and leave a 1e-16 "spread"
    return float(np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)))


def cohens_d(a, b) -> float:
    """(mean(a) - mean(b)) / pooled_std(a, b); +-inf when the seeds do not spread but the means
    differ, nan when neither."""
    a, b = _groups(a, b)
    s, diff = pooled_std(a, b), a.mean() - b.mean()
    if s == 0:
        return math.nan if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / s)


def seeds_needed(d: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Estimated seeds per side (equal groups) for a two-sided test at `alpha` to detect effect size
    `d` with probability `power`: n = 2 (z_{1-alpha/2} + z_power)^2 / d^2 + z_{1-alpha/2}^2 / 4,
    rounded up (Guenther 1981: the normal approximation plus the term that makes it track the
    two-sample t-test), and at least the smallest n with min_p_value(n, n) <= alpha, since the exact
    permutation test cannot resolve anything below that. None when d is 0 or nan (no difference)."""
    if math.isnan(d) or d == 0:
        return None
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    n = 2 if math.isinf(d) else math.ceil(2 * (z_alpha + z_power) ** 2 / d**2 + z_alpha**2 / 4)
    return max(n, fewest_seeds(alpha))


def fewest_seeds(alpha: float = 0.05) -> int:
    """The fewest seeds per side (equal groups) with which the exact test can give p <= alpha: 4 at 0.05."""
    n = 2
    while min_p_value(n, n) > alpha:
        n += 1
    return n


def verdict(p_value: float, difference: float, alpha: float = 0.05) -> str:
    """"A better" / "B better" when p <= alpha (a level-alpha test rejects there), by the sign of
    the difference; else "not resolved"."""
    if p_value <= alpha and difference != 0:
        return "A better" if difference > 0 else "B better"
    return "not resolved"


def compare(a, b, *, alpha: float = 0.05, power: float = 0.8, seed: int = SEED) -> dict:
    """Everything above for one pair of groups, in the inputs' units. The interval is Welch's at
    confidence 1 - alpha, the level the verdict (the permutation test's) uses.

    Keys: n_a, n_b, mean_a, mean_b, difference (A - B), ci_low, ci_high, confidence, ci_df, p_value, method,
    n_permutations, seed, min_p_value, pooled_std, cohens_d, verdict, seeds_needed.
    """
    a, b = _groups(a, b)
    test = permutation_test(a, b, seed=seed)
    low, high, df = welch_ci(a, b, confidence=1 - alpha)
    d = cohens_d(a, b)
    difference = float(a.mean() - b.mean())
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "difference": difference, "ci_low": low, "ci_high": high, "confidence": 1 - alpha, "ci_df": df,
            "p_value": test["p_value"], "method": test["method"], "n_permutations": test["n_permutations"],
            "seed": seed, "min_p_value": min_p_value(len(a), len(b)),
            "pooled_std": pooled_std(a, b), "cohens_d": d, "verdict": verdict(test["p_value"], difference, alpha),
            "seeds_needed": seeds_needed(d, alpha, power)}
