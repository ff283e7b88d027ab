"""Reports on a runs folder: summarize, plot, compare, claims.

    python report.py summarize runs/        # markdown table: mean ± std over seeds
    python report.py plot runs/ --out figures/
    python report.py compare runs/ roberta-base bert-base-uncased   # is A better than B? (stats.py)
    python report.py claims runs/ experiments/report_claims.json

It reads what train.py wrote (result.json and metrics.jsonl in runs/<dataset>/<model>/seed<k>/) and nothing
else; the statistics are in stats.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import stats
from common import UsageError, run_cli

METRICS = ("accuracy", "f1_macro", "f1_micro", "loss")


DATASET_ORDER = ("restaurant", "acl", "agnews")


@dataclass
class Seed:
    dataset: str
    model: str
    seed: int
    path: Path
    result: dict | None  # result.json, None while unfinished
    records: list[dict]  # metrics.jsonl lines that parsed


def read_jsonl(path: Path) -> list[dict]:
    """Every line that parses; a broken line is reported with file and line, then skipped."""
    records = []
    if not path.exists():
        return records
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            print(f"warning: {path}:{i}: not valid JSON ({e.msg}); line skipped", file=sys.stderr)
    return records


def read_runs(root: str | Path) -> list[Seed]:
    """runs/<dataset>/<model>/seed<k>/ folders, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no runs folder at {root}")
    seeds = []
    for path in sorted(root.glob("*/*/seed*")):
        if not path.is_dir() or not path.name[4:].isdigit():
            continue
        result = None
        if (path / "result.json").exists():
            try:
                result = json.loads((path / "result.json").read_text())
            except json.JSONDecodeError as e:
                print(f"warning: {path / 'result.json'}: not valid JSON ({e.msg}); seed counted as unfinished",
                      file=sys.stderr)
        seeds.append(Seed(path.parent.parent.name, path.parent.name, int(path.name[4:]), path, result,
                          read_jsonl(path / "metrics.jsonl")))
    if not seeds:
        raise FileNotFoundError(f"{root} holds no run folders (expected {root}/<dataset>/<model>/seed<k>/)")
    return seeds


def rule_of(result: dict) -> str:
    """The epoch rule of a result.json (train.py --select-on): "last", or "best dev <metric>". One written
    before --select-on existed has no "selection" and reports the last epoch, the only rule there was."""
    selection = result.get("selection") or {"rule": "last"}
    return "last" if selection["rule"] == "last" else f"best {selection['rule']} {selection['metric']}"


def group_rule(group: list[Seed]) -> str:
    """The one epoch rule of a group of finished seeds; seeds that mix rules cannot be averaged (UsageError)."""
    rules = {rule_of(s.result) for s in group}
    if len(rules) > 1:
        which = "; ".join(f"seed {s.seed}: {rule_of(s.result)}" for s in group)
        raise UsageError(f"{group[0].path.parent} mixes epoch rules ({which}): rerun those seeds with one "
                         "--select-on, or move the others to another runs folder")
    return rules.pop() if rules else "last"


def _ordered(names) -> list[str]:
    return sorted(set(names), key=lambda n: (DATASET_ORDER.index(n) if n in DATASET_ORDER else len(DATASET_ORDER), n))


