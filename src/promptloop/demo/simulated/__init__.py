"""Simulated models behind litellm's custom-provider API (`offline/...`).

This machine has no LLM service. These models stand in for one, deterministically under a seed:
`offline/support-bot` (the sample app's model), `offline/triage-bot` (the second sample app's),
`offline/judge` and `offline/optimizer`. Product code reaches them only through litellm, exactly like
any other model, and never special-cases them.
`params.yaml` registers the provider: `llm.providers.offline: promptloop.demo.simulated.provider:handler`.
"""
