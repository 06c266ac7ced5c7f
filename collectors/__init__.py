"""Collectors: the backends that stream one request each (Ollama, OpenAI-compatible, the engine) and the samplers (system, GPU, server)."""
