"""eval.py: `evaluate` refuses a checkpoint whose label names are not the dataset's, and every
`plot` panel draws the metric its title names (the plotted data against means computed here from
the runs' metrics.jsonl, not only that a PNG exists)."""

import json
import shutil

import matplotlib.figure
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import eval as evaluation
import model
import report
from helpers import write_keyword_task, write_tiny_encoder

ACL = data.DATASETS["acl"].labels

# ----------------------------------------------------------------------------- label names


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(10, 10, 20)),
            "root": root}


def _checkpoint(files, names) -> str:
    """A 6-label classifier saved with these label names, beside the encoder's vocab."""
    directory = files["root"] / ("ckpt-" + "-".join(names).replace("/", "_"))
    if not directory.exists():
        torch.manual_seed(0)
        net = model.from_pretrained(files["enc"], num_labels=6)
        model.save_pretrained(net, directory, labels=list(names))
        shutil.copy(files["enc"] / "vocab.txt", directory / "vocab.txt")
    return str(directory)


def _evaluate(files, names):
    return evaluation.main(["evaluate", "--checkpoint", _checkpoint(files, names), "--dataset", "acl",
                            "--data-dir", str(files["data"]), "--device", "cpu", "--max-length", "64"])


@pytest.mark.parametrize("names", [
    ["positive", "neutral", "negative", "World", "Sports", "Business"],  # six names, another task's
    ACL[1:] + ACL[:1],  # acl's own names in another order: class ids would mean other classes
    [*ACL[:5], "background"],  # one name differs
    ["LABEL_0", *ACL[1:]],  # one default name among real ones: the real ones still have to agree
], ids=["other-names", "permuted", "one-differs", "one-default"])
def test_evaluate_refuses_other_label_names(files, names):
    assert len(names) == len(ACL)
    if names[0] == "LABEL_0":
        names = ["LABEL_0", *ACL[:5]]  # LABEL_0 then acl's names shifted: only all-default names are meaningless
    with pytest.raises(ValueError, match=r"labels its classes .* acl has .*index = class id") as e:
        _evaluate(files, names)
    assert str(names) in str(e.value) and str(ACL) in str(e.value)


@pytest.mark.parametrize("names", [ACL, [f"LABEL_{i}" for i in range(6)]], ids=["acl", "transformers-default"])
def test_evaluate_accepts_the_datasets_names_or_none(files, names):
    """transformers' default names (LABEL_i) carry no meaning, so they are no reason to refuse."""
    result = _evaluate(files, names)
    assert result["n"] == 20 and 0 <= result["accuracy"] <= 1


# ----------------------------------------------------------------------------- plot


PANELS = {  # title -> (split, metric, y label); independent of eval.py's own tables
    "train loss": ("train", "loss", "loss"),
    "test loss": ("test", "loss", "loss"),
    "test accuracy": ("test", "accuracy", "accuracy (%)"),
    "test macro-F1": ("test", "f1_macro", "macro-F1 (%)"),
    "test micro-F1": ("test", "f1_micro", "micro-F1 (%)"),
}


def _write_runs(root):
    """Hand-made runs: 3 seeds of bert and 2 of bert-adapter on acl, 2 of bert on restaurant, with
    every metric drawn independently (so a panel showing another metric's data cannot match)."""
    rng = np.random.default_rng(0)
    runs = {}
    for dataset, model_name, seeds in [("acl", "bert", 3), ("acl", "bert-adapter", 2), ("restaurant", "bert", 2)]:
        for seed in range(1, seeds + 1):
            path = root / dataset / model_name / f"seed{seed}"
            path.mkdir(parents=True)
            steps = [10, 20, 30] + ([40] if seed == 3 else [])  # seed 3 logged one step more
            records = []
            for i, step in enumerate(steps):
                records.append({"step": step - 5, "epoch": i + 0.5, "split": "train",
                                "loss": float(rng.uniform(0.2, 2)), "lr": 1e-5, "examples_per_s": 100.0})
                records.append({"step": step, "epoch": i + 1, "split": "test",
                                **{m: float(rng.uniform(0.1, 0.9)) for m in ("loss", "accuracy", "f1_macro",
                                                                              "f1_micro")}})
            (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            runs.setdefault((dataset, model_name), []).append(records)
    return runs


def _expected(seeds_records, split, metric, x):
    """x values every seed has, mean and sample std over seeds, in the plot's units (metrics in %)."""
    curves = [{r[x]: r[metric] for r in records if r["split"] == split} for records in seeds_records]
    xs = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[v] for v in xs] for c in curves])
    scale = 1 if metric == "loss" else 100
    std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(xs))
    return np.array(xs, dtype=float), scale * values.mean(0), scale * std


