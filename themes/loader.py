"""Theme files (TOML) turned into Textual themes, and the theme the user chose last time.

Textual has no loader for theme files, but a theme is a plain dataclass (``textual.theme.Theme``),
so a TOML file holding its fields becomes one with ``Theme(**data)``. The built-in themes lie
beside this module; users add their own as ``*.toml`` in ``<user config dir>/llmtop/themes/``
(a user theme with a built-in's name replaces it). The choice is remembered in
``<user config dir>/llmtop/settings.json``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import platformdirs
from textual.color import ColorParseError
from textual.theme import Theme

from llmtop.core.errors import UsageError

THEMES_DIR = Path(__file__).resolve().parent
STYLESHEET = THEMES_DIR / "base.tcss"
DEFAULT_THEME = "llmtop-dark"
ENV_CONFIG_DIR = "LLMTOP_CONFIG_DIR"
SETTINGS_FILE = "settings.json"
_THEME_KEYS = frozenset(f.name for f in fields(Theme))


def config_dir() -> Path:
    """``$LLMTOP_CONFIG_DIR``, else llmtop's folder in the user config dir (platformdirs)."""
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("llmtop", appauthor=False))


def theme_from_file(path: Path) -> Theme:
    """One theme from a TOML file of ``Theme`` fields (plus a ``[variables]`` table).

    Raises:
        UsageError: the file cannot be read, is not TOML, has an unknown key, or a bad colour.
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read theme {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"theme {path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - _THEME_KEYS)
    if unknown:
        raise UsageError(
            f"theme {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_THEME_KEYS))})"
        )
    data.setdefault("name", path.stem)
    if "primary" not in data:
        raise UsageError(f"theme {path}: 'primary' (a colour) is required")
    try:
        theme = Theme(**data)
        theme.to_color_system().generate()  # parse every colour now, not when it is switched to
    except (ColorParseError, TypeError, ValueError) as e:
        raise UsageError(f"theme {path}: {e}") from None
    return theme


BUILTIN_ORDER = ("llmtop-dark", "llmtop-light", "llmtop-high-contrast")
"""The order the theme key cycles through: the default, its light twin, then high contrast."""


def builtin_theme_files() -> list[Path]:
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    return sorted(THEMES_DIR.glob("*.toml"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))


def user_theme_dir(base: Path | None = None) -> Path:
    return (base or config_dir()) / "themes"


def load_themes(base: Path | None = None) -> tuple[list[Theme], list[str]]:
    """The built-in themes, then the user's; returns ``(themes, problems)``.

    A broken user theme is skipped and reported in ``problems`` (one line each) so that the
    dashboard still opens; a broken built-in is a bug and raises.
    """
    themes = {t.name: t for t in (theme_from_file(p) for p in builtin_theme_files())}
    problems: list[str] = []
    user_dir = user_theme_dir(base)
    if user_dir.is_dir():
        for path in sorted(user_dir.glob("*.toml")):
            try:
                theme = theme_from_file(path)
            except UsageError as e:
                problems.append(str(e))
                continue
            themes[theme.name] = theme
    return list(themes.values()), problems


def remembered_theme(base: Path | None = None) -> str | None:
    """The theme chosen last time, or ``None`` (no settings yet, or unreadable)."""
    try:
        data = json.loads((base or config_dir()).joinpath(SETTINGS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    name = data.get("theme") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def remember_theme(name: str, base: Path | None = None) -> str | None:
    """Keep ``name`` for the next session; returns why it could not, or ``None``.

    Written to a temporary file and renamed over the old one, so a crash never leaves half a
    settings file; other settings in the file are kept.
    """
    path = (base or config_dir()) / SETTINGS_FILE
    try:
        data = json.loads(path.read_text("utf-8")) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data["theme"] = name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", "utf-8")
        tmp.replace(path)
    except OSError as e:
        return f"cannot remember the theme in {path}: {e.strerror}"
    return None
