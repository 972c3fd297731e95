"""promptloop: collect, analyze, improve and deploy the prompts of an LLM application."""

__version__ = "0.1.0"
