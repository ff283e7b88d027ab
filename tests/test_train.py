"""train.py end to end on a tiny model and a learnable keyword task.

Oracles: one process for DDP (torchrun, 2 ranks, gloo on CPU), an uninterrupted run for resume.
"""

import dataclasses
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest
import torch
from safetensors.torch import load_file

import common
import runs
import train
from helpers import ROOT, without_timings, write_keyword_task, write_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    return {"enc": write_tiny_encoder(root / "enc"),
            "enc_dropout": write_tiny_encoder(root / "enc_dropout", dropout=0.1),
            "roberta": write_tiny_encoder(root / "roberta", kind="roberta"),
            "data": write_keyword_task(root / "data")}


def args(task, out, *extra, model="enc", epochs=3):
    return ["--dataset", "acl", "--model", str(task[model]), "--data-dir", str(task["data"]), "--out", str(out),
            "--epochs", str(epochs), "--lr", "3e-3", "--batch-size", "32", "--max-length", "64", *extra]


# One thread per rank, and the same float order in every run; a crash in C++ also prints the Python stack.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run_cli(argv, torchrun: int = 0, **kwargs):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] \
        if torchrun else [sys.executable]
    return subprocess.run([*launcher, str(ROOT / "train.py"), *argv], capture_output=True, text=True, env=ENV,
                          timeout=300, **kwargs)


def seed_dir(out, name="enc", seed=1):
    return out / "acl" / name / f"seed{seed}"


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize("batches", ["grouped", "random"])
def test_learns_the_keyword_task(task, tmp_path, batches):
    (result,) = train.main(args(task, tmp_path, *(["--random-batches"] if batches == "random" else []), epochs=12))
    assert result["test"]["accuracy"] >= 0.95 and result["dev"]["accuracy"] >= 0.95
    assert result["test"]["n"] == 101 and result["dev"]["n"] == 50
    records = read_metrics(seed_dir(tmp_path) / "metrics.jsonl")
    evals = [r for r in records if r["split"] == "test"]
    assert [r["epoch"] for r in evals] == list(range(1, 13))
    assert all(r["eval_time_s"] > 0 for r in evals)  # each evaluation's own seconds (bench/train_timed.py reads them)
    assert evals[-1]["accuracy"] == result["test"]["accuracy"]  # the LAST epoch, not the best one
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    config = json.loads((seed_dir(tmp_path) / "config.json").read_text())
    assert config["seed"] == 1 and config["world_size"] == 1 and config["lr"] == 3e-3
    assert config["versions"]["torch"] == torch.__version__ and "git_commit" in config