def summarize(root: str | Path, split: str = "test", metrics=("accuracy", "f1_macro")) -> list[dict]:
    """One row per (model, dataset): mean and sample std over FINISHED seeds, and which are not."""
    seeds = read_runs(root)
    finished = seed_groups(seeds, split)  # the grouping compare and claims use
    rows = []
    for model_name in sorted({s.model for s in seeds}, key=lambda m: (m.removesuffix("-adapter"), m)):
        for dataset in _ordered(s.dataset for s in seeds):
            if (dataset, model_name) not in finished:
                continue
            group = [s for s in seeds if s.model == model_name and s.dataset == dataset]
            done = finished[(dataset, model_name)]
            row = {"model": model_name, "dataset": dataset, "split": split, "rule": group_rule(done), "n": len(done),
                   "seeds": [s.seed for s in done], "unfinished": [s.seed for s in group if s not in done]}
            for m in metrics:
                values = np.array([s.result[split][m] for s in done], dtype=np.float64)
                row[m] = {"mean": float(values.mean()) if len(values) else None,
                          "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                          "values": values.tolist()}
            rows.append(row)
    return rows


def summarize_per_class(root: str | Path, split: str = "test") -> list[dict]:
    """One row per (model, dataset) with finished seeds: per class (result.json's labels, in class-id order)
    the mean and sample std over seeds of precision, recall and F1, the support, and the confusion matrix
    summed over seeds (rows: true, columns: predicted). A result.json without per-class metrics (written
    before they existed) is an error that names it."""
    groups = seed_groups(read_runs(root), split)
    rows = []
    for model_name in sorted({m for _, m in groups}, key=lambda m: (m.removesuffix("-adapter"), m)):  # as summarize
        for dataset in _ordered(d for d, m in groups if m == model_name and groups[(d, m)]):
            rows.append(_per_class_row(groups[(dataset, model_name)], model_name, dataset, split))
    return rows


def _per_class_row(done: list[Seed], model_name: str, dataset: str, split: str) -> dict:
    """summarize_per_class's row of one (model, dataset): its finished seeds `done`."""
    for s in done:
        if "per_class" not in s.result[split] or "labels" not in s.result:
            raise UsageError(f"{s.path / 'result.json'} has no per-class metrics (written before train.py "
                             "recorded them): score its saved model with eval.py evaluate, or rerun the seed")
    labels = done[0].result["labels"]
    if other := next((s for s in done if s.result["labels"] != labels), None):
        raise UsageError(f"{other.path / 'result.json'} labels its classes {other.result['labels']}, "
                         f"{done[0].path / 'result.json'} {labels}: these seeds are not one task")
    row = {"model": model_name, "dataset": dataset, "split": split, "rule": group_rule(done), "n": len(done),
           "seeds": [s.seed for s in done], "labels": labels,
           "support": done[0].result[split]["per_class"]["support"],
           "confusion_matrix": np.sum([s.result[split]["confusion_matrix"] for s in done], axis=0).tolist()}
    for m in ("precision", "recall", "f1"):
        values = np.array([s.result[split]["per_class"][m] for s in done], dtype=np.float64)  # (seeds, classes)
        row[m] = {"mean": values.mean(0).tolist(),
                  "std": values.std(0, ddof=1).tolist() if len(done) > 1 else None}
    return row


def format_per_class(rows: list[dict], fmt: str = "markdown") -> str:
    """summarize_per_class's rows: a table per (model, dataset) and its summed confusion matrix (markdown),
    one line per class (csv), or the rows themselves (json)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)

    def cell(row, m, i):
        text = f"{100 * row[m]['mean'][i]:.2f}"
        return text if row[m]["std"] is None else f"{text} ± {100 * row[m]['std'][i]:.2f}"

    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["model", "dataset", "split", "epoch rule", "seeds", "class", "precision", "recall", "F1",
                         "support"])
        for r in rows:
            for i, name in enumerate(r["labels"]):
                writer.writerow([r["model"], r["dataset"], r["split"], r["rule"], r["n"], name,
                                 *(cell(r, m, i) for m in ("precision", "recall", "f1")), r["support"][i]])
        return out.getvalue()
    blocks = []
    for r in rows:
        seeds = f"{r['n']} seed{'' if r['n'] == 1 else 's'}"
        lines = [f"{r['model']} on {r['dataset']} {r['split']} (epoch rule {r['rule']}; {seeds}: mean ± sample std)",
                 "",
                 "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {cell(r, 'precision', i)} | {cell(r, 'recall', i)} | {cell(r, 'f1', i)} | "
                  f"{r['support'][i]} |" for i, name in enumerate(r["labels"])]
        lines += ["", f"confusion matrix, summed over {seeds} (rows: true class, columns: predicted class)", "",
                  "| true \\ predicted | " + " | ".join(r["labels"]) + " |", "|---" * (len(r["labels"]) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in zip(r["labels"],
                                                                                     r["confusion_matrix"])]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(row: dict, metric: str) -> str:
    stat = row[metric]
    if stat["mean"] is None:
        text = "-"
    else:
        scale, digits = (1, 4) if metric == "loss" else (100, 2)  # metrics as percentages, loss as is
        text = f"{scale * stat['mean']:.{digits}f}"
        if stat["std"] is not None:
            text += f" ± {scale * stat['std']:.{digits}f}"
        text += f" ({row['n']})"
    if row["unfinished"]:
        text += f" +{len(row['unfinished'])} unfinished"
    return text


def format_table(rows: list[dict], metrics, fmt: str = "markdown") -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    names = {"accuracy": "acc", "f1_macro": "macro-F1", "f1_micro": "micro-F1", "loss": "loss"}
    datasets = _ordered(r["dataset"] for r in rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    header = ["model"] + [f"{d} {names[m]}" for d in datasets for m in metrics] + ["epoch rule"]
    lines = []
    for model_name in models:
        by_dataset = {r["dataset"]: r for r in rows if r["model"] == model_name}
        rules = dict.fromkeys(r["rule"] for r in by_dataset.values())  # the datasets' rules, in order, once each
        rule = next(iter(rules)) if len(rules) == 1 else ", ".join(f"{r['rule']} ({d})" for d, r in by_dataset.items())
        lines.append([model_name] + [_cell(by_dataset[d], m) if d in by_dataset else "" for d in datasets
                                     for m in metrics] + [rule])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(lines)
        return out.getvalue()
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(line) + " |" for line in lines])


SCORES = ("accuracy", "f1_macro", "f1_micro")  # higher is better: what compare and claims test


CLAIMS = ("a > b", "a < b", "a = b")


def _check_metric(metric: str) -> None:
    if metric not in SCORES:
        raise UsageError(f"unknown metric {metric!r}: compare and claims test {', '.join(SCORES)} (higher is better)")


def seed_groups(seeds: list[Seed], split: str) -> dict[tuple[str, str], list[Seed]]:
    """{(dataset, model): finished seeds}, finished = result.json holds `split`; every folder's group
    is listed, empty when none of its seeds finished."""
    groups: dict[tuple[str, str], list[Seed]] = {}
    for s in seeds:
        groups.setdefault((s.dataset, s.model), [])
        if s.result and split in s.result:
            groups[(s.dataset, s.model)].append(s)
    return groups


def group_values(group: list[Seed], split: str, metric: str) -> np.ndarray:
    """One value per finished seed; a missing or non-finite value is an error naming its file."""
    values = []
    for s in group:
        section = s.result.get(split) if isinstance(s.result, dict) else None
        value = section.get(metric) if isinstance(section, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise UsageError(f"{s.path / 'result.json'}: {split} {metric} is {value!r}, not a finite number; "
                             f"rerun that seed (delete its folder) or leave it out of the runs folder")
        values.append(float(value))
    return np.array(values)


def _check_names(groups: dict, root, a: str, b: str, datasets) -> None:
    models = sorted({m for _, m in groups})
    for name in (a, b):
        if name not in models:
            raise UsageError(f"no model {name!r} in {root} (there: {', '.join(models)})")
    there = _ordered(d for d, _ in groups)
    for dataset in datasets or ():
        if dataset not in there:
            raise UsageError(f"no dataset {dataset!r} in {root} (there: {', '.join(there)})")


def _too_few(groups: dict, dataset: str, names, split: str) -> str | None:
    """Why (dataset, a) vs (dataset, b) cannot be compared, or None."""
    for name in names:
        n = len(groups.get((dataset, name), []))
        if n < 2:
            return (f"{name} has {n} finished seed{'' if n == 1 else 's'} on {dataset} (result.json with {split}); "
                    "a comparison needs at least 2 a side")
    return None


def compare_one(groups: dict, dataset: str, a: str, b: str, metric: str, split: str, alpha: float) -> dict:
    rule_a, rule_b = group_rule(groups[(dataset, a)]), group_rule(groups[(dataset, b)])
    if rule_a != rule_b:  # a dev-picked epoch against the last one would favour the picked side
        raise UsageError(f"{dataset}: {a} reports the epoch rule {rule_a!r} and {b} {rule_b!r}; compare runs "
                         "of one rule (train.py --select-on)")
    values_a = group_values(groups[(dataset, a)], split, metric)
    values_b = group_values(groups[(dataset, b)], split, metric)
    return {"dataset": dataset, "metric": metric, "split": split, "a": a, "b": b, "rule": rule_a,
            **stats.compare(values_a, values_b, alpha=alpha),
            "seeds_a": [s.seed for s in groups[(dataset, a)]], "seeds_b": [s.seed for s in groups[(dataset, b)]]}


def compare(root: str | Path, a: str, b: str, datasets=None, metric: str = "f1_macro", split: str = "test",
            alpha: float = 0.05) -> list[dict]:
    """Is model A better than model B? One row per dataset (stats.compare's keys, values as fractions like
    result.json's, plus dataset, metric, split, a, b and the seeds used). Without `datasets`, every
    dataset where both have at least 2 finished seeds; the others are named in a warning on stderr."""
    _check_metric(metric)
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must lie between 0 and 1, not {alpha}")
    groups = seed_groups(read_runs(root), split)
    _check_names(groups, root, a, b, datasets)
    if a == b:
        raise UsageError(f"A and B are both {a!r}: name two different models")
    if datasets:
        datasets = list(dict.fromkeys(datasets))
        for dataset in datasets:
            if reason := _too_few(groups, dataset, (a, b), split):
                raise UsageError(reason)
    else:
        both = [d for d in _ordered(d for d, _ in groups) if (d, a) in groups and (d, b) in groups]
        datasets = []
        for dataset in both:
            if reason := _too_few(groups, dataset, (a, b), split):
                print(f"warning: {dataset} skipped: {reason}", file=sys.stderr)
            else:
                datasets.append(dataset)
        if not datasets:
            counts = "; ".join(f"{m}: " + ", ".join(f"{d} {len(g)}" for (d, mm), g in groups.items() if mm == m)
                               for m in (a, b))
            raise UsageError(f"{a} and {b} have no dataset where both have 2+ finished seeds with {split} "
                             f"(finished seeds: {counts})")
    return [compare_one(groups, d, a, b, metric, split, alpha) for d in datasets]


def read_claims(path: str | Path, metric: str) -> list[dict]:
    """The statements of a claims file: a JSON list of {"a", "b", "dataset", "claim"} objects, with an
    optional "metric" (default `metric`) and "note"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no claims file at {path}")
    try:
        items = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path}: expected a non-empty JSON list of claims like "
                         '{"a": "roberta-base", "b": "bert-base-uncased", "dataset": "acl", "claim": "a > b"}')
    claims = []
    for i, item in enumerate(items, 1):
        where = f"{path}: claim {i}"
        if not isinstance(item, dict):  # a user's file, not a caller's bug: the CLI reports UsageErrors
            raise UsageError(f"{where} is not an object")
        if missing := [k for k in ("a", "b", "dataset", "claim") if k not in item]:
            raise UsageError(f"{where} lacks {', '.join(missing)}")
        if unknown := sorted(set(item) - {"a", "b", "dataset", "metric", "claim", "note"}):
            raise UsageError(f"{where} has unknown key(s) {', '.join(unknown)} "
                             "(keys: a, b, dataset, claim, metric, note)")
        if item["claim"] not in CLAIMS:
            raise UsageError(f"{where}: claim {item['claim']!r} is not one of {', '.join(map(repr, CLAIMS))}")
        claim = {"metric": metric, **item}
        _check_metric(claim["metric"])
        claims.append(claim)
    return claims


