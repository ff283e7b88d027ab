"""stats.py against scipy and by hand; report.py compare / claims on real short runs and on hand-made ones."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

import report
import runs
import stats
import train
from helpers import ROOT, write_keyword_task, write_tiny_encoder

sys.path.insert(0, str(ROOT / "experiments"))
import runs_from_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean_diff(x, y, axis):
    return x.mean(axis=axis) - y.mean(axis=axis)


def scipy_p(a, b, statistic=_mean_diff, alternative="two-sided"):
    return scipy.stats.permutation_test((a, b), statistic, vectorized=True, permutation_type="independent",
                                        alternative=alternative, n_resamples=np.inf).pvalue


def random_groups(seed, equal):
    rng = np.random.default_rng(seed)
    n_a = int(rng.integers(2, 11))
    n_b = n_a if equal else int(rng.choice([n for n in range(2, 11) if n != n_a]))
    while math.comb(n_a + n_b, n_a) > 5_000 and min(n_a, n_b) > 2:  # quick for scipy's enumeration
        n_a, n_b = n_a - 1, n_b - 1  # keeps the groups' size difference (the larger exact sizes: see below)
    shift = rng.choice([-0.03, -0.01, 0.0, 0.01, 0.03])  # both tails: A below B as often as above
    return rng.normal(0.80 + shift, 0.02, n_a), rng.normal(0.80, 0.02, n_b)


# ----------------------------------------------------------------------------- permutation test


@pytest.mark.parametrize("seed", range(12))
def test_p_equals_scipy_two_sided_on_equal_groups(seed):
    a, b = random_groups(seed, equal=True)
    got = stats.permutation_test(a, b)
    assert got["method"] == "exact" and got["n_permutations"] == math.comb(len(a) + len(b), len(a))
    assert got["p_value"] == scipy_p(a, b)


@pytest.mark.parametrize("seed", range(16))
def test_p_equals_scipy_two_sided_on_unequal_groups(seed):
    # unequal sizes: the null distribution is not symmetric, so twice the smaller tail (scipy's two-sided)
    # differs from the share of |diff*| >= |diff|; we follow scipy
    a, b = random_groups(100 + seed, equal=False)
    assert len(a) != len(b)
    got = stats.permutation_test(a, b)
    assert got["method"] == "exact" and got["p_value"] == scipy_p(a, b)


def test_p_equals_scipy_at_the_largest_exact_sizes():
    rng = np.random.default_rng(400)
    a, b = rng.normal(0.81, 0.02, 9), rng.normal(0.80, 0.02, 9)  # C(18, 9) = 48,620 relabelings
    assert stats.permutation_test(a, b)["p_value"] == scipy_p(a, b)
    a = np.append(a, 0.83)  # 10 and 9: C(19, 9) = 92,378, still exact
    assert stats.permutation_test(a, b)["method"] == "exact"
    assert stats.permutation_test(a, b)["p_value"] == scipy_p(a, b)


@pytest.mark.parametrize("seed", range(8))
def test_ties_on_rounded_metrics_are_counted(seed):
    # Metrics are on a grid (k / n examples, or 4 digits in a CSV), so relabelings tie on paper. The oracle
    # works on integers (values x 10^4) with n_b * sum(A) - n_a * sum(B) = n_a n_b (mean A - mean B), which is
    # exact, so its ties are true ties; a positive multiple of the statistic leaves both tails unchanged.
    rng = np.random.default_rng(200 + seed)
    n_a, n_b = int(rng.integers(2, 8)), int(rng.integers(2, 8))
    low_a, low_b = (7800, 7790) if seed % 2 else (7790, 7800)  # A above B, then below: ties in either tail
    ints_a, ints_b = low_a + 10 * rng.integers(0, 4, n_a), low_b + 10 * rng.integers(0, 4, n_b)  # many ties
    exact = lambda x, y, axis: n_b * x.sum(axis=axis) - n_a * y.sum(axis=axis)
    assert stats.permutation_test(ints_a / 1e4, ints_b / 1e4)["p_value"] == scipy_p(ints_a, ints_b, exact)


def test_known_cases():
    same = [0.81, 0.79, 0.80, 0.83]
    r = stats.compare(same, list(same))
    assert r["p_value"] == 1.0 and r["verdict"] == "not resolved"
    assert r["ci_low"] < 0 < r["ci_high"] and r["difference"] == 0 and r["seeds_needed"] is None
    r = stats.compare([0.8, 0.8], [0.8, 0.8, 0.8])
    assert (r["p_value"], r["verdict"]) == (1.0, "not resolved")
    assert r["ci_low"] == pytest.approx(0, abs=1e-15) and r["ci_high"] == pytest.approx(0, abs=1e-15)
    a, b = [0.90, 0.91, 0.92, 0.93, 0.94], [0.80, 0.81, 0.82, 0.83, 0.84]
    r = stats.compare(a, b)
    assert r["p_value"] == 2 / 252 == stats.min_p_value(5, 5) and r["method"] == "exact"
    assert r["verdict"] == "A better" and stats.compare(b, a)["verdict"] == "B better"
    assert stats.compare(a, b, alpha=2 / 252)["verdict"] == "A better"  # p <= alpha rejects
    assert stats.compare(a, b, alpha=0.005)["verdict"] == "not resolved"
    assert stats.min_p_value(3, 3) == 0.1
    # 2 vs 3 fully separated: only the observed split of the 10 reaches diff = 10, so each tail's smallest
    # share is 1/10 and p = 0.2, as in scipy (|diff*| >= |diff| would say 0.1: the mirror split does not exist)
    a, b = [10.0, 10.0], [0.0, 0.0, 0.0]
    assert stats.permutation_test(a, b)["p_value"] == stats.min_p_value(2, 3) == scipy_p(np.array(a), np.array(b))
    assert stats.min_p_value(2, 3) == pytest.approx(0.2)


def test_monte_carlo_beyond_100000_relabelings():
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.81, 0.02, 9), rng.normal(0.80, 0.02, 10)
    assert stats.permutation_test(a, b)["method"] == "exact"  # C(19, 9) = 92,378
    a = np.append(a, 0.805)  # C(20, 10) = 184,756
    got = stats.permutation_test(a, b)
    assert got["method"] == "monte-carlo" and got["n_permutations"] == 100_000 and got["seed"] == 0
    assert got == stats.permutation_test(a, b)  # seeded
    count = got["p_value"] * 100_001 / 2 - 1  # p = 2 (1 + count) / (1 + resamples): the observed split in its tail
    assert abs(count - round(count)) < 1e-6 and round(count) > 0
    # 5 vs 5 fully separated, forced to Monte Carlo: still near 2/252, never 0 (the observed split counts once)
    mc = stats.permutation_test([5, 6, 7, 8, 9], [0, 1, 2, 3, 4], max_exact=10)["p_value"]
    assert 0 < mc and abs(mc - 2 / 252) < 5 * 2 * math.sqrt((1 / 252) / 100_000)


def test_monte_carlo_p_counts_the_observed_split_as_scipy_does():
    # Fully separated 10 vs 10 and 10 vs 9 with 999 random relabelings: (almost surely) none reaches the
    # observed difference, so scipy's randomized two-sided p is 2 (0 + 1) / (999 + 1) = 0.002, whatever its rng.
    a, b = np.linspace(0.90, 0.95, 10), np.linspace(0.80, 0.85, 10)
    for x, y in ((a, b), (b, a), (a, b[:9]), (b[:9], a)):
        want = scipy.stats.permutation_test((x, y), _mean_diff, vectorized=True, permutation_type="independent",
                                            n_resamples=999, rng=np.random.default_rng(1)).pvalue
        got = stats.permutation_test(x, y, max_exact=999, n_resamples=999)
        assert got["method"] == "monte-carlo" and got["p_value"] == want == pytest.approx(0.002)


@pytest.mark.parametrize("sizes", [(7, 7), (8, 5)])
def test_monte_carlo_agrees_with_scipys_exact_p(sizes):
    # forced to Monte Carlo (3,432 and 1,287 relabelings exist): within 5 standard errors of scipy's exact p
    rng = np.random.default_rng(500 + sizes[1])
    a, b = rng.normal(0.81, 0.02, sizes[0]), rng.normal(0.80, 0.02, sizes[1])
    exact = scipy_p(a, b)
    got = stats.permutation_test(a, b, max_exact=1000)
    assert got["method"] == "monte-carlo" and got["n_permutations"] == 100_000
    assert 0.01 < exact < 0.9 and abs(got["p_value"] - exact) < 5 * 2 * math.sqrt(exact / 2 / 100_000)


# ----------------------------------------------------------------------------- interval, d, seeds needed


@pytest.mark.parametrize("seed", range(6))
def test_compare_interval_is_welchs(seed):
    """compare's interval: Welch's t at 1 - alpha, scipy's (the percentile bootstrap it replaced was far
    too narrow at 2-3 seeds; tests/test_claims_level.py has the small-sample checks)."""
    rng = np.random.default_rng(300 + seed)
    n_a, n_b = int(rng.integers(2, 11)), int(rng.integers(2, 11))
    a, b = rng.normal(0.85, 0.02, n_a), rng.normal(0.80, rng.choice([0.005, 0.03]), n_b)
    r = stats.compare(a, b, alpha=0.1)
    welch = scipy.stats.ttest_ind(a, b, equal_var=False)
    want = welch.confidence_interval(0.9)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((want.low, want.high), rel=1e-9)
    assert r["confidence"] == pytest.approx(0.9) and r["ci_df"] == pytest.approx(welch.df, rel=1e-12)

def test_cohens_d_by_hand():
    # a: mean 2.5, sample var 5/3; b: mean 4, sample var 4; pooled var (3 * 5/3 + 2 * 4) / 5 = 2.6
    assert stats.pooled_std([1, 2, 3, 4], [2, 4, 6]) == pytest.approx(math.sqrt(2.6))
    assert stats.cohens_d([1, 2, 3, 4], [2, 4, 6]) == pytest.approx(-1.5 / math.sqrt(2.6))
    assert stats.cohens_d([1, 1], [0, 0]) == math.inf and math.isnan(stats.cohens_d([1, 1], [1, 1]))
    assert stats.cohens_d([0.8] * 3, [0.7] * 3) == math.inf  # 3 x 0.8 has a float mean 1 ulp off: no spread still


def _t_test_power(n, d, alpha=0.05):
    df, nc = 2 * n - 2, d * math.sqrt(n / 2)
    t = scipy.stats.t.ppf(1 - alpha / 2, df)
    return scipy.stats.nct.sf(t, df, nc) + scipy.stats.nct.cdf(-t, df, nc)


@pytest.mark.parametrize("d", [0.3, 0.5, 0.8, 1.0, 1.5, 2.0])
def test_seeds_needed_tracks_the_t_tests_power(d):
    n = stats.seeds_needed(d)
    exact = next(m for m in range(2, 1000) if _t_test_power(m, d) >= 0.8)  # the oracle: noncentral t
    assert n == exact if d <= 1 else abs(n - exact) <= 1  # Guenther's estimate: one short at large d
    assert stats.seeds_needed(-d) == n


def test_seeds_needed_never_below_what_the_exact_test_can_resolve():
    assert stats.seeds_needed(50.0) == 4  # 3 a side: p >= 0.1 whatever the data
    assert stats.seeds_needed(50.0, alpha=0.01) == 5  # 2/252 <= 0.01 < 2/70
    assert stats.seeds_needed(0.0) is None and stats.seeds_needed(math.nan) is None


# ----------------------------------------------------------------------------- a runs folder from real training runs


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Two "models" (one learning rate each) x 3 seeds x 1 epoch of the tiny encoder on a small keyword task."""
    root = tmp_path_factory.mktemp("compare")
    enc, task = write_tiny_encoder(root / "enc"), write_keyword_task(root / "data", sizes=(64, 20, 60))
    common = ["--dataset", "acl", "--model", str(enc), "--data-dir", str(task), "--out", str(root / "runs"),
              "--epochs", "1", "--batch-size", "32", "--max-length", "48", "--seeds", "1", "2", "3"]
    results = {name: train.main(common + ["--model-name", name, "--lr", lr])
               for name, lr in (("fast", "1e-2"), ("slow", "1e-5"))}
    return root / "runs", results