def _check_panel(ax, runs, dataset, split, metric, x):
    lines = ax.get_lines()
    bands = ax.collections
    assert len(lines) == len(bands) > 0
    for line, band in zip(lines, bands):
        name, n = line.get_label().rsplit(" (", 1)
        seeds = runs[dataset, name]
        assert int(n.rstrip(")")) == len(seeds)
        xs, mean, std = _expected(seeds, split, metric, x)
        np.testing.assert_allclose(line.get_xydata(), np.stack([xs, mean], 1), rtol=1e-12,
                                   err_msg=f"{dataset} {split} {metric} {name}")
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        np.testing.assert_allclose([ys.min(), ys.max()], [(mean - std).min(), (mean + std).max()], rtol=1e-12)


def test_each_plot_panel_draws_the_metric_it_names(tmp_path, monkeypatch):
    runs = _write_runs(tmp_path / "runs")
    figures = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **kw: figures.update({path.name: fig}))
    written = report.plot(tmp_path / "runs", tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(figures) == ["acl.png", "adapter_vs_full_bert.png",
                                                                 "restaurant.png"]
    for dataset in ("acl", "restaurant"):
        axes = [ax for ax in figures[f"{dataset}.png"].axes if ax.get_title()]
        assert sorted(ax.get_title() for ax in axes) == sorted(PANELS)
        for ax in axes:
            split, metric, ylabel = PANELS[ax.get_title()]
            assert ax.get_ylabel() == ylabel and ax.get_xlabel() == "step"
            _check_panel(ax, runs, dataset, split, metric, "step")
    axes = figures["adapter_vs_full_bert.png"].axes  # per dataset with bert or bert-adapter runs, two panels
    metrics = {"test accuracy": "accuracy", "test macro-F1": "f1_macro"}
    assert sorted(ax.get_title() for ax in axes) == sorted(f"{d}: {t}" for d in ("acl", "restaurant") for t in metrics)
    for ax in axes:
        dataset, title = ax.get_title().split(": ")
        assert ax.get_xlabel() == "epoch"
        assert sorted(line.get_label() for line in ax.get_lines()) == (
            ["bert (3)", "bert-adapter (2)"] if dataset == "acl" else ["bert (2)"])
        _check_panel(ax, runs, dataset, "test", metrics[title], "epoch")


def test_plot_without_metrics_records_is_one_line_not_blank_figures(tmp_path, capsys):
    """A runs folder of result.json files only (as experiments/runs_from_csv.py writes): nothing to draw."""
    seed = tmp_path / "runs" / "acl" / "minilm" / "seed1"
    seed.mkdir(parents=True)
    (seed / "result.json").write_text(json.dumps({"test": {"accuracy": 0.5, "f1_macro": 0.2}}))
    assert report.cli(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "fig")]) == 2
    assert "holds no metrics.jsonl records to draw" in capsys.readouterr().err
    assert not (tmp_path / "fig").exists()  # no blank PNGs


def test_bf16_evaluation_runs_under_autocast_and_scores_fp32_logits(files):
    """eval.evaluate under train.py's bf16 autocast: the forward runs in bf16 (its loss differs from fp32's),
    and the loss is cross-entropy of the logits cast to fp32, summed in float64 (a reference loop over the
    same batches; bf16 cross-entropy would be off by about 1e-3)."""
    import common
    torch.manual_seed(0)
    net = model.from_pretrained(files["enc"], num_labels=6).eval()
    tok = model.load_tokenizer(files["enc"])
    enc = data.encode(data.load_split("acl", "test", files["data"]), tok, 64)
    bf16 = common.autocast(torch.bfloat16, torch.device("cpu"))
    got = evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=8, max_length=64,
                              autocast=bf16)
    fp32 = evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=8, max_length=64)
    loss, n = 0.0, 0
    with torch.no_grad():
        for idx in data.eval_batches(enc.lengths, 8, 0, 1):
            b = data.collate(enc, idx, 0, 1, 64)
            with bf16():
                logits = net(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            assert logits.dtype == torch.bfloat16  # the oracle itself ran in bf16
            loss += F.cross_entropy(logits.float(), b["labels"], reduction="sum").double().item()
            n += len(idx)
    assert got["n"] == n and got["loss"] == pytest.approx(loss / n, rel=1e-9)
    assert abs(got["loss"] - fp32["loss"]) > 1e-5 * fp32["loss"]  # bf16 really ran (measured: 6.6e-5 relative)
