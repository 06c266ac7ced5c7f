"""The shared vocabulary: events, metric definitions, requests, errors, formatting; imports nothing of llmtop."""
