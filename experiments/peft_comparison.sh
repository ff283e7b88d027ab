#!/usr/bin/env bash
# Full fine-tuning vs Houlsby adapters vs LoRA on one model, over seeds, for some datasets; then the summary
# table, the paired comparisons (p-values, intervals) and memory beside each row. One command, resumable:
# finished seeds (result.json) are skipped and interrupted ones resumed, so rerunning it continues.
#
#   experiments/peft_comparison.sh                                   # roberta-base, restaurant acl, seeds 1-5
#   experiments/peft_comparison.sh --model minilm --data-dir ../shared/data --seeds "1 2 3" \
#       --lr 1e-4 --peft-lr 1e-3 --out runs-peft -- --epochs 1 --max-length 64    # offline, MiniLM
#   experiments/peft_comparison.sh --help                            # this text
#
# Options (all optional):
#   --model M            alias, Hub id or local directory (default: roberta-base)
#   --datasets "d1 d2"   registered names (default: restaurant acl), or folders of your own data (train/test
#                        .jsonl/.csv/.tsv, as train.py --dataset DIR); --data-dir applies to every dataset, so
#                        run your own folders and registered names as two commands
#   --seeds "1 2"        (default: 1 2 3 4 5)
#   --lr X               full fine-tuning's lr (default: the report's, per dataset, as train.py)
#   --peft-lr X          adapters' and LoRA's lr (default: the report's adapter lr, as train.py)
#   --data-dir DIR       local datasets laid out like shared/data/ (default: the Hub)
#   --out DIR            (default: runs-peft)
# Anything after "--" goes to every train.py call (e.g. --epochs 1 --max-length 64 --gradient-checkpointing).
# Writes OUT/summary.md (report.py summarize), OUT/comparison.md (report.py compare of each pair, and
# experiments/peft_memory.py: memory.py's estimate and the measured peak per method) and OUT/figures/.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
model="roberta-base"; datasets="restaurant acl"; seeds="1 2 3 4 5"; out="runs-peft"
common=(); full_extra=(); peft_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --lr) full_extra+=(--lr "$2"); shift 2 ;;
    --peft-lr) peft_extra+=(--lr "$2"); shift 2 ;;
    --data-dir) common+=(--data-dir "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --) shift; common+=("$@"); break ;;
    [0-9]*) echo "peft_comparison.sh: unexpected $1: quote a list, e.g. --seeds \"1 2 3\" (see $0 --help)" >&2; exit 2 ;;
    *) echo "peft_comparison.sh: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done

start=$SECONDS
for dataset in $datasets; do
  for method in full adapter lora; do
    case $method in full) extra=("${full_extra[@]}") ;; adapter) extra=(--adapter "${peft_extra[@]}") ;;
                    lora) extra=(--lora "${peft_extra[@]}") ;; esac
    echo "== $dataset | $model | $method ${extra[*]} | seeds $seeds"
    # shellcheck disable=SC2086
    python "$here/train.py" --dataset "$dataset" --model "$model" --seeds $seeds --out "$out" --resume \
      "${common[@]}" "${extra[@]}"
  done
done
echo "runs done in $(( (SECONDS - start) / 60 )) min"
python "$here/report.py" summarize "$out" | tee "$out/summary.md"
python "$here/experiments/peft_memory.py" "$out" | tee "$out/comparison.md"
python "$here/report.py" plot "$out" --out "$out/figures"
