"""A runs folder's reports, on a short real sweep and on hand-made runs: eval.py evaluate of a saved model,
report.py summarize, and report.py plot (every panel draws the metric its title names: the plotted data
against means computed here from the runs' metrics.jsonl; figures of one epoch are readable)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import torch

import data
import eval as evaluation
import report
import train
from helpers import ROOT, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A short real sweep: full fine-tuning (2 seeds, saved) and adapters (1 seed, saved) on the keyword task."""
    root = tmp_path_factory.mktemp("reports")
    enc, task = write_tiny_encoder(root / "enc"), write_keyword_task(root / "data")
    common = ["--dataset", "acl", "--model", str(enc), "--model-name", "tiny", "--data-dir", str(task),
              "--out", str(root / "runs"), "--epochs", "3", "--lr", "3e-3", "--batch-size", "32",
              "--max-length", "64", "--save"]
    full = train.main(common + ["--seeds", "1", "2"])
    adapted = train.main(common + ["--seeds", "1", "--adapter", "--bottleneck", "8"])
    return {"root": root, "runs": root / "runs", "enc": enc, "data": task, "full": full, "adapter": adapted}


@pytest.fixture(scope="module")
def one_epoch_runs(runs):
    """One dataset, one epoch, one seed: full fine-tuning and adapters, both saved."""
    out = runs["root"] / "one_epoch"
    common = ["--dataset", "acl", "--model", str(runs["enc"]), "--model-name", "tiny", "--data-dir", str(runs["data"]),
              "--out", str(out), "--epochs", "1", "--lr", "3e-3", "--batch-size", "32", "--max-length", "64", "--save"]
    train.main(common)
    train.main(common + ["--adapter", "--bottleneck", "8"])
    return out


