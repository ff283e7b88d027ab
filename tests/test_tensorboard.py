"""--tensorboard (on your own data, a csv copy of the keyword task): the event files, read back with TensorBoard's own reader, hold exactly metrics.jsonl's numbers,
also after an interrupted run is resumed; without the package the flag is a one-line error."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data
import train
from helpers import ROOT, TIMINGS, write_keyword_task, write_tiny_encoder

pytest.importorskip("tensorboard", reason="pip install tensorboard (requirements-dev.txt) for the reader")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(tiny encoder, the keyword task as your own data: keywords/{train,dev,test}.csv)."""
    root = tmp_path_factory.mktemp("tensorboard")
    task = write_keyword_task(root / "data", sizes=(150, 30, 40))
    mine = root / "keywords"
    mine.mkdir()
    for split in ("train", "dev", "test"):
        with open(mine / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "text"])
            for line in (task / "acl" / f"{split}.jsonl").read_text().splitlines():
                writer.writerow([json.loads(line)["label"], json.loads(line)["text"]])
    return write_tiny_encoder(root / "enc"), mine


def args(task, out, *extra):
    enc, mine = task
    return ["--dataset", str(mine), "--model", str(enc), "--out", str(out), "--epochs", "2", "--lr", "3e-3",
            "--batch-size", "16", "--max-length", "64", "--log-every", "3", "--tensorboard", *extra]


def run_dir(out):
    return out / "keywords" / "enc" / "seed1"


def logged(path):
    """{tag: [(step, value)]} as TensorBoard shows it: its own reader, every event kept, orphans purged."""
    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def from_metrics(path):
    """The same view of metrics.jsonl: <split>/<name> for every number but step; TensorBoard stores float32."""
    want = {}
    for line in (path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("step", "split"):
                want.setdefault(f"{record['split']}/{key}", []).append((record["step"], float(np.float32(value))))
    return want


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train.main(args(task, out))
    return run_dir(out)


def test_event_files_hold_exactly_the_metrics(uninterrupted):
    got, want = logged(uninterrupted), from_metrics(uninterrupted)
    assert got == want
    assert {"train/loss", "train/lr", "train/grad_norm", "train/examples_per_s", "train/tokens_per_s", "train/epoch",
            "dev/accuracy", "dev/f1_macro", "test/loss", "test/accuracy", "test/f1_macro", "test/f1_micro"} <= set(got)
    assert len(got["train/loss"]) == 2 * 4 and [s for s, _ in got["test/accuracy"]] == [10, 20]  # 150 / 16: 10 steps
    assert len(list(uninterrupted.glob("events.out.tfevents.*"))) == 1


class Crash(Exception):
    pass


def test_resumed_run_shows_no_orphans(task, uninterrupted, tmp_path, monkeypatch):
    evaluate = train.Run.evaluate

    def crash_in_epoch_2(self, epoch):
        if epoch == 2:  # after epoch 2's training records were logged, before its evaluation and end
            raise Crash
        return evaluate(self, epoch)

    monkeypatch.setattr(train.Run, "evaluate", crash_in_epoch_2)
    with pytest.raises(Crash):
        train.main(args(task, tmp_path))
    monkeypatch.undo()
    assert (run_dir(tmp_path) / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match=r"--labels None \(now \['Uses', "):  # other class ids: another task
        train.main(args(task, tmp_path, "--resume", "--labels", ",".join(data.DATASETS["acl"].labels)))
    train.main(args(task, tmp_path, "--resume"))
    assert len(list(run_dir(tmp_path).glob("events.out.tfevents.*"))) == 2  # the crashed attempt's file is still there
    got = logged(run_dir(tmp_path))
    assert got == from_metrics(run_dir(tmp_path))  # its records after the checkpoint are hidden, not doubled
    timed = lambda tag: tag.split("/")[-1] in TIMINGS
    same = {tag: v for tag, v in logged(uninterrupted).items() if not timed(tag)}
    assert {tag: v for tag, v in got.items() if not timed(tag)} == same


def test_without_the_package_one_line_says_what_to_install(task, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ValueError) as err:
        train.main(args(task, tmp_path))
    assert str(err.value) == "--tensorboard needs the tensorboard package: pip install tensorboard"
    assert not (tmp_path / "keywords").exists()  # stopped before anything was trained or written


def test_torchrun_on_your_own_data_rank0_writes_the_events(task, tmp_path):
    """Two ranks: the one process's metrics, and one set of event files (rank 0's)."""
    (one,) = train.main(args(task, tmp_path / "one", "--epochs", "1"))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "train.py"), *args(task, tmp_path / "two", "--epochs", "1", "--micro-batch-size", "8")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    folder = run_dir(tmp_path / "two")
    result = json.loads((folder / "result.json").read_text())
    for split in ("dev", "test"):
        assert {k: result[split][k] for k in ("accuracy", "f1_macro", "n")} == \
            {k: one[split][k] for k in ("accuracy", "f1_macro", "n")}
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert logged(folder) == from_metrics(folder)
