#!/usr/bin/env bash
# The production loop on the bundled demo, after `make demo` has deployed support-assistant:
# customers' questions and ratings (examples/openai_app/support_traffic.py) are collected by
# the deployment, then `llmops pipeline run support-retrain` pins them into the dataset on a
# branch, retrains, regression-tests against the served version and writes the pull request.
# Then `llmops pipeline run support-prefs-retrain` turns the same traffic's corrections into
# preference pairs (the correction chosen over the answer served) and trains the champion
# with DPO (a LoRA adapter; specs/experiments/support-dpo.yaml), scored on held-out pairs.
# `make demo-loop` runs it.
set -euo pipefail

LLMOPS=${LLMOPS:-.venv/bin/llmops}
PYTHON=${PYTHON:-.venv/bin/python}
STATE=${LLMOPS_STATE_DIR:-.llmops}
COUNT=${DEMO_TRAFFIC:-220}

if [ -z "${LLMOPS_KEY_SUPPORT_ASSISTANT:-}" ]; then
  [ -s "$STATE/demo-api-key" ] || { echo "run 'make demo' first: it deploys support-assistant" >&2; exit 2; }
  LLMOPS_KEY_SUPPORT_ASSISTANT=$(cat "$STATE/demo-api-key")
  export LLMOPS_KEY_SUPPORT_ASSISTANT
fi
endpoint=$("$LLMOPS" status --json | "$PYTHON" -c '
import json, sys
rows = json.load(sys.stdin)["resources"]
print(next(r["outputs"]["endpoint"] for r in rows if r["address"] == "Deployment/support-assistant"))') || true
if [ -z "$endpoint" ]; then
  echo "support-assistant is not deployed; run 'make demo' first" >&2
  exit 2
fi

start=$(date +%s)
printf '\n== %s questions to %s, with ratings and corrections\n' "$COUNT" "$endpoint"
"$PYTHON" examples/openai_app/support_traffic.py --base-url "$endpoint" \
  --api-key "$LLMOPS_KEY_SUPPORT_ASSISTANT" --count "$COUNT"

printf '\n== the pipeline: collected rows -> dataset -> retrain -> regression test -> pull request\n'
"$LLMOPS" pipeline run support-retrain
"$LLMOPS" pipeline status support-retrain

report="$STATE/pipelines/support-retrain/report/report.md"
if [ -s "$report" ]; then
  printf '\n== the pull request text (%s)\n' "$report"
  head -n 40 "$report"
fi

printf '\n== preference training: corrections -> pairs -> DPO on the champion -> held-out pairs -> pull request\n'
"$LLMOPS" pipeline run support-prefs-retrain
"$LLMOPS" pipeline status support-prefs-retrain
report="$STATE/pipelines/support-prefs-retrain/report/report.md"
if [ -s "$report" ]; then
  printf '\n== the pull request text (%s)\n' "$report"
  head -n 40 "$report"
fi
printf '\nloop finished in %d s\n' "$(( $(date +%s) - start ))"
