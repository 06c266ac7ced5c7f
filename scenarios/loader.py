"""Loading scenarios: the built-ins by name, a user's TOML file by path, validated strictly.

Every problem is one ``UsageError`` line that names the file, the line and the key:
``my.toml:14: steps[2].rate: must be a number > 0, got -1``. Unknown keys are refused (with a
suggestion), so a typo never silently runs the default. A scenario file is data: prompts are
plain strings, nothing in it is evaluated, formatted or templated.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from llmtop.core.errors import UsageError
from llmtop.core.metrics import Slo
from llmtop.scenarios.model import (
    APIS,
    ARRIVALS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_REQUESTS,
    Arrival,
    Prompt,
    Scenario,
    Step,
)
from llmtop.scenarios.prompts import MAX_TOKENS, generated_text
from llmtop.scenarios.toml_lines import Path as KeyPath
from llmtop.scenarios.toml_lines import key_lines, line_of

MAX_FILE_BYTES = 4 << 20
MAX_CONCURRENCY = 4096

# --- one field's rule ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str  # int, number, str, bool
    check: Callable[[Any], bool] = lambda v: True
    wants: str = ""  # what the check wants, for the message


def _int(lo: int, hi: int | None = None) -> _Rule:
    wants = f">= {lo}" if hi is None else f"{lo}..{hi}"
    return _Rule("int", lambda v: v >= lo and (hi is None or v <= hi), wants)


def _num(lo: float, hi: float | None = None, *, open_lo: bool = False) -> _Rule:
    if open_lo:
        return _Rule("number", lambda v: v > lo and (hi is None or v <= hi), f"> {lo:g}")
    wants = f">= {lo:g}" if hi is None else f"{lo:g}..{hi:g}"
    return _Rule("number", lambda v: lo <= v and (hi is None or v <= hi), wants)


def _choice(options: tuple[str, ...]) -> _Rule:
    return _Rule("str", lambda v: v in options, "one of " + ", ".join(options))


_NONEMPTY = _Rule("str", lambda v: bool(v.strip()), "a non-empty string")

STEP_RULES: dict[str, _Rule] = {
    "name": _NONEMPTY,
    "requests": _int(1, 10_000_000),
    "duration_s": _num(0, 7 * 86400, open_lo=True),
    "concurrency": _int(1, MAX_CONCURRENCY),
    "rate": _num(0, 100_000, open_lo=True),
    "arrival": _choice(ARRIVALS),
    "max_tokens": _int(1, MAX_TOKENS),
    "temperature": _num(0, 2),
    "seed": _int(0, 2**63 - 1),
    "api": _choice(APIS),
    "system": _Rule("str"),
    "unique_prompts": _Rule("bool"),
}
"""Every key a ``[[steps]]`` table may have besides ``prompts``; ``[defaults]`` takes the same
keys but ``name``."""

TOP_RULES: dict[str, _Rule] = {
    "name": _NONEMPTY,
    "description": _Rule("str"),
    "warmup": _int(0, 10_000),
    "sample_hz": _num(0, 100, open_lo=True),
    "stop_below_goodput": _num(0, 1),
}
SLO_RULES: dict[str, _Rule] = {k: _num(0, open_lo=True) for k in ("ttft_ms", "tpot_ms", "e2e_ms")}
TABLES = ("defaults", "slo", "prompts", "steps")


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "bool":
        return type(v) is bool
    if kind == "int":
        return type(v) is int
    if kind == "number":
        return type(v) in (int, float) and v == v  # not bool, not NaN
    return type(v) is str


_KIND_WORDS = {
    "int": "an integer",
    "number": "a number",
    "str": "a string",
    "bool": "true or false",
}


# --- errors with positions ----------------------------------------------------------------------


class _Errors:
    """Builds the one-line errors of one file: ``source:line: dotted.key: problem``."""

    def __init__(self, source: str, lines: dict[KeyPath, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: KeyPath, problem: str) -> UsageError:
        line = line_of(self.lines, path)
        where = f"{self.source}:{line}" if line else self.source
        return UsageError(f"scenario {where}: {_dotted(path)}{': ' if path else ''}{problem}")


def _dotted(path: KeyPath) -> str:
    out = ""
    for p in path:
        out += f"[{p + 1}]" if isinstance(p, int) else (("." if out else "") + p)
    return out


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_keys(err: _Errors, path: KeyPath, table: dict[str, Any], allowed: list[str]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; allowed: {', '.join(allowed)}"
            raise err.fail((*path, key), f"unknown key{hint}")


def _check_values(
    err: _Errors, path: KeyPath, table: dict[str, Any], rules: dict[str, _Rule]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        rule = rules[key]
        if not _type_ok(rule.kind, value):
            raise err.fail((*path, key), f"must be {_KIND_WORDS[rule.kind]}, got {_show(value)}")
        if not rule.check(value):
            raise err.fail((*path, key), f"must be {rule.wants}, got {_show(value)}")
        out[key] = float(value) if rule.kind == "number" else value
    return out


def _table(err: _Errors, doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise err.fail((key,), f"must be a table ([{key}]), got {_show(value)}")
    return value


# --- prompts ------------------------------------------------------------------------------------


def _prompt(err: _Errors, path: KeyPath, label: str, value: Any) -> Prompt:
    if isinstance(value, str):
        if not value:
            raise err.fail(path, "a prompt must not be empty")
        return Prompt(label, value)
    if not isinstance(value, dict):
        raise err.fail(path, f"must be a string or {{ text = ... }} or {{ tokens = N }}, got {_show(value)}")  # fmt: skip
    _check_keys(err, path, value, ["label", "text", "tokens"])
    if ("text" in value) == ("tokens" in value):
        raise err.fail(path, "give exactly one of text and tokens")
    if "text" in value:
        v = _check_values(err, path, {"text": value["text"]}, {"text": _NONEMPTY})
        return Prompt(label, v["text"])
    v = _check_values(err, path, {"tokens": value["tokens"]}, {"tokens": _int(1, MAX_TOKENS)})
    return Prompt(label, generated_text(v["tokens"], label), tokens=v["tokens"])


def _named_prompts(err: _Errors, doc: dict[str, Any]) -> dict[str, Prompt]:
    out: dict[str, Prompt] = {}
    for label, value in _table(err, doc, "prompts").items():
        if isinstance(value, dict) and "label" in value:
            raise err.fail(("prompts", label, "label"), "the key is the label here")
        out[label] = _prompt(err, ("prompts", label), label, value)
    return out


def _step_prompts(
    err: _Errors, path: KeyPath, value: Any, named: dict[str, Prompt]
) -> tuple[Prompt, ...]:
    if not isinstance(value, list) or not value:
        raise err.fail(path, "must be a non-empty list of prompt labels or inline tables")
    out: list[Prompt] = []
    for i, item in enumerate(value):
        ipath = (*path, i)
        if isinstance(item, str):
            if item not in named:
                known = ", ".join(named) or "none defined"
                raise err.fail(ipath, f"no prompt labelled {item!r} in [prompts] ({known})")
            out.append(named[item])
        elif isinstance(item, dict):
            label = item.get("label")
            if not isinstance(label, str) or not label.strip():
                raise err.fail(ipath, 'an inline prompt needs a label = "..."')
            out.append(_prompt(err, ipath, label, item))
        else:
            raise err.fail(ipath, f"must be a prompt label or an inline table, got {_show(item)}")
    return tuple(out)


# --- steps --------------------------------------------------------------------------------------


def _step(
    err: _Errors, path: KeyPath, raw: dict[str, Any], defaults: dict[str, Any],
    named: dict[str, Prompt],
) -> Step:  # fmt: skip
    _check_keys(err, path, raw, [*STEP_RULES, "prompts"])
    values = {**defaults, **_check_values(err, path, {k: v for k, v in raw.items() if k != "prompts"}, STEP_RULES)}  # fmt: skip
    if "name" not in values:
        raise err.fail(path, "every step needs a name")
    if "prompts" in raw:
        prompts = _step_prompts(err, (*path, "prompts"), raw["prompts"], named)
    elif "prompts" in defaults:
        prompts = defaults["prompts"]
    elif named:
        prompts = tuple(named.values())
    else:
        prompts = (Prompt("short", DEFAULT_PROMPT),)
    rate = values.get("rate")
    arrival = values.get("arrival") or ("poisson" if rate is not None else "closed")
    where = (*path, "arrival") if "arrival" in raw else path
    if arrival == "closed" and rate is not None:
        raise err.fail(where, 'rate needs arrival = "constant" or "poisson", not "closed"')
    if arrival != "closed" and rate is None:
        raise err.fail(where, f"arrival = {arrival!r} needs a rate (requests per second)")
    requests = values.get("requests")
    duration = values.get("duration_s")
    if requests is None and duration is None:
        requests = DEFAULT_REQUESTS
    concurrency = values.get("concurrency")
    if arrival == "closed" and concurrency is None:
        concurrency = 1
    return Step(
        name=values["name"],
        prompts=prompts,
        requests=requests,
        duration_s=duration,
        concurrency=concurrency,
        rate=rate,
        arrival=cast(Arrival, arrival),  # one of ARRIVALS: _choice checked it
        # not Step.max_tokens: on a slotted dataclass that is the field's descriptor
        max_tokens=values.get("max_tokens", DEFAULT_MAX_TOKENS),
        temperature=values.get("temperature"),
        seed=values.get("seed"),
        api=values.get("api", "chat"),
        system=values.get("system"),
        unique_prompts=values.get("unique_prompts", False),
    )


def parse_scenario(text: str, source: str) -> Scenario:
    """A scenario from TOML text; ``source`` names it in errors (a path or ``builtin:NAME``).

    Raises:
        UsageError: invalid TOML, an unknown key, a wrong type or an out-of-range value.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"scenario {source}: not valid TOML: {e}") from None
    err = _Errors(source, key_lines(text))
    _check_keys(err, (), doc, [*TOP_RULES, *TABLES])
    top = _check_values(err, (), {k: v for k, v in doc.items() if k in TOP_RULES}, TOP_RULES)
    if "name" not in top:
        raise err.fail((), 'a scenario needs a name = "..."')
    slo_raw = _table(err, doc, "slo")
    _check_keys(err, ("slo",), slo_raw, list(SLO_RULES))
    slo_v = _check_values(err, ("slo",), slo_raw, SLO_RULES)
    slo = Slo(slo_v.get("ttft_ms"), slo_v.get("tpot_ms"), slo_v.get("e2e_ms"))
    if "stop_below_goodput" in top and not slo.is_set:
        raise err.fail(("stop_below_goodput",), "needs objectives in [slo] to judge goodput")
    named = _named_prompts(err, doc)
    defaults_raw = _table(err, doc, "defaults")
    allowed_defaults = [k for k in STEP_RULES if k != "name"] + ["prompts"]
    _check_keys(err, ("defaults",), defaults_raw, allowed_defaults)
    defaults = _check_values(
        err, ("defaults",), {k: v for k, v in defaults_raw.items() if k != "prompts"}, STEP_RULES
    )
    if "prompts" in defaults_raw:
        defaults["prompts"] = _step_prompts(
            err, ("defaults", "prompts"), defaults_raw["prompts"], named
        )
    raw_steps = doc.get("steps")
    if raw_steps is None:
        raise err.fail((), "a scenario needs at least one [[steps]] table")
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise err.fail(("steps",), "must be an array of tables ([[steps]])")
    if not raw_steps:
        raise err.fail(("steps",), "needs at least one step")
    steps = [_step(err, ("steps", i), raw, defaults, named) for i, raw in enumerate(raw_steps)]
    seen: set[str] = set()
    for i, s in enumerate(steps):
        if s.name in seen:
            raise err.fail(("steps", i, "name"), f"step name {s.name!r} is used twice")
        seen.add(s.name)
    return Scenario(
        name=top["name"],
        description=top.get("description", ""),
        steps=tuple(steps),
        warmup=top.get("warmup"),
        slo=slo,
        stop_below_goodput=top.get("stop_below_goodput"),
        sample_hz=top.get("sample_hz"),
        prompts=tuple(named.values()),
        source=source,
    )


