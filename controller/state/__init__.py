"""State: the lock file committed to git (later also the registry DB and the artifact store)."""
