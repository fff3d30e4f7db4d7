"""Runner `serve`: an OpenAI-compatible model server on kserve's ModelServer app.

`python -m runners.serve config.json` (or $LLMOPS_SERVE_CONFIG) is the process boundary the
deploy targets use: local processes, the docker image and the KServe ServingRuntime. Never
imports the controller.
"""