def _weights(run_dir, adapter=False):
    return load_file(run_dir / "model" / ("adapter.safetensors" if adapter else "model.safetensors"))


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "adapter"])
def test_ddp_two_ranks_match_one_process(task, tmp_path, adapter):
    """301 examples in global batches of 20: the last batch holds one example, so rank 1 runs an empty
    micro-batch. Two ranks x micro-batch 5 x 2 accumulation steps must give the single process's
    update, up to float summation order."""
    extra = ["--save", "--batch-size", "20", *(["--adapter", "--bottleneck", "8"] if adapter else [])]
    one = run_cli(args(task, tmp_path / "one", *extra))
    two = run_cli(args(task, tmp_path / "two", *extra, "--micro-batch-size", "5"), torchrun=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr
    name = "enc-adapter" if adapter else "enc"
    a, b = _weights(seed_dir(tmp_path / "one", name), adapter), _weights(seed_dir(tmp_path / "two", name), adapter)
    assert a.keys() == b.keys()
    for k in a:
        if "attention.self.key.bias" in k:
            # The key bias adds the same q.b to every score of a query, and softmax ignores a shift, so its
            # true gradient is exactly 0: Adam turns the float round-off there into full-size steps.
            continue
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    ra = json.loads((seed_dir(tmp_path / "one", name) / "result.json").read_text())
    rb = json.loads((seed_dir(tmp_path / "two", name) / "result.json").read_text())
    for split in ("dev", "test"):
        assert rb[split]["n"] == ra[split]["n"]  # odd-sized splits: every example scored exactly once
        for m in ("accuracy", "f1_macro", "f1_micro"):
            assert rb[split][m] == ra[split][m]
        assert rb[split]["loss"] == pytest.approx(ra[split]["loss"], abs=1e-5)
    assert json.loads((seed_dir(tmp_path / "two", name) / "config.json").read_text())["world_size"] == 2


TEARDOWN = """
import gc, os, socket, weakref
import torch, torch.distributed as dist
import common
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
with common.distributed("cpu"):
    group = weakref.ref(dist.distributed_c10d._get_default_group())
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    net(torch.randn(3, 4)).sum().backward()
    del net
    gc.collect()
print("freed" if group() is None else "alive")
"""


def test_teardown_frees_the_process_group():
    """After a DDP model has run, tearing down must free the process group itself, which joins gloo's threads.
    A group that outlives destroy_process_group keeps them running into interpreter exit, where one can abort
    the process. In a fresh interpreter, so that nothing imported earlier hides the leak."""
    out = subprocess.run([sys.executable, "-c", TEARDOWN], capture_output=True, text=True, timeout=120,
                         env={**ENV, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["freed"]


def test_kill_and_resume_equals_uninterrupted(task, tmp_path):
    argv = args(task, tmp_path / "killed", "--save", "--checkpoint-every", "3", model="enc_dropout", epochs=20)
    ref = run_cli(args(task, tmp_path / "ref", "--save", model="enc_dropout", epochs=20))
    assert ref.returncode == 0, ref.stderr

    run = seed_dir(tmp_path / "killed", "enc_dropout")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "result.json").exists(), "the run finished before it was killed: the test proved nothing"

    stopped = run_cli(argv)  # without --resume an interrupted run is not overwritten
    assert stopped.returncode == 2 and "pass --resume" in stopped.stderr
    resumed = run_cli(argv + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and not (run / "checkpoint.pt").exists()

    a, b = _weights(seed_dir(tmp_path / "ref", "enc_dropout")), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((seed_dir(tmp_path / "ref", "enc_dropout") / "result.json").read_text())
    rb = json.loads((run / "result.json").read_text())
    assert ra["test"] == rb["test"] and ra["dev"] == rb["dev"]
    strip = without_timings
    assert strip(read_metrics(run / "metrics.jsonl")) == strip(read_metrics(seed_dir(tmp_path / "ref", "enc_dropout")
                                                                            / "metrics.jsonl"))


def interrupt_after_epoch_1(task, out, monkeypatch) -> train.Run:
    """A 2-epoch run that crashes in epoch 2's evaluation, as if the user pressed Ctrl-C after the epoch-1
    checkpoint (written the old way, before the stop signals were caught); its Run."""
    runs = []
    real_evaluate = train.Run.evaluate

    def crash_in_epoch_2(self, epoch):
        runs.append(self)
        if epoch == 2:
            raise KeyboardInterrupt
        return real_evaluate(self, epoch)

    monkeypatch.setattr(train.Run, "evaluate", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train.main(args(task, out, epochs=2))
    monkeypatch.undo()
    return runs[-1]


def test_resume_refuses_other_settings(task, tmp_path, monkeypatch):
    interrupt_after_epoch_1(task, tmp_path, monkeypatch)
    assert (seed_dir(tmp_path) / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match=r"--lr 0.003 \(now 0.001\)"):
        train.main(args(task, tmp_path, "--lr", "1e-3", "--resume", epochs=2))
    with pytest.raises(ValueError, match=r"--random-batches False \(now True\)"):  # another batch order
        train.main(args(task, tmp_path, "--random-batches", "--resume", epochs=2))
    # a checkpoint from before --random-batches existed is refused in one line (no fallback to a default)
    ckpt = seed_dir(tmp_path) / "checkpoint.pt"
    original = ckpt.read_bytes()
    state = torch.load(ckpt, weights_only=False)
    del state["config"]["random_batches"]
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match=r"written by an older train.py, .*Delete it to start seed 1 over"):
        train.main(args(task, tmp_path, "--resume", epochs=2))
    ckpt.write_bytes(original)
    (result,) = train.main(args(task, tmp_path, "--resume", epochs=2))
    assert result["epochs"] == 2 and not (seed_dir(tmp_path) / "checkpoint.pt").exists()


def test_a_finished_seed_is_skipped_only_for_the_same_run(task, tmp_path, capsys):
    """Rerunning into a finished run folder with other settings, or asking for --save where none was saved,
    is a one-line error; the same command skips the seed (found by a new user: the new settings used to be
    dropped without a word)."""
    train.main(args(task, tmp_path, epochs=1))
    with pytest.raises(common.UsageError, match=r"finished run with --max-length 64 \(now 48\): give this run"):
        train.main([*args(task, tmp_path, epochs=1), "--max-length", "48"])
    with pytest.raises(common.UsageError, match=r"finished run without --save \(no model/ folder\)"):
        train.main([*args(task, tmp_path, epochs=1), "--save"])
    capsys.readouterr()
    assert train.main(args(task, tmp_path, epochs=1)) == []  # the same run: skipped
    assert "result.json exists, skipping" in capsys.readouterr().out


def test_seeds_repeat_and_finished_seeds_are_skipped(task, tmp_path, capsys, monkeypatch):
    # A finished seed's model and optimizer are freed before the next seed builds its own: on a GPU, seed 2
    # must not hold seed 1's weights and Adam state (the objects sit in reference cycles, see train.main).
    alive_at_build, built = [], []
    build = train.Run.__init__

    def tracked_build(self, *a, **kw):
        alive_at_build.append([ref() is not None for ref in built])
        build(self, *a, **kw)
        built.extend([weakref.ref(self.model), weakref.ref(self.optimizer)])

    monkeypatch.setattr(train.Run, "__init__", tracked_build)
    gc.disable()  # no collection by chance: only train.main's own may free them
    try:
        r1, r2 = train.main(args(task, tmp_path, "--seeds", "1", "2", epochs=1))
    finally:
        gc.enable()
    assert alive_at_build == [[], [False, False]]
    monkeypatch.undo()
    assert r1["seed"] == 1 and r2["seed"] == 2 and r1["test"] != r2["test"]
    assert train.main(args(task, tmp_path, "--seeds", "1", "2", "3", epochs=1))[0]["seed"] == 3
    assert "seed 1: " in capsys.readouterr().out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(task, tmp_path, precision, monkeypatch):
    scalers = []
    build = train.Run.__init__

    def tracked_build(self, *a, **kw):
        build(self, *a, **kw)
        scalers.append(self.scaler)

    monkeypatch.setattr(train.Run, "__init__", tracked_build)
    (result,) = train.main(args(task, tmp_path, "--precision", precision, epochs=2))
    # loss scaling is for fp16 alone: bf16 has fp32's exponent range, and a scaler would only add work and skips
    assert [s.is_enabled() for s in scalers] == [precision == "fp16"]
    config = json.loads((seed_dir(tmp_path) / "config.json").read_text())
    assert config["autocast_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_metrics(seed_dir(tmp_path) / "metrics.jsonl"))
    assert result["test"]["n"] == 101


def test_roberta_adapter_run_saves_only_adapters(task, tmp_path):
    (result,) = train.main(args(task, tmp_path, "--adapter", "--save", model="roberta", epochs=1))
    saved = seed_dir(tmp_path, "roberta-adapter") / "model"
    assert sorted(p.name for p in saved.iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    assert result["trainable_params"] < result["total_params"]
    assert sum(t.numel() for t in _weights(saved.parent, adapter=True).values()) == result["trainable_params"]


def test_a_single_step_run_says_it_learns_nothing(task, tmp_path, capsys):
    """One optimizer step in all: warm-up gives it lr 0 (as transformers' schedule does), so the weights
    do not move; the run says so instead of silently returning the base model."""
    (result,) = train.main(args(task, tmp_path, "--batch-size", "512", "--save", epochs=1))
    assert result["steps"] == 1
    assert "make 1 optimizer step, and warm-up starts at lr 0" in capsys.readouterr().out
    (record,) = [r for r in read_metrics(seed_dir(tmp_path) / "metrics.jsonl") if r["split"] == "train"]
    assert record["lr"] == 0.0
    base, trained = load_file(task["enc"] / "model.safetensors"), _weights(seed_dir(tmp_path))
    assert all(torch.equal(base[k], trained[k]) for k in base)  # lr 0: the encoder is the base, to the bit
    train.main(args(task, tmp_path / "two", "--batch-size", "256", epochs=1))  # 2 steps: no note
    assert "warm-up starts at lr 0" not in capsys.readouterr().out


def test_nan_loss_stops_with_a_clear_message(task, tmp_path):
    out = run_cli(args(task, tmp_path, "--lr", "1e4", "--max-grad-norm", "0", "--precision", "fp16"))
    assert out.returncode == 2
    assert "NaN/inf at step" in out.stderr and "--precision bf16 or fp32" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "imdb"], "unknown dataset 'imdb'"),
    (["--model", "/no/such/model"], "neither a local directory nor a Hub model repo"),
    (["--micro-batch-size", "5"], "--batch-size 32 is not divisible by 1 rank(s) x --micro-batch-size 5"),
    (["--max-length", "100"], "--max-length 100 is above what"),
    (["--bottleneck", "16"], "need --adapter"),
    (["--data-dir", "/no/such/data"], "/no/such/data"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_cli_errors(task, tmp_path, extra, message):
    out = run_cli(args(task, tmp_path) + extra)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    if "imdb" in extra:
        assert all(name in out.stderr for name in ("acl", "agnews", "restaurant"))  # the error lists the names


# Settings a resumed run may change (they do not change the optimisation); every other one must match the checkpoint.
FREE_ON_RESUME = {"checkpoint_every", "checkpoint_minutes", "compile", "data_dir", "dataset_name", "device",
                  "eval_batch_size", "log_every", "micro_batch_size", "model_name", "out", "resume", "save", "seeds",
                  "max_tokens", "dropout_masks",
                  "tensorboard", "merge_lora", "gradient_checkpointing"}


def test_every_setting_is_fixed_or_free_on_resume():
    """A new TrainConfig field must be classified: changing it on --resume is either refused or harmless."""
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    fixed = set(runs.FIXED_ON_RESUME)
    assert not fixed & FREE_ON_RESUME and fixed | FREE_ON_RESUME == fields, (fields - fixed - FREE_ON_RESUME)
    assert {"max_grad_norm", "weight_decay", "warmup_ratio", "precision", "max_length", "lr"} <= fixed


@pytest.mark.parametrize("flag,was,now", [("--max-grad-norm", "1.0", "0.5"), ("--weight-decay", "0.01", "0.1"),
                                          ("--warmup-ratio", "0.1", "0.2")])
def test_resume_refuses_another_optimisation_setting(task, tmp_path, flag, was, now):
    train.main(args(task, tmp_path, "--checkpoint-every", "3", epochs=2))  # finished: make it look interrupted
    run = seed_dir(tmp_path)
    torch.save({"config": json.loads((run / "config.json").read_text())}, run / "checkpoint.pt")
    (run / "result.json").unlink()
    with pytest.raises(ValueError, match=rf"{flag} {was} \(now {now}\)"):
        train.main(args(task, tmp_path, flag, now, "--resume", epochs=2))


def test_checkpoint_every_counts_optimizer_steps_across_epochs(task, tmp_path, monkeypatch):
    """301 examples in batches of 32: 10 steps an epoch. Every 4th global step plus each epoch's end (but the last)."""
    saved = []
    real = runs.save_checkpoint
    monkeypatch.setattr(runs, "save_checkpoint", lambda self: (saved.append(self.step), real(self))[1])
    train.main(args(task, tmp_path, "--checkpoint-every", "4", epochs=3))
    assert saved == [4, 8, 10, 12, 16, 20, 24, 28]


def test_each_rank_restores_its_own_rng_and_windows(task, tmp_path, monkeypatch):
    """A 2-rank checkpoint holds every rank's RNG state and logging windows; rank r must get ranks[r] back.
    (Two real ranks draw alike here, both seeded with the seed, so a 2-rank run could not tell.) A Run from an
    interrupted one-process run, told it is rank 1 of 2, loads a checkpoint whose two ranks differ."""
    run = interrupt_after_epoch_1(task, tmp_path, monkeypatch)
    ckpt = seed_dir(tmp_path) / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    ranks = []
    for r in range(2):
        torch.manual_seed(100 + r)
        ranks.append({**state["ranks"][0], "rng": torch.get_rng_state(),
                      "window": torch.full_like(state["ranks"][0]["window"], 10.0 + r),
                      "grad_norms": torch.full_like(state["ranks"][0]["grad_norms"], 20.0 + r)})
    torch.save({**state, "world_size": 2, "ranks": ranks}, ckpt)
    run.world = common.Dist(1, 2, torch.device("cpu"))
    runs.load_checkpoint(run)
    assert torch.equal(torch.get_rng_state(), ranks[1]["rng"]) and not torch.equal(ranks[0]["rng"], ranks[1]["rng"])
    assert torch.equal(run.window, ranks[1]["window"]) and torch.equal(run.grad_norms, ranks[1]["grad_norms"])


@pytest.mark.parametrize("total,warmup_ratio", [(10, 0.1), (7, 0.0), (25, 0.3), (1, 0.1)])
def test_lr_schedule_is_transformers_and_never_negative_past_its_end(total, warmup_ratio):
    """The schedule function itself, on every step and 20 steps beyond the last: transformers'
    get_linear_schedule_with_warmup is the oracle (it clamps at 0 past the end too). No run steps past the
    end today; a resumed or miscounted one must still never get a negative lr (a step uphill)."""
    from transformers import get_linear_schedule_with_warmup
    cfg = train.TrainConfig(dataset="acl", lr=1.0, warmup_ratio=warmup_ratio)
    _, ours = train.build_optimizer(torch.nn.Linear(2, 2), cfg, total)
    reference = get_linear_schedule_with_warmup(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0),
                                                math.ceil(warmup_ratio * total), total)
    factors = [ours.lr_lambdas[0](step) for step in range(total + 20)]
    assert factors == pytest.approx([reference.lr_lambdas[0](step) for step in range(total + 20)], abs=1e-12)
    assert min(factors) == 0.0 and factors[total:] == [0.0] * 20
