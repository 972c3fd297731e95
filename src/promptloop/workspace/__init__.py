"""The workspace: its folder and params, the writer lock, DVC data versions, MLflow runs and prompt registry, git."""
