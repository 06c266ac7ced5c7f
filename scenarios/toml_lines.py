"""Where each key and array element of a TOML document sits: line numbers for error messages.

``tomllib`` parses without positions, so a validation error could only name a key. This module
walks the text a second time (after ``tomllib`` has accepted it, so the syntax is known to be
valid) and records the line of every key, table header and array element under its path:
``("steps", 2, "prompts", 0, "tokens") -> 31``. It reads tokens only; it never builds values.
"""

from __future__ import annotations

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

Path = tuple[str | int, ...]


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.aot: dict[Path, int] = {}  # array-of-tables path -> elements seen so far

    # --- low level -------------------------------------------------------------------------

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.i < len(self.s):
                if self.s[self.i] == "\n":
                    self.line += 1
                self.i += 1

    def skip_space(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def string(self) -> str:
        """Consume a string of any of the four kinds; return its raw content (for keys)."""
        q = self.peek()
        if self.s.startswith(q * 3, self.i):
            self.advance(3)
            start = self.i
            while self.i < len(self.s):
                if q == '"' and self.peek() == "\\":
                    self.advance(2)
                    continue
                if self.s.startswith(q * 3, self.i):
                    # up to two quotes may end a multi-line string: """a""""" is legal
                    while self.peek(3) == q:
                        self.advance()
                    out = self.s[start : self.i]
                    self.advance(3)
                    return out
                self.advance()
            return self.s[start:]
        self.advance()
        start = self.i
        while self.i < len(self.s) and self.peek() != q:
            if q == '"' and self.peek() == "\\":
                self.advance()
            self.advance()
        out = self.s[start : self.i]
        self.advance()
        return out

    def key(self) -> list[str]:
        """A dotted key: bare or quoted parts separated by dots."""
        parts: list[str] = []
        while True:
            self.skip_space(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.i
                while self.peek() in _BARE and self.peek():
                    self.i += 1
                parts.append(self.s[start : self.i])
            self.skip_space(newlines=False)
            if self.peek() == ".":
                self.advance()
                continue
            return parts

    # --- structure -------------------------------------------------------------------------

    def resolve(self, keys: list[str]) -> Path:
        """Insert the current index after every prefix that names an array of tables."""
        path: Path = ()
        for k in keys:
            path = (*path, k)
            if path in self.aot:
                path = (*path, self.aot[path] - 1)
        return path

    def _mark(self, path: Path, n_keys: int, line: int) -> None:
        """Record a dotted key's line, and the line for each table it implicitly opens."""
        for k in range(len(path) - n_keys + 1, len(path)):
            self.lines.setdefault(path[:k], line)
        self.lines[path] = line

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_space(newlines=True)
            if self.i >= len(self.s):
                return self.lines
            line = self.line
            if self.peek() == "[":
                if self.peek(1) == "[":
                    self.advance(2)
                    keys = self.key()
                    base = self.resolve(keys[:-1])
                    arr = (*base, keys[-1])
                    self.aot[arr] = self.aot.get(arr, 0) + 1
                    self.lines.setdefault(arr, line)
                    table = (*arr, self.aot[arr] - 1)
                    self.advance(2)
                else:
                    self.advance()
                    keys = self.key()
                    table = self.resolve(keys)
                    self.advance()
                self.lines[table] = line
            else:
                keys = self.key()
                path = (*table, *keys)
                self._mark(path, len(keys), line)
                self.skip_space(newlines=False)
                self.advance()  # '='
                self.value(path)
            self.skip_space(newlines=False)
            # Whatever is left on the line is a comment or nothing (tomllib accepted it).
            while self.i < len(self.s) and self.peek() != "\n":
                self.advance()

    def value(self, path: Path) -> None:
        self.skip_space(newlines=False)
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.advance()
            idx = 0
            while True:
                self.skip_space(newlines=True)
                if self.peek() == "]":
                    self.advance()
                    return
                self.lines[(*path, idx)] = self.line
                self.value((*path, idx))
                idx += 1
                self.skip_space(newlines=True)
                if self.peek() == ",":
                    self.advance()
        elif c == "{":
            self.advance()
            while True:
                self.skip_space(newlines=True)
                if self.peek() == "}":
                    self.advance()
                    return
                line = self.line
                keys = self.key()
                sub = (*path, *keys)
                self._mark(sub, len(keys), line)
                self.skip_space(newlines=False)
                self.advance()  # '='
                self.value(sub)
                self.skip_space(newlines=True)
                if self.peek() == ",":
                    self.advance()
        else:
            # number, boolean, date: runs to a delimiter
            while self.i < len(self.s) and self.peek() not in ",]}\n#":
                self.advance()


def key_lines(text: str) -> dict[Path, int]:
    """Map each key, table and array element of a valid TOML document to its 1-based line.

    Arrays of tables get their element index in the path (``("steps", 1, "name")``), as do the
    elements of inline arrays (``("steps", 0, "prompts", 2)``).
    """
    return _Scanner(text).document()


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest enclosing key when it has none of its own."""
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