def check_claims(root: str | Path, path: str | Path, metric: str = "f1_macro", split: str = "test",
                 alpha: float = 0.05, margin: float = 1.0) -> list[dict]:
    """Each claim with its comparison and a status. "a > b" / "a < b" are supported when compare's
    verdict agrees, contradicted when it resolves the other way, else not resolved. "a = b" (within
    `margin` POINTS) is decided by stats.equivalence (two one-sided Welch t tests at alpha, i.e. the
    1 - 2 alpha Welch interval inside [-margin, +margin]): supported when equivalence is shown,
    contradicted when that interval lies wholly beyond the margin, else not resolved; its row adds
    equivalence_low / _high / _p / _confidence. A side with fewer than 2 finished seeds gives "not
    resolved" and a reason."""
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha must lie between 0 and 1, not {alpha}")
    if not margin >= 0:
        raise UsageError(f"--margin is in points and cannot be negative, not {margin}")
    claims = read_claims(path, metric)
    groups = seed_groups(read_runs(root), split)
    rows = []
    for c in claims:
        _check_names(groups, root, c["a"], c["b"], [c["dataset"]])
        if reason := _too_few(groups, c["dataset"], (c["a"], c["b"]), split):
            rows.append({**c, "status": "not resolved", "reason": reason, "margin": margin})
            continue
        r = compare_one(groups, c["dataset"], c["a"], c["b"], c["metric"], split, alpha)
        if c["claim"] == "a = b":  # a percentile bootstrap of 2-3 seeds is far too narrow for this: TOST
            e = stats.equivalence(group_values(groups[(c["dataset"], c["a"])], split, c["metric"]),
                                  group_values(groups[(c["dataset"], c["b"])], split, c["metric"]),
                                  margin / 100, alpha=alpha)
            status = {"shown": "supported", "shown outside": "contradicted"}.get(e["status"], "not resolved")
            r.update(equivalence_low=e["low"], equivalence_high=e["high"], equivalence_p=e["p_value"],
                     equivalence_confidence=e["confidence"])
        else:
            wanted = "A better" if c["claim"] == "a > b" else "B better"
            status = ("not resolved" if r["verdict"] == "not resolved"
                      else "supported" if r["verdict"] == wanted else "contradicted")
        rows.append({**c, **r, "status": status, "margin": margin})
    return rows