def cli(*argv):
    return subprocess.run([sys.executable, str(ROOT / "report.py"), *argv], capture_output=True, text=True, timeout=300)


def test_compare_real_runs_through_the_cli(runs_root, capsys):
    folder, results = runs_root
    out = cli("compare", str(folder), "fast", "slow", "--format", "json", "--alpha", "0.1")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert set(row) >= {"dataset", "metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b", "difference", "ci_low",
                        "ci_high", "p_value", "method", "cohens_d", "verdict"}
    fast = np.array([r["test"]["f1_macro"] for r in results["fast"]])
    slow = np.array([r["test"]["f1_macro"] for r in results["slow"]])
    assert (row["dataset"], row["metric"], row["a"], row["b"], row["n_a"], row["n_b"]) == \
        ("acl", "f1_macro", "fast", "slow", 3, 3)
    assert row["mean_a"] == pytest.approx(fast.mean(), abs=1e-15) and row["mean_b"] == pytest.approx(slow.mean())
    assert row["p_value"] == pytest.approx(scipy_p(fast, slow), abs=1e-12)
    assert row["method"] == "exact" and row["ci_low"] <= row["difference"] <= row["ci_high"]
    want = ("A better" if row["difference"] > 0 else "B better") if row["p_value"] <= 0.1 else "not resolved"
    assert row["verdict"] == want
    (dev,) = report.compare(folder, "fast", "slow", metric="accuracy", split="dev")
    assert dev["mean_b"] == pytest.approx(np.mean([r["dev"]["accuracy"] for r in results["slow"]]))
    report.main(["compare", str(folder), "fast", "slow"])
    text = capsys.readouterr().out
    assert f"mean A {100 * fast.mean():.2f}, mean B {100 * slow.mean():.2f}" in text
    assert "the smallest p 3 and 3 seeds can give: 0.1" in text
    assert "verdict at alpha 0.05: not resolved" in text  # 3 seeds a side cannot reach 0.05
    assert ("(an estimate" in text) == (fast.mean() != slow.mean())


