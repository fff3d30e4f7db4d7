"""Runners: one recipe per job (pull, prepare, train, evaluate, serve, deploy); no controller."""