def cli(*argv):
    script = "eval.py" if argv[0] == "evaluate" else "report.py"
    return subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_evaluate_reproduces_the_runs_final_metrics(runs, kind):
    name = "tiny" if kind == "full" else "tiny-adapter"
    checkpoint = runs["runs"] / "acl" / name / "seed1" / "model"
    out = cli("evaluate", "--model", str(checkpoint), "--dataset", "acl", "--data-dir", str(runs["data"]),
              "--max-length", "64", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    want = runs[kind][0]["test"]
    assert got == want  # the same weights, batches and reduction: exactly the same numbers


def test_evaluate_under_torchrun_gives_the_same_numbers(runs):
    checkpoint = runs["runs"] / "acl" / "tiny" / "seed1" / "model"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "eval.py"), "evaluate", "--model", str(checkpoint), "--dataset", "acl",
                          "--data-dir", str(runs["data"]), "--max-length", "64", "--json"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])  # printed once, by rank 0
    want = runs["full"][0]["test"]
    assert got["n"] == want["n"] == 101  # two shards of an odd-sized split, every example once
    assert {k: got[k] for k in ("accuracy", "f1_macro", "f1_micro")} == \
        {k: want[k] for k in ("accuracy", "f1_macro", "f1_micro")}
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_evaluate_a_transformers_checkpoint(runs, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    hf = BertForSequenceClassification(BertConfig(vocab_size=71, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=64, num_labels=6,
                                                  initializer_range=0.5)).eval()
    hf.save_pretrained(tmp_path)
    shutil.copy(runs["enc"] / "vocab.txt", tmp_path / "vocab.txt")
    result = evaluation.main(["evaluate", "--model", str(tmp_path), "--dataset", "acl",
                              "--data-dir", str(runs["data"]), "--device", "cpu"])
    # the oracle: transformers' own model, one example at a time
    import model
    tok = model.load_tokenizer(tmp_path)
    examples = data.load_split("acl", "test", runs["data"])
    with torch.no_grad():
        preds = [hf(input_ids=torch.tensor([tok.encode(e.text).ids])).logits.argmax().item() for e in examples]
    want = evaluation.compute_metrics(preds, [e.label for e in examples], 6)
    assert result["accuracy"] == pytest.approx(want["accuracy"])
    assert result["f1_macro"] == pytest.approx(want["f1_macro"])
    assert len(set(preds)) > 1, "a constant oracle would prove little"


def test_evaluate_refuses_a_checkpoint_for_other_labels(runs):
    checkpoint = runs["runs"] / "acl" / "tiny" / "seed1" / "model"
    out = cli("evaluate", "--model", str(checkpoint), "--dataset", "restaurant", "--data-dir",
              str(runs["data"]))
    assert out.returncode == 2
    assert "6-label head but restaurant has 3 classes" in out.stderr and "Traceback" not in out.stderr


def test_evaluate_on_a_run_folder_points_to_its_model(one_epoch_runs, tmp_path):
    run = one_epoch_runs / "acl" / "tiny" / "seed1"
    with pytest.raises(FileNotFoundError, match=f"pass --model {re.escape(str(run / 'model'))}$"):
        evaluation.load_model(run)
    net, _ = evaluation.load_model(run / "model")  # the hint is right: that folder loads
    assert net.num_labels == 6
    unsaved = tmp_path / "seed1"
    shutil.copytree(run, unsaved, ignore=shutil.ignore_patterns("model"))  # as a run without --save leaves it
    with pytest.raises(FileNotFoundError, match="without a saved model: train it with --save"):
        evaluation.load_model(unsaved)


# ----------------------------------------------------------------------------- summarize


def test_summarize_a_real_sweep(runs):
    rows = report.summarize(runs["runs"])
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"tiny", "tiny-adapter"}
    values = [r["test"]["accuracy"] for r in runs["full"]]
    assert by_model["tiny"]["n"] == 2
    assert by_model["tiny"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert by_model["tiny"]["accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert by_model["tiny-adapter"]["n"] == 1 and by_model["tiny-adapter"]["accuracy"]["std"] is None
    out = cli("summarize", str(runs["runs"]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "| model | acl acc | acl macro-F1 | epoch rule |"


def _hand_made(root, model_name, dataset, seed, accuracy=None, f1=None, records=()):
    path = root / dataset / model_name / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if accuracy is not None:
        metrics = {"accuracy": accuracy, "f1_macro": f1, "f1_micro": accuracy, "loss": 0.5, "n": 100}
        (path / "result.json").write_text(json.dumps({"test": metrics}))
    return path


def test_summarize_known_numbers_and_a_missing_seed(tmp_path):
    for seed, acc, f1 in [(1, 0.80, 0.70), (2, 0.84, 0.74), (3, 0.82, 0.75)]:
        _hand_made(tmp_path, "bert", "acl", seed, acc, f1)
    _hand_made(tmp_path, "bert", "acl", 4, records=[{"step": 5, "epoch": 0.5, "split": "train", "loss": 1.0}])
    _hand_made(tmp_path, "bert", "restaurant", 1, 0.9, 0.8)
    (row_restaurant, row_acl) = report.summarize(tmp_path)  # the report's dataset order
    assert row_acl["dataset"] == "acl" and row_restaurant["dataset"] == "restaurant"
    # by hand: mean 0.82; deviations -0.02, 0.02, 0 -> sample variance 0.0008/2 -> std 0.02
    assert row_acl["accuracy"]["mean"] == pytest.approx(0.82) and row_acl["accuracy"]["std"] == pytest.approx(0.02)
    # macro-F1: mean 0.73; deviations -0.03, 0.01, 0.02 -> 0.0014 / 2 = 0.0007 -> std 0.0264575
    assert row_acl["f1_macro"]["mean"] == pytest.approx(0.73)
    assert row_acl["f1_macro"]["std"] == pytest.approx(0.0264575, abs=1e-6)
    assert row_acl["n"] == 3 and row_acl["unfinished"] == [4]  # seed 4 is shown, not averaged
    table = report.format_table([row_acl, row_restaurant], ("accuracy", "f1_macro"))
    assert "82.00 ± 2.00 (3) +1 unfinished" in table and "73.00 ± 2.65 (3) +1 unfinished" in table
    assert "| bert | 90.00 (1) | 80.00 (1) | 82.00" in table  # restaurant before acl, as in the report
    assert table.splitlines()[2].endswith(" | last |")  # a result.json without "selection": the last epoch
    csv_out = report.format_table([row_acl], ("accuracy",), "csv").splitlines()
    assert csv_out[0] == "model,acl acc,epoch rule" and csv_out[1].startswith("bert,82.00 ± 2.00 (3)")
    assert json.loads(report.format_table([row_acl], ("accuracy",), "json"))[0]["n"] == 3


def test_summarize_bad_input(tmp_path, capsys):
    out = cli("summarize", str(tmp_path))
    assert out.returncode == 2 and "holds no run folders" in out.stderr
    path = _hand_made(tmp_path, "bert", "acl", 1, 0.8, 0.7, records=[{"step": 1, "split": "train", "loss": 1.0}])
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "split": "tr\n')  # a line cut short, as a crash would leave it
    _hand_made(tmp_path, "bert", "acl", 2, 0.9, 0.8)
    out = cli("summarize", str(tmp_path))
    assert out.returncode == 0
    assert f"{path / 'metrics.jsonl'}:2: not valid JSON" in out.stderr
    assert "85.00 ± 7.07 (2)" in out.stdout


# ----------------------------------------------------------------------------- plot


def test_plot_writes_readable_figures(runs, tmp_path):
    import matplotlib.image
    out = cli("plot", str(runs["runs"]), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acl.png", "peft_vs_full_tiny.png"]
    for path in tmp_path.iterdir():
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 500 <= height <= 2000 and 500 <= width <= 3000
        assert image.std() > 0.05  # not a blank canvas


PANELS = {  # title -> (split, metric, y label); independent of eval.py's own tables
    "train loss": ("train", "loss", "loss"),
    "test loss": ("test", "loss", "loss"),
    "test accuracy": ("test", "accuracy", "accuracy (%)"),
    "test macro-F1": ("test", "f1_macro", "macro-F1 (%)"),
    "test micro-F1": ("test", "f1_micro", "micro-F1 (%)"),
}


def _write_runs(root):
    """Hand-made runs: 3 seeds of bert, 2 of bert-adapter and 2 of bert-lora on acl, 2 of bert on restaurant, with
    every metric drawn independently (so a panel showing another metric's data cannot match)."""
    rng = np.random.default_rng(0)
    runs = {}
    for dataset, model_name, seeds in [("acl", "bert", 3), ("acl", "bert-adapter", 2), ("acl", "bert-lora", 2),
                                       ("restaurant", "bert", 2)]:
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
    assert sorted(p.name for p in written) == sorted(figures) == ["acl.png", "peft_vs_full_bert.png",
                                                                 "restaurant.png"]
    for dataset in ("acl", "restaurant"):
        axes = [ax for ax in figures[f"{dataset}.png"].axes if ax.get_title()]
        assert sorted(ax.get_title() for ax in axes) == sorted(PANELS)
        for ax in axes:
            split, metric, ylabel = PANELS[ax.get_title()]
            assert ax.get_ylabel() == ylabel and ax.get_xlabel() == "step"
            _check_panel(ax, runs, dataset, split, metric, "step")
    axes = figures["peft_vs_full_bert.png"].axes  # per dataset with bert, bert-adapter or bert-lora runs, two panels
    metrics = {"test accuracy": "accuracy", "test macro-F1": "f1_macro"}
    assert sorted(ax.get_title() for ax in axes) == sorted(f"{d}: {t}" for d in ("acl", "restaurant") for t in metrics)
    for ax in axes:
        dataset, title = ax.get_title().split(": ")
        assert ax.get_xlabel() == "epoch"
        assert sorted(line.get_label() for line in ax.get_lines()) == (
            ["bert (3)", "bert-adapter (2)", "bert-lora (2)"] if dataset == "acl" else ["bert (2)"])
        _check_panel(ax, runs, dataset, "test", metrics[title], "epoch")
    assert figures["peft_vs_full_bert.png"]._suptitle.get_text().startswith("bert: adapters and LoRA vs full")


def test_plot_without_metrics_records_is_one_line_not_blank_figures(tmp_path, capsys):
    """A runs folder of result.json files only (as experiments/runs_from_csv.py writes): nothing to draw."""
    seed = tmp_path / "runs" / "acl" / "minilm" / "seed1"
    seed.mkdir(parents=True)
    (seed / "result.json").write_text(json.dumps({"test": {"accuracy": 0.5, "f1_macro": 0.2}}))
    assert report.cli(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "fig")]) == 2
    assert "holds no metrics.jsonl records to draw" in capsys.readouterr().err
    assert not (tmp_path / "fig").exists()  # no blank PNGs


def _figures(runs: Path, out: Path, monkeypatch) -> dict:
    """report.py plot's figures, kept open: name -> Figure (captured as they are saved)."""
    import matplotlib.figure
    figures, save = {}, matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        figures[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    monkeypatch.setattr("matplotlib.pyplot.close", lambda fig=None: None)
    report.plot(runs, out)
    return figures


@pytest.mark.parametrize("n_datasets", [1, 3])
def test_figures_are_readable_for_one_epoch(one_epoch_runs, tmp_path, monkeypatch, n_datasets):
    runs = tmp_path / "runs"
    for dataset in ("acl", "restaurant", "agnews")[:n_datasets]:  # the same seeds under other dataset names
        shutil.copytree(one_epoch_runs / "acl", runs / dataset)
    figures = _figures(runs, tmp_path / "figures", monkeypatch)
    assert "peft_vs_full_tiny.png" in figures and len(figures) == n_datasets + 1
    for name, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        width, height = fig.bbox.width, fig.bbox.height
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts]  # the suptitle
        boxes += [(ax.get_title(), ax.get_tightbbox(renderer)) for ax in fig.axes]  # all an axes draws
        for what, box in boxes:  # nothing cut at the figure's edges
            assert box.x0 >= -1 and box.x1 <= width + 1 and box.y0 >= -1 and box.y1 <= height + 1, (name, what)
        for ax in fig.axes:
            if not ax.axison:  # the legend's panel
                continue
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), (name, ax.get_title(), ticks)
            marked = [line for line in ax.get_lines() if line.get_marker() not in (None, "", "None")]
            assert marked, (name, ax.get_title())  # a single evaluation is a visible point, not a 0-length line
