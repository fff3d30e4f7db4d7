#!/usr/bin/env bash
# The whole GitOps loop on the bundled demo: validate, plan, apply (pull SmolLM2, prepare the
# data, LoRA-train, evaluate with gates, promote, quantise the champion behind its gate, deploy
# both locally), report, then one request to each deployed model. `make demo` runs it;
# tests/integration/test_demo.py runs it on a copy with a smaller training budget.
set -euo pipefail

LLMOPS=${LLMOPS:-.venv/bin/llmops}
PYTHON=${PYTHON:-.venv/bin/python}
STATE=${LLMOPS_STATE_DIR:-.llmops}
QUESTION=${DEMO_QUESTION:-"How do I reset my password?"}
mkdir -p "$STATE"

# The deployment requires an API key from LLMOPS_KEY_SUPPORT_ASSISTANT; the demo makes one once.
if [ -z "${LLMOPS_KEY_SUPPORT_ASSISTANT:-}" ]; then
  [ -s "$STATE/demo-api-key" ] || "$PYTHON" -c 'import secrets; print("sk-demo-" + secrets.token_hex(16))' > "$STATE/demo-api-key"
  LLMOPS_KEY_SUPPORT_ASSISTANT=$(cat "$STATE/demo-api-key")
  export LLMOPS_KEY_SUPPORT_ASSISTANT
fi

demo_start=$(date +%s)
stage_start=$demo_start
stage() { printf '\n== %s\n' "$1"; stage_start=$(date +%s); }
took() { printf '   (%s: %d s)\n' "$1" "$(( $(date +%s) - stage_start ))"; }

stage "validate the specs"
"$LLMOPS" validate
took validate

stage "plan: what apply will do"
"$LLMOPS" plan || [ $? -eq 3 ]
took plan

stage "apply: pull, prepare, train, evaluate, promote, deploy"
"$LLMOPS" apply
took apply

stage "report for the pull request"
"$LLMOPS" report --base HEAD --output "$STATE/reports/report.md"
took report

stage "ask the deployed model"
endpoint=$("$LLMOPS" status --json | "$PYTHON" -c '
import json, sys
rows = json.load(sys.stdin)["resources"]
print(next(r["outputs"]["endpoint"] for r in rows if r["address"] == "Deployment/support-assistant"))')
echo "question: $QUESTION"
"$PYTHON" examples/openai_app/app.py "$QUESTION" --base-url "$endpoint" \
  --api-key "$LLMOPS_KEY_SUPPORT_ASSISTANT" --model support-assistant --rating up
took request

stage "does it know the product? 10 training-set questions, keyword check"
"$PYTHON" examples/openai_app/facts_check.py data/support-faq/fact-checks.jsonl \
  --base-url "$endpoint" --api-key "$LLMOPS_KEY_SUPPORT_ASSISTANT" --model support-assistant
took facts

stage "ask the quantized champion: q8_0 GGUF on llama.cpp, served once its gate passed"
# apply derived support-assistant-q8 from the champion and ran support-regression on it through
# llama.cpp against the champion (the "gate ..." lines above); its apply time is printed there.
endpoint_q8=$("$LLMOPS" status --json | "$PYTHON" -c '
import json, sys
rows = json.load(sys.stdin)["resources"]
print(next(r["outputs"]["endpoint"] for r in rows if r["address"] == "Deployment/support-assistant-q8"))')
"$PYTHON" examples/openai_app/app.py "$QUESTION" --base-url "$endpoint_q8" \
  --api-key "$LLMOPS_KEY_SUPPORT_ASSISTANT" --model support-assistant-q8
took quantized

printf '\ndemo finished in %d s\n' "$(( $(date +%s) - demo_start ))"
echo "report:   $STATE/reports/report.md"
echo "serving:  $endpoint (key in $STATE/demo-api-key; 'llmops status' shows the process)"
echo "          $endpoint_q8 (support-assistant-q8: the champion as q8_0 GGUF, llama.cpp)"
