"""The offline demo: a scratch workspace, simulated traffic, and the simulated models."""