# --- built-ins and files ------------------------------------------------------------------------


def _builtin_dir() -> Any:
    return resources.files("llmtop.scenarios") / "builtin"


def builtin_names() -> list[str]:
    """The built-in scenarios, in the order a user would try them."""
    order = ["basic", "prompt-length", "temperature", "concurrency", "soak", "rate-sweep"]
    found = sorted(p.name[:-5] for p in _builtin_dir().iterdir() if p.name.endswith(".toml"))
    return [n for n in order if n in found] + [n for n in found if n not in order]


def builtin_text(name: str) -> str:
    """The TOML source of a built-in (``llmtop scenarios NAME --toml`` prints it to copy)."""
    path = _builtin_dir() / f"{name}.toml"
    if not path.is_file():
        raise UsageError(f"no built-in scenario {name!r}; built-ins: {', '.join(builtin_names())}")
    return path.read_text(encoding="utf-8")


def load_scenario(ref: str) -> Scenario:
    """A built-in by name, or a TOML file by path (anything ending ``.toml`` or naming a file).

    Raises:
        UsageError: no such scenario or file, or a file that does not validate.
    """
    looks_like_path = ref.endswith(".toml") or "/" in ref or Path(ref).is_file()
    if not looks_like_path:
        if ref not in builtin_names():
            raise UsageError(
                f"unknown scenario {ref!r}: built-ins are {', '.join(builtin_names())}, "
                "or give a FILE.toml"
            )
        return parse_scenario(builtin_text(ref), f"builtin:{ref}")
    path = Path(ref).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UsageError(f"scenario {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"scenario file {path} does not exist") from None
    except UnicodeDecodeError:
        raise UsageError(f"scenario {path}: not UTF-8 text") from None
    except OSError as e:
        raise UsageError(f"cannot read scenario {path}: {e.strerror}") from None
    return parse_scenario(text, str(path))