def test_bad_input_is_one_line(runs_root, tmp_path):
    folder, _ = runs_root
    cases = [
        (["compare", str(folder), "fast", "bert"], "no model 'bert' in .* \\(there: fast, slow\\)"),
        (["compare", str(folder), "fast", "slow", "--dataset", "agnews"], "no dataset 'agnews' in .* \\(there: acl\\)"),
        (["compare", str(folder), "fast", "slow", "--metric", "f1"], "unknown metric 'f1': compare and claims test accuracy, "
         + "f1_macro, f1_micro"),
        (["compare", str(folder), "fast", "slow", "--split", "train", "--dataset", "acl"],
         "fast has 0 finished seeds on acl"),
        (["compare", str(folder), "fast", "slow", "--split", "train"], "no dataset where both have 2\\+ finished"),
        (["compare", str(folder), "fast", "fast"], "A and B are both 'fast'"),
        (["claims", str(folder), str(tmp_path / "none.json")], "no claims file at"),
    ]
    for argv, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            report.main(argv)
        assert "\n" not in str(e.value)
    out = cli("compare", str(folder), "fast", "bert")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"report.py: error: no model 'bert' in {folder} (there: fast, slow)"]


def _hand_made(root, model_name, dataset, values, metric="f1_macro"):
    for seed, value in enumerate(values, 1):
        path = root / dataset / model_name / f"seed{seed}"
        path.mkdir(parents=True)
        (path / "result.json").write_text(json.dumps({"test": {metric: value, "accuracy": 0.5}}))


