"""The in-repo inference engine: a from-scratch PyTorch Llama, run as its own process (llmtop serve)."""
