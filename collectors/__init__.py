"""Collectors: backends that stream requests, samplers, the event types and the metric definitions."""
