#!/usr/bin/env bash
# The reward loop replayed on the synthetic world (issue 10, docs/benchmarks.md): simulated users
# search the SFT model and their clicks and orders go to a feedback log, as `/feedback` would record
# them; DPO trains on that log; then fresh traffic (another seed) compares SFT (the control),
# SFT + DPO and the cascade, paired.
#
#   bash bench/feedback_loop.sh RUN DATA [COLLECT_SEARCHES] [EVAL_SEARCHES]
#
# RUN: a trained run of DATA (a synthetic track) whose latest model is its SFT model, e.g. one
# trained by `onesearch train --config configs/quickstart.yaml` (docs/simulate.md). Writes RUN/sim_feedback.sqlite, RUN/model/dpo-feedback, RUN/simulation_collect and
# RUN/simulation_feedback_loop.
set -euo pipefail
run=$1
data=$2
collect=${3:-8000}
evaluate=${4:-4000}
log_file=$run/sim_feedback.sqlite

onesearch simulate --run "$run" --data "$data" --system sft --seed 1 --searches "$collect" \
    --feedback-log "$log_file" --out "$run/simulation_collect"
onesearch train --run "$run" --data "$data" --stage dpo --feedback "$log_file" --name dpo-feedback \
    --config configs/dpo_feedback.yaml
# SFT is the control here: the report's paired differences are then DPO vs SFT (and cascade vs SFT).
onesearch simulate --run "$run" --data "$data" --seed 0 --searches "$evaluate" --tune-rerank \
    --system sft --system dpo-feedback=model/dpo-feedback --system cascade --out "$run/simulation_feedback_loop"