def _finite(value):
    return value if not isinstance(value, float) or np.isfinite(value) else None  # JSON has no nan / inf


def _points(x: float, sign: bool = False) -> str:
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _rule_note(r: dict) -> str:
    """The epoch rule in compare's and claims' text, where it is not the report's default (the last epoch);
    --format json always has "rule"."""
    return "" if r["rule"] == "last" else f", epoch rule {r['rule']}"


def format_comparison(r: dict) -> str:
    """The text block of one compare row: metric in points (percent), p as is."""
    alpha = round(1 - r["confidence"], 10)
    method = (f"exact, all {r['n_permutations']:,} relabelings" if r["method"] == "exact"
              else f"monte-carlo, {r['n_permutations']:,} random relabelings, seed {r['seed']}")
    d, needed, spread = r["cohens_d"], r["seeds_needed"], f"pooled sample std {_points(r['pooled_std'])} points"
    lines = [
        (f"{r['dataset']} {r['metric']} ({r['split']}{_rule_note(r)}): A = {r['a']} ({r['n_a']} seeds), "
         f"B = {r['b']} ({r['n_b']} seeds)"),
        (f"  mean A {_points(r['mean_a'])}, mean B {_points(r['mean_b'])}, "
         f"difference A - B {_points(r['difference'], True)} points"),
        (f"  {100 * r['confidence']:g}% Welch t CI of the difference "
         f"[{_points(r['ci_low'], True)}, {_points(r['ci_high'], True)}] points ({r['ci_df']:.3g} degrees of freedom)"),
        (f"  permutation p = {r['p_value']:.4g} ({method}); "
         f"the smallest p {r['n_a']} and {r['n_b']} seeds can give: {r['min_p_value']:.4g}"),
        f"  Cohen's d {d:+.2f} ({spread})" if np.isfinite(d) else
        f"  Cohen's d {'undefined' if np.isnan(d) else 'infinite'} ({spread}: the seeds do not spread)",
        f"  verdict at alpha {alpha:g}: {r['verdict']}",
    ]
    if needed is None:
        lines.append("  seeds per side for 80% power: none would do (no difference)")
    else:
        floor = stats.fewest_seeds(alpha)
        lines.append(f"  seeds per side for 80% power at alpha {alpha:g}: about {needed} (an estimate, from the pooled "
                     "std" + (f"; {needed} is also the fewest with which the exact test can reach {alpha:g})"
                              if needed == floor else ")"))
    return "\n".join(lines)


