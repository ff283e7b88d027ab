"""--precision: with fp16, a step whose update the GradScaler skips is not a step of the learning-rate
schedule; fp16 on a CPU says what it costs before any input is read.

Overflows are forced on the CPU by turning one parameter's gradient into inf on chosen steps. The
oracles are independent of train.py's own detection (the scale going down): AdamW's own step
counter tells which optimizer calls really updated (fused AdamW is called on skipped steps too and
skips inside), and transformers' get_linear_schedule_with_warmup gives the learning rate each real
update must use: the reference schedule counted over real updates only.
"""

import contextlib
import io
import json

import pytest
import torch

import runs
import train
from helpers import without_timings, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

SKIPPED = {0, 1, 2, 6}  # step indices (0-based): three inside the warm-up, one after it
STEPS, WARMUP = 12, 4  # 96 examples / batch 16 = 6 steps per epoch, 2 epochs; ceil(0.3 * 12) = 4


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return {"enc": write_tiny_encoder(root / "enc"), "data": write_keyword_task(root / "data", sizes=(96, 10, 10))}


def argv(task, out, *extra, precision="fp16"):
    return ["--dataset", "acl", "--model", str(task["enc"]), "--data-dir", str(task["data"]), "--out", str(out),
            "--epochs", "2", "--batch-size", "16", "--max-length", "32", "--lr", "1e-3", "--warmup-ratio", "0.3",
            "--precision", precision, "--log-every", "1", *extra]


def install_overflows(mp: pytest.MonkeyPatch) -> list[float]:
    """Inf gradients on the SKIPPED steps; returns the learning rates of the updates that really happened."""
    applied = []
    real_step, real_build = train.Run.train_step, train.build_optimizer

    def train_step(self, batch):
        hook = self.trainable[0].register_hook(lambda g: g * float("inf")) if self.step in SKIPPED else None
        try:
            real_step(self, batch)
        finally:
            if hook:
                hook.remove()

    def build_optimizer(*a, **kw):
        optimizer, scheduler = real_build(*a, **kw)
        p = optimizer.param_groups[0]["params"][0]
        steps = lambda: float(optimizer.state[p]["step"]) if "step" in optimizer.state[p] else 0.0
        before = {}
        optimizer.register_step_pre_hook(lambda o, args, kwargs: before.update(lr=o.param_groups[0]["lr"], n=steps()))
        optimizer.register_step_post_hook(
            lambda o, args, kwargs: applied.append(before["lr"]) if steps() > before["n"] else None)
        return optimizer, scheduler

    mp.setattr(train.Run, "train_step", train_step)
    mp.setattr(train, "build_optimizer", build_optimizer)
    return applied


@pytest.fixture
def overflows(monkeypatch):
    return install_overflows(monkeypatch)


@pytest.fixture(scope="module")
def uninterrupted(task, tmp_path_factory):
    """One fp16 run with the forced overflows: its result, real updates' lrs, folder and printed lines."""
    out = tmp_path_factory.mktemp("ref")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        lrs = install_overflows(mp)
        (result,) = train.main(argv(task, out))
    return {"result": result, "lrs": lrs, "dir": out / "acl" / "enc" / "seed1", "stdout": printed.getvalue()}


def reference_lrs(n: int, lr: float = 1e-3) -> list[float]:
    """transformers' linear warm-up + decay, one value per optimizer update."""
    from transformers import get_linear_schedule_with_warmup
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    lrs = []
    for _ in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def train_records(run_dir):
    return [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["split"] == "train"]


def test_skipped_steps_do_not_advance_the_schedule(uninterrupted):
    result, lrs = uninterrupted["result"], uninterrupted["lrs"]
    ref = reference_lrs(STEPS)
    assert len(lrs) == STEPS - len(SKIPPED), "the forced overflows did not make the scaler skip"
    assert lrs == pytest.approx(ref[: len(lrs)], rel=1e-12, abs=0)  # the warm-up from its start
    assert result["steps"] == STEPS and result["skipped_steps"] == len(SKIPPED)

    records = train_records(uninterrupted["dir"])
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    want_skipped = [sum(s < r["step"] for s in SKIPPED) for r in records]
    assert [r["skipped_steps"] for r in records] == want_skipped
    # the logged lr is the one the next update will use: the schedule at the number of updates so far
    assert [r["lr"] for r in records] == pytest.approx([ref[r["step"] - k] for r, k in zip(records, want_skipped)])
    lines = [line for line in uninterrupted["stdout"].splitlines() if line.startswith("step ")]
    assert len(lines) == STEPS and lines[0].endswith("| skipped_steps 1") and lines[-1].endswith("| skipped_steps 4")


def test_resume_keeps_the_skipped_count(task, tmp_path, overflows, monkeypatch, uninterrupted):
    """A run stopped after its step-4 checkpoint (three skips so far) resumes onto the uninterrupted numbers."""
    ref, ref_lrs = uninterrupted["result"], uninterrupted["lrs"]
    real_save = runs.save_checkpoint

    def save_and_stop(self):
        real_save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_checkpoint", save_and_stop)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(task, tmp_path / "cut", "--checkpoint-every", "4"))
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    (resumed,) = train.main(argv(task, tmp_path / "cut", "--checkpoint-every", "4", "--resume"))
    assert overflows == ref_lrs
    assert resumed["skipped_steps"] == ref["skipped_steps"] == len(SKIPPED) and resumed["test"] == ref["test"]
    strip = without_timings
    assert strip(train_records(tmp_path / "cut" / "acl" / "enc" / "seed1")) == strip(train_records(uninterrupted["dir"]))


def test_no_skips_without_fp16(task, tmp_path):
    (result,) = train.main(argv(task, tmp_path, precision="fp32"))
    assert result["skipped_steps"] == 0
    assert all(r["skipped_steps"] == 0 for r in train_records(tmp_path / "acl" / "enc" / "seed1"))


# ----------------------------------------------------------------------------- fp16 on a CPU


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
