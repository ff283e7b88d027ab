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
- `bootstrap_ci`: percentile bootstrap interval of the difference of means, resampling seeds with
  replacement within each group (Efron & Tibshirani 1993, ch. 13).
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
N_BOOTSTRAP = 10_000
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


def bootstrap_ci(a, b, *, confidence: float = 0.95, n_resamples: int = N_BOOTSTRAP,
                 seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b): `n_resamples` times, draw n_a seeds from
    a and n_b from b with replacement (each group on its own), take the difference of means; the
    interval is the (1 - confidence)/2 and (1 + confidence)/2 quantiles (numpy's linear
    interpolation) of those differences. numpy default_rng(`seed`). Same units as the inputs."""
    a, b = _groups(a, b)
    rng = np.random.default_rng(seed)
    means_a = a[rng.integers(len(a), size=(n_resamples, len(a)))].mean(axis=1)
    means_b = b[rng.integers(len(b), size=(n_resamples, len(b)))].mean(axis=1)
    low, high = np.quantile(means_a - means_b, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


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
    """Everything above for one pair of groups, in the inputs' units. The interval's confidence is
    1 - alpha, the level the verdict uses.

    Keys: n_a, n_b, mean_a, mean_b, difference (A - B), ci_low, ci_high, confidence, p_value, method,
    n_permutations, bootstrap_resamples, seed, min_p_value, pooled_std, cohens_d, verdict, seeds_needed.
    """
    a, b = _groups(a, b)
    test = permutation_test(a, b, seed=seed)
    low, high = bootstrap_ci(a, b, confidence=1 - alpha, seed=seed)
    d = cohens_d(a, b)
    difference = float(a.mean() - b.mean())
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "difference": difference, "ci_low": low, "ci_high": high, "confidence": 1 - alpha,
            "p_value": test["p_value"], "method": test["method"], "n_permutations": test["n_permutations"],
            "bootstrap_resamples": N_BOOTSTRAP, "seed": seed, "min_p_value": min_p_value(len(a), len(b)),
            "pooled_std": pooled_std(a, b), "cohens_d": d, "verdict": verdict(test["p_value"], difference, alpha),
            "seeds_needed": seeds_needed(d, alpha, power)}
