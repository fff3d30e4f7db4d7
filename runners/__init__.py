"""Runners: one recipe per job (data, train, evaluate, serve, deploy); never import controller."""