def test_json_has_no_nan(tmp_path, capsys):
    _hand_made(tmp_path, "flat", "acl", [0.8, 0.8, 0.8])
    _hand_made(tmp_path, "flat2", "acl", [0.7, 0.7, 0.7])
    report.main(["compare", str(tmp_path), "flat", "flat2", "--format", "json"])
    (row,) = json.loads(capsys.readouterr().out)  # strict JSON: an infinite d is null
    assert row["cohens_d"] is None and row["pooled_std"] == 0 and row["difference"] == pytest.approx(0.1)
    assert row["seeds_needed"] == 4 and row["p_value"] == pytest.approx(0.1)


def test_too_few_seeds_and_non_finite_values(tmp_path):
    _hand_made(tmp_path, "bert", "acl", [0.80, 0.82, 0.81])
    _hand_made(tmp_path, "roberta", "acl", [0.84])
    _hand_made(tmp_path, "bert", "restaurant", [0.70, 0.72])
    _hand_made(tmp_path, "roberta", "restaurant", [0.74, 0.75])
    with pytest.raises(ValueError, match="roberta has 1 finished seed on acl .*at least 2 a side"):
        report.compare(tmp_path, "bert", "roberta", ["acl"])
    rows = report.compare(tmp_path, "bert", "roberta")  # by default acl is skipped, with a warning
    assert [r["dataset"] for r in rows] == ["restaurant"]
    (tmp_path / "restaurant" / "roberta" / "seed2" / "result.json").write_text('{"test": {"f1_macro": NaN}}')
    with pytest.raises(ValueError, match=r"restaurant/roberta/seed2/result.json: test f1_macro is nan"):
        report.compare(tmp_path, "bert", "roberta")
    for broken in ('{"test": {"accuracy": 0.5}}', '{"test": 0.5}', '{"test": {"f1_macro": "0.7"}}'):
        (tmp_path / "restaurant" / "roberta" / "seed2" / "result.json").write_text(broken)
        with pytest.raises(ValueError, match=r"seed2/result.json: test f1_macro is .*not a finite number"):
            report.compare(tmp_path, "bert", "roberta")