def format_claim(r: dict) -> str:
    head = f"{r['status']:<13} {r['dataset']} {r['metric']}: {r['a']} {r['claim'][2]} {r['b']}"
    if r["claim"] == "a = b":
        head += f" (within ±{r['margin']:g} point{'' if r['margin'] == 1 else 's'})"
    if "reason" in r:
        return f"{head} | {r['reason']}"
    if r["claim"] == "a = b":  # the interval and p the equivalence was decided on
        test = (f"{100 * r['equivalence_confidence']:g}% CI [{_points(r['equivalence_low'], True)}, "
                f"{_points(r['equivalence_high'], True)}], TOST p {r['equivalence_p']:.4g} (Welch t)")
    else:
        test = (f"{100 * r['confidence']:g}% CI [{_points(r['ci_low'], True)}, {_points(r['ci_high'], True)}], "
                f"p {r['p_value']:.4g} ({r['method']})")
    return (f"{head} | {_points(r['mean_a'])} vs {_points(r['mean_b'])}{_rule_note(r)}, difference {_points(r['difference'], True)}, "
            f"{test}, {r['n_a']} vs {r['n_b']} seeds")


def _curve(seeds: list[Seed], split: str, metric: str, x: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """x, mean, std over seeds of one logged quantity; only x values every seed has."""
    per_seed = [{r[x]: r[metric] for r in s.records if r.get("split") == split and metric in r} for s in seeds]
    per_seed = [c for c in per_seed if c]
    if not per_seed:
        return None
    xs = sorted(set.intersection(*(set(c) for c in per_seed)))
    values = np.array([[c[v] for v in xs] for c in per_seed], dtype=np.float64)  # (seeds, points)
    return np.array(xs), values.mean(0), values.std(0, ddof=1) if len(per_seed) > 1 else np.zeros(len(xs))


def _panel(ax, groups: dict[str, list[Seed]], split: str, metric: str, x: str, colors: dict) -> None:
    for name, seeds in groups.items():
        curve = _curve(seeds, split, metric, x)
        if curve is None:
            continue
        xs, mean, std = curve
        scale = 1 if metric == "loss" else 100
        label = f"{name} ({len(seeds)})"
        if len(xs) == 1:  # one evaluation (one epoch): a line and a band would be invisible
            ax.errorbar(xs, scale * mean, yerr=scale * std, color=colors[name], label=label, fmt="o", capsize=4)
            continue
        ax.plot(xs, scale * mean, color=colors[name], label=label, marker=None if split == "train" else "o",
                markersize=3)
        ax.fill_between(xs, scale * (mean - std), scale * (mean + std), color=colors[name], alpha=0.2, linewidth=0)
    label = {"loss": "loss", "accuracy": "accuracy (%)", "f1_macro": "macro-F1 (%)", "f1_micro": "micro-F1 (%)"}
    ax.set_title(f"{split} {label[metric].split(' ')[0]}")
    ax.set_xlabel(x)
    ax.set_ylabel(label[metric])
    from matplotlib.ticker import MaxNLocator
    # steps and epochs are whole numbers; min_n_ticks=1 keeps that when the axis spans one value (one epoch),
    # where MaxNLocator would otherwise fall back to ticks such as 0.945 ... 1.050
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)


