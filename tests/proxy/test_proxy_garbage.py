"""A relayed generation leaves nothing for the cycle collector: its objects go when it ends,
by reference counting, instead of piling up for a collector pass that stops the relay for
milliseconds (a proxy in this process, a fake server in a thread)."""

from __future__ import annotations

import asyncio
import gc
import tempfile

import aiohttp
from support.servers import Behavior, FakeServer

from llmtop.collectors.proxy_timing import AnswerTimer, ObservedState
from llmtop.recorder.proxy_run import ProxyPlan, ProxyRun, ProxyStarted
from llmtop.recorder.proxy_upstream import Exchange

PROXY_TYPES = (AnswerTimer, Exchange, ObservedState)


async def _relay_some(url: str, n: int) -> list[object]:
    """Run ``n`` generations through an in-process proxy; the proxy objects that only the
    cycle collector could free."""
    stop = asyncio.Event()
    started: asyncio.Future[ProxyStarted] = asyncio.get_running_loop().create_future()
    plan = ProxyPlan(upstream=url, backend="ollama", listen="127.0.0.1:0", sample_gpu=False,
                     sample_server=False, sample_hz=0.2)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        run = ProxyRun(plan, f"{tmp}/llmtop.db")
        task = asyncio.create_task(run.run(stop, started.set_result))
        proxy = (await started).url
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with aiohttp.ClientSession() as session:
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(n):
                    async with session.post(proxy + "/api/chat", json=body) as r:
                        assert r.status == 200
                        await r.read()
                gc.collect()
                left = [o for o in gc.garbage if isinstance(o, PROXY_TYPES)]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        stop.set()
        await task
    return left


def test_a_relayed_generation_leaves_no_cycles():
    with FakeServer({"m": Behavior(tokens=8, itl_ms=1)}) as fake:
        assert asyncio.run(_relay_some(fake.url, 10)) == []
