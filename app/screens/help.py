"""The ``?`` screen: the keys, and what every number on the dashboard means."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# llmtop

**htop for LLM inference**: every request measured token by token on the wire, beside the
machine's CPU, memory and GPUs and what the server says about itself.

## Keys

| key | does |
|---|---|
| `l` | launch a run (backend, model, scenario, load) |
| `s` | stop the run: nothing new is sent, requests in flight end as *cancelled* |
| `r` | the runs recorded in the database: `Enter` opens one, `Space` marks two, `c` compares |
| `t` | next theme (dark, light, high contrast, yours); `ctrl+p` → *Theme* lists all |
| `c` | clear the live view (the database keeps everything) |
| `ctrl+p` | the command palette: every action by name |
| `?` | this help · `Esc` back · `q` quit (a run in progress is stopped and kept) |

The mouse works: click a panel, scroll a table, click a button.

## The numbers

For one request: **t0** the request written, **t1** the first chunk with content, **tN** the
last one, **tend** the final chunk, **n** the output tokens (the server's count when it gives
one, else counted on the wire).

| | |
|---|---|
| **TTFT** | t1 − t0: time to first token, what a user waits before text appears (prefill) |
| **E2E** | tend − t0: the whole request |
| **ITL** | gaps between content chunks; a chunk of k tokens counts as k gaps of gap/k |
| **TPOT** | (tN − t1) / (n − 1): time per output token after the first (decode) |
| **decode tok/s** | (n − 1) / (tN − t1), per request |
| **req/s, tok/s** | successful requests and output tokens over the run's span (first start to last end) |
| **goodput** | share of requests that succeeded *and* met every SLO of the scenario |

Warm-up requests are shown but left out of every statistic. Percentiles interpolate linearly
between ranks (numpy's default). Sparklines show the requests of the last five minutes, newest
on the right, bars drawn from zero; histograms show the newest 5,000 requests (E2E) and
5,000 token gaps (ITL).

The dashboard measures exactly as `llmtop record` does: the same code on its own thread and
event loop, writing to the same database, so drawing never delays a timestamp.
"""


class HelpScreen(ModalScreen[None]):
    """Keys and definitions; any of Esc, q or ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "dismiss", "Close", key_display="esc"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="panel"):
            yield Markdown(HELP)

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "help"
        self.query_one("#help").border_subtitle = "esc close"
