"""Helpers shared by the test suite: event factories, fake servers, CLI runners."""
