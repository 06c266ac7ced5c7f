"""A real terminal for the dashboard tests: tmux running a command, keys in, screen out."""

from __future__ import annotations

import subprocess
import time


class Tmux:
    """One tmux session running a command in a real terminal of a given size."""

    def __init__(self, name: str, command: str, size: tuple[int, int], env: dict[str, str]):
        self.name = name
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y",
                        str(size[1]), f"env {exports} {command}; sleep 60"], check=True)  # fmt: skip

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, *texts: str, timeout: float = 60) -> str:
        """Poll the screen until every text is on it (tmux has no event for that)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"never saw {texts} on the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
