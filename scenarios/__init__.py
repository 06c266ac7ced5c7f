"""Scenarios: the TOML scenario model, its loader and the built-ins; the prompts they send."""
