"""``llmtop serve`` says who it is: its Server header, which ``auto`` reads to drive it as the
engine (not as an Ollama that would suggest ``ollama pull``)."""

from __future__ import annotations

import httpx
import pytest

from llmtop import __version__
from llmtop.collectors.backends import detect_api, make_backend
from llmtop.core.errors import SourceError


def test_every_response_names_the_engine_and_its_version(url):
    """The version comes from the installed distribution's metadata (``llmtop-monitor``): the
    same as the package's own."""
    for path in ("/api/version", "/v1/models", "/metrics"):
        server = httpx.get(url + path, timeout=10).headers.get("server", "")
        assert server == f"llmtop-engine/{__version__}", (path, server)
    assert httpx.get(url + "/api/version", timeout=10).json() == {"version": __version__}


async def test_auto_with_its_url_drives_it_as_the_engine(url):
    assert await detect_api(url) == "engine"
    async with make_backend("auto", url) as backend:
        assert (backend.name, backend.base_url) == ("engine", url)
        with pytest.raises(SourceError, match="no-such-model") as e:
            await backend.check("no-such-model")
        assert "ollama pull" not in str(e.value)  # that hint is for a real Ollama only
