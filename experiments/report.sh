#!/usr/bin/env bash
# The experiment grid of the report in one command: full fine-tuning of every model on every dataset,
# adapters on one model, each over several seeds; then the summary table and the figures.
#
#   experiments/report.sh                                  # the report: 3 models x 3 datasets x 5 seeds + adapters
#   experiments/report.sh --torchrun --nproc_per_node=8    # the same on 8 GPUs (arguments go to torchrun)
#   experiments/report.sh --models minilm --adapter-model minilm \
#       --seeds "1 2 3" --data-dir ../shared/data --lr 1e-4 --adapter-lr 1e-3    # offline, the MiniLM package
#   experiments/report.sh --help                           # this text
#
# Options (all optional):
#   --models "m1 m2"       models for full fine-tuning: aliases, Hub ids, local directories; NAME=PATH names a
#                          local directory (default: roberta-base bert-base-uncased scibert, the report's)
#   --adapter-model M      model for the adapter rows, "" for none (default: roberta-base)
#   --datasets "d1 d2"     (default: restaurant acl agnews)
#   --seeds "1 2"          (default: 1 2 3 4 5)
#   --agnews-seeds "1"     seeds for agnews only (default: --seeds)
#   --lr X, --adapter-lr X, --epochs N   (default: the report's per-dataset values, as train.py)
#   --data-dir DIR         local datasets laid out like shared/data/ (default: the Hub)
#   --out DIR              (default: runs)
#   --torchrun ARGS...     run every job under torchrun with these arguments; must come last (or before --)
# Anything after "--" goes to every train.py call. Finished seeds are skipped and interrupted ones
# resumed, so rerunning the same command after a crash continues the grid.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
models="roberta-base bert-base-uncased scibert"; adapter_model="roberta-base"
datasets="restaurant acl agnews"; seeds="1 2 3 4 5"; agnews_seeds=""
out="runs"; common=(); full_extra=(); adapter_extra=(); launcher=(python)
while [ $# -gt 0 ]; do
  case "$1" in
    --models) models="$2"; shift 2 ;;
    --adapter-model) adapter_model="$2"; shift 2 ;;
    --datasets) datasets="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --agnews-seeds) agnews_seeds="$2"; shift 2 ;;
    --lr) full_extra+=(--lr "$2"); shift 2 ;;
    --adapter-lr) adapter_extra+=(--lr "$2"); shift 2 ;;
    --epochs) common+=(--epochs "$2"); shift 2 ;;
    --data-dir) common+=(--data-dir "$2"); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --torchrun) shift; launcher=(torchrun); while [ $# -gt 0 ] && [ "$1" != "--" ]; do launcher+=("$1"); shift; done ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --) shift; common+=("$@"); break ;;
    *) echo "report.sh: unknown option $1 (see $0 --help)" >&2; exit 2 ;;
  esac
done

run() {  # run <NAME=PATH or model> <dataset> <seeds> [train.py args...]
  local spec=$1 dataset=$2 run_seeds=$3; shift 3
  local name_args=()
  if [[ $spec == *=* ]]; then name_args=(--model-name "${spec%%=*}"); spec=${spec#*=}; fi
  echo "== $dataset | $spec ${*} | seeds $run_seeds"
  # shellcheck disable=SC2086
  "${launcher[@]}" "$here/train.py" --dataset "$dataset" --model "$spec" "${name_args[@]}" --seeds $run_seeds \
    --out "$out" --resume "${common[@]}" "$@"
}

start=$SECONDS
for dataset in $datasets; do
  s=$seeds; [ "$dataset" = agnews ] && [ -n "$agnews_seeds" ] && s=$agnews_seeds
  for m in $models; do run "$m" "$dataset" "$s" "${full_extra[@]}"; done
  [ -n "$adapter_model" ] && run "$adapter_model" "$dataset" "$s" --adapter "${adapter_extra[@]}"
done
echo "grid done in $(( (SECONDS - start) / 60 )) min"
python "$here/report.py" summarize "$out" | tee "$out/summary.md"
python "$here/report.py" plot "$out" --out "$out/figures"
