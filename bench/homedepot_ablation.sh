#!/usr/bin/env bash
# Home Depot ablation on the 2-core CPU (issue 9): one row per lever added in turn, every row trained
# for the same number of SFT steps, evaluated on the same test and valid queries at beam 350.
#
#   today        the paper layout (4096-1024-512+opq2x256), title spans, small model from scratch
#   layout       + the layout chosen by `onesearch tune` (LAYOUT below)
#   distill      + cascade-distilled pseudo-queries (BM25 + dense RRF labels) in co-occurrence; the
#                  same run also scores every co-occurrence checkpoint on 100 valid queries, so it
#                  yields two rows: its LAST checkpoint (+ distillation) and its BEST-on-valid one
#                  (+ selection on valid: with 3 checkpoints and patience 3 it never stops early)
#
# Usage: bash bench/homedepot_ablation.sh [row ...]   (default: all rows, in order)
# Needs `onesearch encode --data $DATA --out runs/hd` first (its embeddings are reused by every row).
# Environment: DATA (../shared/data/homedepot), LAYOUT, ALIGN_STEPS, COOC_STEPS, EVAL_LIMIT, BEAM.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/homedepot}
BASE=${BASE:-runs/hd}
LAYOUT=${LAYOUT:-64-256-256+opq2x256}
ALIGN_STEPS=${ALIGN_STEPS:-600}
COOC_STEPS=${COOC_STEPS:-300}
EVAL_LIMIT=${EVAL_LIMIT:-300}
BEAM=${BEAM:-350}
ROWS=("$@")
[ ${#ROWS[@]} -gt 0 ] || ROWS=(today layout distill)

encoded_run() {  # encoded_run DIR LAYOUT: encode with LAYOUT, reusing the base run's cached embeddings
  local dir=$1 layout=$2
  if [ ! -f "$dir/sid_tokenizer/manifest.json" ] && [ ! -f "$dir/codes_report.json" ]; then
    mkdir -p "$dir" && cp -r "$BASE/embeddings" "$dir/"
    onesearch encode --data "$DATA" --out "$dir" --layout "$layout"
  fi
}

row_config() {  # row_config ROW: the train: section of the row, on stdout
  local distill=0 select=0
  case $1 in distill) distill=10000 select=100 ;; esac
  cat <<EOF
train:
  model: {size: small}
  tokenizer_vocab_size: 8000
  title_spans_per_item: 2
  distill: {pseudo_queries_per_item: $(( distill > 0 ? 1 : 0 )), max_pseudo_queries: $distill, top_k: 5}
  select_on_valid: {queries: $select, beam: 20, metric: ndcg@10, patience: 3, stages: [cooccurrence]}
  stages:
    alignment: {max_steps: $ALIGN_STEPS, batch_size: 64, learning_rate: 0.002, warmup_steps: 100, checkpoint_every: 500, log_every: 50}
    cooccurrence: {max_steps: $COOC_STEPS, batch_size: 64, learning_rate: 0.001, warmup_steps: 50, checkpoint_every: 100, log_every: 50}
EOF
}

for row in "${ROWS[@]}"; do
  case $row in
    today) layout=4096-1024-512+opq2x256 ;;
    layout | distill) layout=$LAYOUT ;;
    *) echo "unknown row $row (today, layout, distill)" >&2; exit 2 ;;
  esac
  encoded="runs/hd_enc_${layout//[^0-9a-z]/_}"
  [ "$layout" = 4096-1024-512+opq2x256 ] && encoded=$BASE
  encoded_run "$encoded" "$layout"
  run="runs/hd_ablation_$row"
  if [ ! -d "$run" ]; then
    mkdir -p "$run"
    for f in sid_tokenizer embeddings items.parquet queries.parquet lexicon.json codes_report.json manifest.json; do
      cp -r "$encoded/$f" "$run/"
    done
  fi
  row_config "$row" > "$run/train.yaml"
  started=$(date +%s)
  for stage in alignment cooccurrence; do  # Home Depot has no users: personalisation would repeat co-occurrence
    python -m onesearch_ray.train.local --run "$run" --data "$DATA" --config "$run/train.yaml" --stage "$stage" --device cpu
  done
  echo "$row: trained in $(( $(date +%s) - started )) s" | tee -a "$run/timing.txt"
  for split in test valid; do
    onesearch eval --run "$run" --track homedepot --data "$DATA" --split "$split" --beam "$BEAM" --limit "$EVAL_LIMIT"
  done
  if [ "$row" = distill ]; then  # the last checkpoint too, evaluated in a run of its own
    last="${run}_last"
    mkdir -p "$last" && cp -r "$run"/{sid_tokenizer,embeddings,items.parquet,queries.parquet} "$last/"
    python - "$run" "$last/model" <<'PY'
import sys
from pathlib import Path

from onesearch_ray.model import load_model, save_model
from onesearch_ray.train import checkpoints

run, out = Path(sys.argv[1]), Path(sys.argv[2])
model, tokenizer = load_model(run / "model/alignment")  # what co-occurrence started from
checkpoints.restore(checkpoints.latest(run / "sft/cooccurrence"), model)
save_model(model, tokenizer, out)
PY
    for split in test valid; do
      onesearch eval --run "$last" --model "$last/model" --track homedepot --data "$DATA" --split "$split" \
        --beam "$BEAM" --limit "$EVAL_LIMIT"
    done
  fi
done
