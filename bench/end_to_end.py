"""End to end: fine-tune one epoch with train.py and with transformers' Trainer, side by side.

Every (dataset, seed, variant) is its own child process, run one after the other (variants
interleaved within each seed, so a change in machine load hits all of them alike):

  ours                  python bench/train_timed.py <train.py flags>   (= python train.py, see there)
  ours-bf16             the same + --precision bf16 (CPU autocast)
  trainer-dynamic       python bench/hf_trainer.py --padding dynamic     (DataCollatorWithPadding)
  trainer-pad128        python bench/hf_trainer.py --padding max_length  (run_glue.py's default)
  trainer-grouped       (extra) dynamic padding + train_sampling_strategy="group_by_length"
  trainer-dynamic-bf16  (extra) dynamic padding + TrainingArguments(bf16=True)
  ours-random           (extra) train.py --random-batches: no length grouping, like trainer-dynamic
  trainer-grouped-bf16  (extra) the Trainer's best CPU setting: length-grouped + bf16 autocast

All get the same model (all-MiniLM-L6-v2), examples (read through data.load_split), max length,
lr, global batch, epochs, warm-up, weight decay, gradient clipping and seed. What each number covers:

  train_s      the training epoch(s) only: ours = train.py's wall_time_s minus its evaluations;
               Trainer = trainer.train(). Neither includes imports, tokenization or model loading.
  eval_s       one evaluation of the test split: ours = eval.evaluate as train.py calls it (batch
               --eval-batch-size, length-sorted); Trainer = trainer.predict (same batch size).
  train+eval   train_s + eval_s: the headline time, and what the speed-ups are computed from.
  process_s    the whole child process as the parent sees it: Python start-up, imports, reading and
               tokenizing the data, loading the model, training, evaluation, writing results.
  peak RSS     the child's ru_maxrss from os.wait4: its own high-water mark, one run per process.

Times are medians over seeds, ratios are ratios of medians, accuracy and macro-F1 are mean +- std.
Raw records go to --out as JSON lines; `--tabulate FILE` prints the tables again from such a file.

    python bench/end_to_end.py --data-dir ../shared/data --datasets restaurant acl --seeds 1 2 3
    python bench/end_to_end.py --data-dir ../shared/data --limit 64 --seeds 1      # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchlib import ROOT, machine, mean_std, minilm_dir, table  # first: it puts the project on sys.path

# isort: split
import data

BENCH = Path(__file__).resolve().parent
MAIN_VARIANTS = ["ours", "ours-bf16", "trainer-dynamic", "trainer-pad128"]
EXTRA_VARIANTS = ["trainer-grouped", "trainer-dynamic-bf16", "ours-random", "trainer-grouped-bf16"]


def command(variant: str, dataset: str, seed: int, args, data_dir: str, out_dir: str) -> list[str]:
    """The child's command line. Shared hyper-parameters come from the same `args` for every variant."""
    shared = ["--dataset", dataset, "--model", args.model, "--data-dir", data_dir, "--epochs", str(args.epochs),
              "--lr", str(args.lr), "--batch-size", str(args.batch_size), "--warmup-ratio", str(args.warmup_ratio),
              "--weight-decay", str(args.weight_decay), "--max-length", str(args.max_length),
              "--eval-batch-size", str(args.eval_batch_size)]
    if variant.startswith("ours"):
        precision = "bf16" if variant == "ours-bf16" else "fp32"
        return [sys.executable, str(BENCH / "train_timed.py"), *shared, "--seeds", str(seed), "--model-name", "minilm",
                "--max-grad-norm", "1.0", "--precision", precision, "--device", "cpu", "--checkpoint-every", "0",
                "--out", out_dir, *(["--random-batches"] if variant == "ours-random" else [])]
    hf = {"trainer-dynamic": ["--padding", "dynamic"],
          "trainer-pad128": ["--padding", "max_length"],
          "trainer-grouped": ["--padding", "dynamic", "--sampling", "group_by_length"],
          "trainer-dynamic-bf16": ["--padding", "dynamic", "--precision", "bf16"],
          "trainer-grouped-bf16": ["--padding", "dynamic", "--sampling", "group_by_length", "--precision", "bf16"]}[variant]
    return [sys.executable, str(BENCH / "hf_trainer.py"), *shared, "--seed", str(seed), *hf]


def run_child(cmd: list[str], env: dict, log_path: Path) -> dict:
    """Run one child to the end; its wall time, peak RSS (ru_maxrss of this child alone) and result line."""
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # unlike RUSAGE_CHILDREN: this child's rusage only
        proc.returncode = os.waitstatus_to_exitcode(status)
    process_s = time.perf_counter() - t
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(log_path.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)}\nexited with {proc.returncode}; log {log_path}:\n{tail}")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    return {**result, "process_s": process_s, "peak_rss_bytes": usage.ru_maxrss * 1024}  # Linux: KiB


