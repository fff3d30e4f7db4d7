"""Runner `evaluate`: an EvalSuite (as a dict) on a model folder -> metrics and per-sample rows.

Tasks run through lm-evaluation-harness as custom tasks over local JSONL; llmops adds the
metrics lm-eval does not compute (token F1, ROUGE-L, keyword recall, token perplexity,
LLM-as-judge, latency and throughput) and scores preference pairs itself
(runners.evaluate.preference). Never imports the controller.
"""