def test_claims_statuses(tmp_path):
    _hand_made(tmp_path, "high", "acl", [0.80, 0.81, 0.82, 0.83])
    _hand_made(tmp_path, "low", "acl", [0.70, 0.71, 0.72, 0.73])
    _hand_made(tmp_path, "tight", "acl", [0.8000, 0.8001, 0.8002, 0.8003])
    _hand_made(tmp_path, "tight2", "acl", [0.8010, 0.8011, 0.8012, 0.8013])  # 0.1 points above tight, no overlap
    _hand_made(tmp_path, "noisy", "acl", [0.76, 0.86, 0.75, 0.87])
    _hand_made(tmp_path, "one", "acl", [0.9])
    claims = [{"a": "high", "b": "low", "dataset": "acl", "claim": "a > b"},
              {"a": "high", "b": "low", "dataset": "acl", "claim": "a < b"},
              {"a": "high", "b": "low", "dataset": "acl", "claim": "a = b"},
              {"a": "tight", "b": "tight2", "dataset": "acl", "claim": "a = b"},  # resolved, but inside the margin
              {"a": "high", "b": "noisy", "dataset": "acl", "claim": "a = b"},
              {"a": "high", "b": "noisy", "dataset": "acl", "claim": "a > b"},
              {"a": "high", "b": "one", "dataset": "acl", "claim": "a > b"}]
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(claims))
    rows = report.check_claims(tmp_path, path)
    assert [r["status"] for r in rows] == ["supported", "contradicted", "contradicted", "supported",
                                           "not resolved", "not resolved", "not resolved"]
    assert rows[3]["p_value"] == pytest.approx(2 / 70) and rows[0]["p_value"] == pytest.approx(2 / 70)
    assert "one has 1 finished seed" in rows[6]["reason"]
    assert report.check_claims(tmp_path, path, margin=0.05)[3]["status"] == "contradicted"
    assert report.check_claims(tmp_path, path, alpha=0.01)[0]["status"] == "not resolved"  # 2/70 > 0.01
    for bad, message in [([{"a": "high", "b": "low", "dataset": "acl", "claim": "a >= b"}], "is not one of"),
                         ([{"a": "high", "b": "low", "dataset": "acl", "claim": "a > b", "metirc": "x"}],
                          "unknown key.* metirc"),
                         ([{"a": "high", "b": "low", "claim": "a > b"}], "claim 1 lacks dataset"),
                         ([{"a": "high", "b": "low", "dataset": "acl", "claim": "a > b", "metric": "loss"}],
                          "unknown metric 'loss'"),
                         ({"a": "high"}, "expected a non-empty JSON list")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            report.check_claims(tmp_path, path)
    path.write_text('[{"a": "high",')
    with pytest.raises(ValueError, match="claims.json: not valid JSON"):
        report.check_claims(tmp_path, path)


def test_report_claims_file_names_the_reports_run_folders():
    claims = report.read_claims(ROOT / "experiments" / "report_claims.json", "f1_macro")
    # experiments/report.sh passes these --model aliases (and --adapter for roberta-base): its run folders
    names = {runs.model_slug(train.TrainConfig(dataset="acl", model=m)) for m in
             re.search(r'models="([^"]+)"', (ROOT / "experiments" / "report.sh").read_text())[1].split()}
    names.add(runs.model_slug(train.TrainConfig(dataset="acl", model="roberta-base", adapter=True)))
    assert names == {"roberta-base", "bert-base-uncased", "scibert", "roberta-base-adapter"}
    assert {c["a"] for c in claims} | {c["b"] for c in claims} == names
    pairs = [(c["a"], c["b"], c["dataset"]) for c in claims]
    assert len(pairs) == len(set(pairs)) == 9


# ----------------------------------------------------------------------------- the worked example of docs/reports.md


def test_docs_worked_example_is_what_the_cli_prints(tmp_path, capsys):
    folder = tmp_path / "minilm-grid-csv"
    runs_from_csv.runs_from_csv(ROOT / "docs" / "minilm-grid" / "seeds.csv", folder)
    readme = (ROOT / "docs" / "reports.md").read_text()  # the README's reports section moved there
    for argv in (["compare", str(folder), "minilm-adapter", "minilm"],
                 ["claims", str(folder), str(ROOT / "docs" / "minilm-grid" / "claims.json")]):
        report.main(argv)
        captured = capsys.readouterr()
        printed = (captured.err + captured.out).replace(str(folder), "runs/minilm-grid-csv")
        assert printed.strip() in readme, printed
    with pytest.raises(ValueError, match="is not empty"):
        runs_from_csv.runs_from_csv(ROOT / "docs" / "minilm-grid" / "seeds.csv", folder)
    values = json.loads((folder / "acl" / "minilm-adapter" / "seed3" / "result.json").read_text())["test"]
    assert values["f1_macro"] == 0.2814  # the CSV's 4 digits, as they are
    assert re.search(r"\| minilm-adapter \| 78\.24 ± 0\.34 \(3\)", report.format_table(
        report.summarize(folder), ("accuracy", "f1_macro")))
