"""Errors for users are UsageErrors, caught by the CLIs as one line and exit code 2; any other ValueError (a
bug of ours or torch's) escapes the CLI wrapper with its traceback. In-process through train.cli, eval.cli and
memory.main, with a ValueError planted where the real code calls into ours or into torch."""

import pytest
import torch

import common
import memory
import own_data
import report
import train

pytestmark = pytest.mark.usefixtures("one_thread")


def boom(error):
    def raiser(*args, **kwargs):
        raise error
    return raiser


def test_usage_error_is_a_value_error():
    assert issubclass(common.UsageError, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize("call", [
    lambda: train.resolve(train.parse_args(["--dataset", "acl", "--seeds", "1", "1"]), 1, torch.device("cpu")),
    lambda: train.resolve(train.parse_args(["--dataset", "acl", "--bottleneck", "8"]), 1, torch.device("cpu")),
    lambda: own_data.open_dataset("no-such-dataset"),
    lambda: report._check_metric("loss"),
    lambda: memory._positive(batch_size=0),
], ids=["train-duplicate-seeds", "train-adapter-flags", "data-unknown-dataset", "eval-metric", "memory-batch"])
def test_validation_sites_raise_usage_errors(call):
    with pytest.raises(common.UsageError):
        call()


def test_train_cli_reports_a_usage_error_in_one_line(capsys):
    assert train.cli(["--dataset", "acl", "--seeds", "1", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err == "train.py: error: --seeds has duplicates: [1, 1]\n"


@pytest.mark.parametrize("where", ["ours", "torch"])
def test_train_cli_lets_a_bug_keep_its_traceback(monkeypatch, capsys, where):
    """A plain ValueError from our code (own_data.run_name, which resolve calls) or from torch (torch.cuda.is_available,
    which the distributed setup calls) propagates out of cli; the same spot raising a UsageError is reported."""
    target = (own_data, "run_name") if where == "ours" else (torch.cuda, "is_available")
    monkeypatch.setattr(*target, boom(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug") as e:
        train.cli(["--dataset", "acl", "--device", "cpu"])
    assert not isinstance(e.value, common.UsageError)
    monkeypatch.setattr(*target, boom(common.UsageError("say what to do")))
    assert train.cli(["--dataset", "acl", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == "train.py: error: say what to do\n"


def test_report_cli_lets_a_bug_keep_its_traceback(monkeypatch, tmp_path, capsys):
    assert report.cli(["summarize", str(tmp_path / "none")]) == 2  # a missing runs folder: one line
    assert capsys.readouterr().err.startswith("report.py: error: no runs folder at ")
    monkeypatch.setattr(report, "read_runs", boom(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        report.cli(["summarize", str(tmp_path)])
    monkeypatch.setattr(report, "read_runs", boom(common.UsageError("say what to do")))
    assert report.cli(["summarize", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "report.py: error: say what to do\n"


def test_memory_cli_lets_a_bug_keep_its_traceback(monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        memory.main(["--params", "3e9", "--batch-size", "0"])
    assert e.value.code == 2 and "error: batch_size must be a positive integer, got 0" in capsys.readouterr().err
    monkeypatch.setattr(memory, "compare_with_report", boom(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        memory.main(["--params", "3e9"])