# ----------------------------------------------------------------------------- --limit: a reduced data copy


def _cut_semeval(src: Path, dst: Path, n: int) -> None:
    """Keep sentences until n aspect terms (conflict ones not counted, as data.py drops them)."""
    tree = ET.parse(src)
    root, kept = tree.getroot(), 0
    for sentence in list(root.iter("sentence")):
        terms = sentence.find("aspectTerms")
        for term in list(terms) if terms is not None else []:
            if kept >= n:
                terms.remove(term)
            elif term.get("polarity") != "conflict":
                kept += 1
        if kept >= n and (terms is None or len(terms) == 0):
            root.remove(sentence)
    tree.write(dst, encoding="utf-8", xml_declaration=True)


def _cut_lines(src: Path, dst: Path, n: int) -> None:
    """First n lines: a jsonl file (acl) or the headerless AG News csv (no multi-line rows in it)."""
    with open(src, encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f)]
    dst.write_text("".join(lines), encoding="utf-8")


def reduced_data_dir(src: str, dst: Path, datasets: list[str], n: int) -> str:
    """A copy of the data folder (same layout) holding the first n examples of every split of `datasets`."""
    for name in datasets:
        for rel in set(data.DATASETS[name].files.values()):
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (_cut_semeval if rel.endswith(".xml") else _cut_lines)(Path(src) / rel, target, n)
    return str(dst)


# ----------------------------------------------------------------------------- tables


def _speedup(med: dict, v: str, base: str) -> str:
    """How many times faster than `base` on train + test-eval time (median over seeds)."""
    return f"{med[base]['total_s'] / med[v]['total_s']:.2f}x" if base in med else "-"


def _delta(quality: dict, v: str, base: str) -> str:
    """Mean macro-F1 of v minus that of `base`, in points."""
    return f"{quality[v]['f1_macro'][0] - quality[base]['f1_macro'][0]:+.2f}" if base in quality else "-"


def _pm(mean_and_std: tuple[float, float]) -> str:
    return f"{mean_and_std[0]:.2f} ± {mean_and_std[1]:.2f}"


