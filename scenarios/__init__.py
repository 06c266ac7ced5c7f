"""Scenarios: the TOML scenario model, the built-ins, and the runner that turns them into requests."""
