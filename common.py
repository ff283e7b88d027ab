"""What train.py and eval.py share: the distributed setup/cleanup pair and its few collectives, print0,
the precision choices and the one autocast context, the --max-length default, UsageError, and env_true
(hub.py and data.py read HF_HUB_OFFLINE through it). It imports nothing of ours.

Import rule, in layers where each file imports only from the layers before it: common | hub, stats |
tokenizer, data | model, own_data | adapter | memory, eval, runs, report | train. So nothing imports train,
the core never imports report, and there is no cycle (tests/test_imports.py).

Distributed follows nanochat's compute_init / compute_cleanup: torchrun is detected from the environment, and
the same script runs on one CPU with no launcher. Every collective here is a no-op on one process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # --precision of train.py and eval.py evaluate
MAX_LENGTH = 256  # --max-length default of train.py and eval.py evaluate: tokens per input


class UsageError(ValueError):
    """Bad input from the user (a flag, a file, a checkpoint): the CLIs print its one-line message and exit 2.
    A ValueError that is not a UsageError is a bug and keeps its traceback. A ValueError, so that callers
    who catch ValueError keep working."""


class Renamed(argparse.Action):
    """A flag's old name: using it is a one-line error that names the new one (no compatibility layer).
    `parser.add_argument("--seq-len", action=Renamed, new="--max-length")`; hidden from --help."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{option_string} is now {self.new}")


def run_cli(main, argv: list[str] | None, script: str) -> int:
    """`main(argv)` as a command (eval.py, report.py): a UsageError or a missing file is one line on stderr and
    exit code 2; any other error (a ValueError of ours or torch's included) is a bug and keeps its traceback.
    A reader that left (`report.py summarize runs/ | head`) is not an error."""
    try:
        main(argv)
    except (UsageError, FileNotFoundError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        sys.stdout = None  # nothing more to flush at exit (that would raise again)
        return 0
    return 0


def env_true(name: str) -> bool:
    """Whether the environment variable `name` is switched on ("1", "ON", "YES", "TRUE", any case), as
    huggingface_hub reads its own switches such as HF_HUB_OFFLINE."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    """This process's place in the job: its rank, how many ranks there are, and its device."""
    rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> Dist:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain `python train.py` is a world of one."""
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA GPU")
    if "RANK" not in os.environ:
        return Dist(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    # Imported before the group exists, on purpose. DDP imports this module, whose functions default to
    # `group=group.WORLD`: imported later, those defaults would hold the live group for good, so
    # destroy_process_group could not free it, and gloo's threads would run on into interpreter exit
    # (where a 2-rank test run here once aborted: "terminate called without an active exception").
    importlib.import_module("torch.distributed.nn.functional")
    # torchrun keeps one store for all its restarts (--max-restarts), and a restarted rank can read the address
    # a dead rank of the previous attempt left there ("Connection refused"; pytorch/pytorch#167288). The
    # ranks of each attempt meet under their own prefix.
    store, _, _ = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", device_id=dev, store=store, rank=rank, world_size=world_size)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    return Dist(rank, world_size, dev)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str | None = None):
    """`with distributed(device) as world:` sets up, and always tears down. After a body that finished, the
    ranks first wait for each other (rank 0 may still be writing files, and a rank tearing gloo down
    early can abort its peer); after an error they do not, as a barrier would hang the ranks that did
    not fail."""
    world = setup_distributed(device)
    try:
        yield world
        barrier()
    finally:
        cleanup_distributed()


def all_reduce_sum(t: torch.Tensor) -> None:
    """In place: the sum over ranks (a no-op on one process). eval.evaluate reduces through this."""
    if dist.is_initialized():
        dist.all_reduce(t)


def all_reduce_max(t: torch.Tensor) -> None:
    """In place: the maximum over ranks (a no-op on one process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank (any picklable object)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def print0(*args) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(*args, flush=True)


# ----------------------------------------------------------------------------- precision


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a --precision (one of PRECISIONS) on `device`; None means plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--precision bf16, but {torch.cuda.get_device_name(device)} has no bf16; use fp16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype: torch.dtype | None, device: torch.device):
    """The one autocast context, as a factory: `with autocast(dtype, device)():` (each `with` needs a fresh
    context). dtype None: no autocast, plain fp32."""
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device.type, dtype=dtype)