def plot(root: str | Path, out: str | Path) -> list[Path]:
    """Per dataset: training loss and test accuracy / macro-F1 / micro-F1 / loss against steps, one colour
    per model, mean over seeds as a line and +-1 std as a band. Plus, for every model with an adapter or LoRA
    run (<model>-adapter, <model>-lora), those vs full fine-tuning against epochs (peft_vs_full_<model>.png;
    epochs, as their step counts differ when their epochs do)."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt

    seeds = read_runs(root)
    if not any(s.records for s in seeds):  # curves come from metrics.jsonl; result.json alone has none
        raise UsageError(f"{root} holds no metrics.jsonl records to draw (its {len(seeds)} seed folder(s) have "
                         "none): plot needs the runs train.py wrote; summarize and compare need only result.json")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = sorted({s.model for s in seeds})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    written = []
    for dataset in _ordered(s.dataset for s in seeds):
        groups = {m: [s for s in seeds if s.dataset == dataset and s.model == m] for m in models}
        groups = {m: g for m, g in groups.items() if g}
        fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
        _panel(axes[0][0], groups, "train", "loss", "step", colors)
        _panel(axes[0][1], groups, "test", "loss", "step", colors)
        for ax, metric in zip(axes[1], ("accuracy", "f1_macro", "f1_micro")):
            _panel(ax, groups, "test", metric, "step", colors)
        handles, labels = axes[0][0].get_legend_handles_labels()
        axes[0][2].axis("off")  # the legend's own panel, so it never hides a curve
        axes[0][2].legend(handles, labels, loc="center", fontsize=11, title="model (seeds)")
        fig.suptitle(f"{dataset}: mean over seeds, band or bar = ±1 std", fontsize=13)
        written.append(out / f"{dataset}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    for base in [m for m in models if f"{m}-adapter" in models or f"{m}-lora" in models]:
        methods = [m for m in (base, f"{base}-adapter", f"{base}-lora") if m in models]
        datasets = _ordered(s.dataset for s in seeds if s.model in methods)
        fig, axes = plt.subplots(2, len(datasets), figsize=(max(5.5 * len(datasets), 6.5), 8), squeeze=False,
                                 constrained_layout=True)
        for j, dataset in enumerate(datasets):
            groups = {m: [s for s in seeds if s.dataset == dataset and s.model == m] for m in methods}
            groups = {m: g for m, g in groups.items() if g}
            for i, metric in enumerate(("accuracy", "f1_macro")):
                _panel(axes[i][j], groups, "test", metric, "epoch", colors)
                axes[i][j].set_title(f"{dataset}: test {'accuracy' if i == 0 else 'macro-F1'}")
            axes[0][j].legend(fontsize=9)
        names = " and ".join({f"{base}-adapter": "adapters", f"{base}-lora": "LoRA"}[m] for m in methods[1:])
        # two lines: one dataset's column is too narrow for the title in one
        fig.suptitle(f"{base}: {names} vs full fine-tuning\nmean over seeds, band or bar = ±1 std", fontsize=13)
        written.append(out / f"peft_vs_full_{base}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Summarize, plot and compare the seeds of a runs folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summarize", help="mean ± sample std over seeds, one row per model")
    p.add_argument("runs", help="a runs folder: <runs>/<dataset>/<model>/seed<k>/result.json, as train.py --out writes it")
    p.add_argument("--split", default="test", help="the split whose metrics are summarized (default: test)")
    p.add_argument("--all-metrics", action="store_true", help="add micro-F1 and loss")
    p.add_argument("--per-class", action="store_true", help="instead: per class precision, recall, F1 and support, "
                   "and the confusion matrix summed over seeds, one block per model and dataset")
    p.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"),
                   help="json: values as fractions, as in result.json (default: markdown)")
    p = sub.add_parser("plot", help="PNG learning curves per dataset, and adapters or LoRA vs full fine-tuning")
    p.add_argument("runs", help="a runs folder: <runs>/<dataset>/<model>/seed<k>/result.json, as train.py --out writes it")
    p.add_argument("--out", default="figures", help="folder for the PNG files (default: figures)")
    for name, help_text in (("compare", "is model A better than model B? permutation p, Welch t CI, Cohen's d"),
                            ("claims", "check a JSON list of claims (a > b, a < b, a = b) against a runs folder")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("runs", help="a runs folder: <runs>/<dataset>/<model>/seed<k>/result.json, as train.py --out writes it")
        if name == "compare":
            p.add_argument("a", help="model A: a model folder name in the runs folder (runs/<dataset>/<model>)")
            p.add_argument("b", help="model B")
            p.add_argument("--dataset", nargs="+", help="default: every dataset where both have 2+ finished seeds")
        else:
            p.add_argument("claims", help='JSON list of {"a", "b", "dataset", "claim", "metric"} objects')
            p.add_argument("--margin", type=float, default=1.0, help="for a = b: equivalence within ±margin points, "
                           "by two one-sided Welch t tests (default 1)")
        p.add_argument("--metric", default="f1_macro", help=f"{', '.join(SCORES)} (default f1_macro)")
        p.add_argument("--split", default="test", help="the split whose metric is compared (default: test)")
        p.add_argument("--alpha", type=float, default=0.05, help="test level; compare's interval is 1 - alpha, "
                       "an a = b claim's 1 - 2 alpha (default 0.05)")
        p.add_argument("--format", default="text", choices=("text", "json"),
                       help="json: values as fractions, as in result.json (default: text)")
    args = parser.parse_args(argv)

    if args.command == "summarize" and args.per_class:
        print(format_per_class(summarize_per_class(args.runs, args.split), args.format))
    elif args.command == "summarize":
        metrics = METRICS if args.all_metrics else METRICS[:2]
        print(format_table(summarize(args.runs, args.split, metrics), metrics, args.format))
    elif args.command == "compare":
        rows = compare(args.runs, args.a, args.b, args.dataset, args.metric, args.split, args.alpha)
        if args.format == "json":
            print(json.dumps([{k: _finite(v) for k, v in r.items()} for r in rows], indent=2, allow_nan=False))
        else:
            print("\n\n".join(format_comparison(r) for r in rows))
        return rows
    elif args.command == "claims":
        rows = check_claims(args.runs, args.claims, args.metric, args.split, args.alpha, args.margin)
        if args.format == "json":
            print(json.dumps([{k: _finite(v) for k, v in r.items()} for r in rows], indent=2, allow_nan=False))
        else:
            print("\n".join(format_claim(r) for r in rows))
            counts = {s: sum(r["status"] == s for r in rows) for s in ("supported", "contradicted", "not resolved")}
            print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (alpha {args.alpha:g}, {args.split} split)")
        return rows
    else:
        for path in plot(args.runs, args.out):
            print(path)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, "report.py")


if __name__ == "__main__":
    sys.exit(cli())
