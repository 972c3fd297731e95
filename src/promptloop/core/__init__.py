"""Core services every layer uses: errors, atomic files, params.yaml, text helpers, the offline environment."""
