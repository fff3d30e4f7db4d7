"""The production loop: a Pipeline spec's run, from collected traffic to a reviewed pull request.

`llmops pipeline run` evaluates the trigger, pins the new collected rows into the Dataset on
a branch, retrains, regression-tests against what the deployment serves, and opens (or
updates) a pull request; deploying happens after merge, through the normal apply.
"""
