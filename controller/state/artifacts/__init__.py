"""State, artifact store: where blobs and result folders live beyond this machine (local or S3)."""
