"""The loop: collect -> analyze -> improve -> deploy as one turn."""
