"""Progress of long commands: one self-overwriting line on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

_BAR = 24


class ProgressLine:
    """One self-overwriting status line on stderr, only when stderr is a terminal."""

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval_s: float = 0.1,
    ) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._shown = False
        self._at = 0.0

    def update(self, progress: dict[str, Any]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._at < self.min_interval_s:
            return
        self._at = now
        self.stream.write("\r\x1b[2K" + render_progress(self.label, progress))
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def render_progress(label: str, progress: dict[str, Any]) -> str:
    """``label [#####.....] done/total k=v …`` (the bar only when done and total are known)."""
    parts = [label]
    done, total = progress.get("done"), progress.get("total")
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        filled = min(_BAR, round(_BAR * done / total))
        parts.append(f"[{'#' * filled}{'.' * (_BAR - filled)}] {done}/{total}")
    parts += [
        f"{k}={v}"
        for k, v in progress.items()
        if k not in ("done", "total") and isinstance(v, int | float | str | bool)
    ]
    return " ".join(parts)