def read_records(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tabulate(records: list[dict]) -> str:
    out = []
    first = records[0]
    out.append(f"settings: lr {first['lr']}, global batch {first['batch_size']}, epochs {first['epochs']}, "
               f"warm-up ratio {first['warmup_ratio']}, weight decay {first['weight_decay']}, max length "
               f"{first['max_length']}, eval batch {first['eval_batch_size']}, limit {first['limit']}, "
               f"OMP_NUM_THREADS {first['threads'] or 'unset'} (torch threads in the children: "
               f"{', '.join(sorted({str(r.get('torch_threads', '?')) for r in records}))})")
    out.append(f"machine: {json.dumps(first['machine'])}\n")
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        rs = [r for r in records if r["dataset"] == dataset]
        variants = list(dict.fromkeys(r["variant"] for r in rs))
        by = {v: [r for r in rs if r["variant"] == v] for v in variants}
        med = {v: {k: statistics.median(r[k] for r in by[v]) for k in ("train_s", "eval_s", "process_s",
                                                                       "peak_rss_bytes")} for v in variants}
        for v in variants:
            med[v]["total_s"] = med[v]["train_s"] + med[v]["eval_s"]
        n_train, n_test = rs[0]["train_examples"], rs[0]["test_examples"]
        seeds = sorted({r["seed"] for r in rs})
        out.append(f"### {dataset}: {n_train} training examples per run, {n_test} test examples, "
                   f"seeds {' '.join(map(str, seeds))}\n")

        rows = [[v, f"{med[v]['train_s']:.1f}", f"{n_train / med[v]['train_s']:.1f}", f"{med[v]['eval_s']:.2f}",
                 f"{n_test / med[v]['eval_s']:.1f}", f"{med[v]['total_s']:.1f}", _speedup(med, v, "trainer-dynamic"),
                 _speedup(med, v, "trainer-pad128"), f"{med[v]['process_s']:.1f}",
                 f"{med[v]['peak_rss_bytes'] / 2**20:.0f}"]
                for v in variants]
        out.append(table(["variant", "train (s)", "train ex/s", "test eval (s)", "eval ex/s", "train+eval (s)",
                          "speed-up vs trainer-dynamic", "vs trainer-pad128", "process (s)", "peak RSS (MiB)"], rows))
        out.append("")

        quality = {v: {k: mean_std([100 * r[k] for r in by[v]]) for k in ("accuracy", "f1_macro")} for v in variants}

        rows = [[v, len(by[v]), _pm(quality[v]["accuracy"]), _pm(quality[v]["f1_macro"]),
                 _delta(quality, v, "trainer-dynamic"), _delta(quality, v, "trainer-pad128")] for v in variants]
        out.append(table(["variant", "seeds", "accuracy (%)", "macro-F1 (%)", "macro-F1 - trainer-dynamic (points)",
                          "macro-F1 - trainer-pad128 (points)"], rows))
        out.append("")
        optimizers = {v: by[v][0].get("optimizer") for v in variants}
        out.append("optimizers: " + "; ".join(f"{v}: {o}" for v, o in optimizers.items()) + "\n")
        out.append(goals(med, quality))
    return "\n".join(out)


def goals(med: dict, quality: dict) -> str:
    """The project's speed targets (bench/RESULTS.md, Summary), checked against this dataset's numbers
    (speed-ups on train+eval time)."""
    lines = []

    def check(v, base, target):
        if v not in med or base not in med:
            return
        s = med[base]["total_s"] / med[v]["total_s"]
        d = quality[v]["f1_macro"][0] - quality[base]["f1_macro"][0]
        ok = s >= target and d >= -1.0
        proc = med[base]["process_s"] / med[v]["process_s"]
        lines.append(f"- {v} vs {base}: {s:.2f}x (goal >= {target}x; whole processes {proc:.2f}x), macro-F1 {d:+.2f} points (goal >= -1): "
                     f"{'met' if ok else 'MISSED'}")

    check("ours", "trainer-dynamic", 2)
    check("ours", "trainer-pad128", 4)
    check("ours-bf16", "trainer-dynamic", 4)
    check("ours-bf16", "trainer-grouped-bf16", 1.3)  # issue 25: the Trainer's best CPU setting
    return "goals:\n" + "\n".join(lines) + "\n" if lines else ""


# ----------------------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="datasets in the layout of shared/data")
    p.add_argument("--model", default=None, help="checkpoint dir (default: all-MiniLM-L6-v2 from its package)")
    p.add_argument("--datasets", nargs="+", default=["restaurant", "acl"], choices=sorted(data.DATASETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--variants", nargs="+", default=MAIN_VARIANTS, choices=MAIN_VARIANTS + EXTRA_VARIANTS)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every child (default: unset)")
    p.add_argument("--limit", type=int, default=None, help="smoke tests: only the first N examples of each split")
    p.add_argument("--out", default=str(BENCH / "out" / "end_to_end.jsonl"), help="raw records, JSON lines")
    p.add_argument("--resume", action="store_true", help="keep --out's records and skip the runs they hold")
    p.add_argument("--tabulate", metavar="FILE", help="only print the tables of an existing records file")
    args = p.parse_args()

    if args.tabulate:
        print(tabulate(read_records(args.tabulate)))
        return
    if not args.data_dir:
        p.error("--data-dir is required (e.g. ../shared/data)")
    args.model = args.model or minilm_dir()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = read_records(out) if args.resume and out.exists() else []
    done = {(r["dataset"], r["seed"], r["variant"]) for r in old}
    if not args.resume:
        out.write_text("")
    logs = out.parent / "logs"
    logs.mkdir(exist_ok=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # everything is local; never wait on the network
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    info = machine()
    settings = {k: getattr(args, k) for k in ("epochs", "lr", "batch_size", "eval_batch_size", "warmup_ratio",
                                              "weight_decay", "max_length", "threads", "limit")}
    records = list(old)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        data_dir = args.data_dir
        if args.limit:
            data_dir = reduced_data_dir(args.data_dir, Path(tmp) / "data", args.datasets, args.limit)
        for dataset in args.datasets:
            for seed in args.seeds:
                for variant in args.variants:
                    if (dataset, seed, variant) in done:
                        continue
                    run_out = Path(tmp) / f"runs-{dataset}-{seed}-{variant}"
                    cmd = command(variant, dataset, seed, args, data_dir, str(run_out))
                    print(f"{dataset} seed {seed} {variant}: ", end="", flush=True)
                    load_before = os.getloadavg()[0]  # 1-minute load average: was the machine quiet?
                    r = run_child(cmd, env, logs / f"{dataset}-seed{seed}-{variant}.log")
                    r["load_before"], r["load_after"] = load_before, os.getloadavg()[0]
                    record = {"dataset": dataset, "seed": seed, "variant": variant, **r, **settings,
                              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": info,
                              "command": " ".join(cmd).replace(tmp, "$TMP")}
                    records.append(record)
                    with open(out, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(f"train {r['train_s']:.1f} s, test eval {r['eval_s']:.2f} s, process {r['process_s']:.1f} s, "
                          f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB, acc {100 * r['accuracy']:.2f}, "
                          f"macro-F1 {100 * r['f1_macro']:.2f}, load {r['load_before']:.1f} -> {r['load_after']:.1f}", flush=True)
    print()
    print(tabulate(records))


if __name__ == "__main__":
    main()
