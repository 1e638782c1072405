"""Progress on stderr for long steps (loading, quantizing, saving).

``with progress.track("loading", total=n):`` makes every ``progress.tick()`` (checkpoint.py ticks
once per tensor read) advance a bar: redrawn in place on a terminal, one start and one end line
otherwise. Without an active tracker ``tick()`` does nothing, so the library stays silent."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import IO, Iterator

_active: "Progress | None" = None


class Progress:
    def __init__(self, desc: str, total: int | None, stream: IO[str] | None = None, width: int = 30) -> None:
        self.desc = desc
        self.total = total if total else None
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.count = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if not self._tty:
            self._write(f"{desc} ...\n")
        else:
            self._draw(force=True)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._tty:
            self._draw()

    def close(self, ok: bool = True) -> None:
        elapsed = time.monotonic() - self.start
        if self._tty:
            self._draw(force=True)
            self._write("\n")
        if ok:
            self._write(f"{self.desc}: done ({self.count} items, {elapsed:.1f}s)\n")

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self.start
        if self.total:
            frac = min(1.0, self.count / self.total)
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self._write(f"\r{self.desc} [{bar}] {self.count}/{self.total} {elapsed:.1f}s")
        else:
            self._write(f"\r{self.desc} {self.count} {elapsed:.1f}s")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not break loading
            pass


@contextmanager
def track(desc: str, total: int | None = None, stream: IO[str] | None = None) -> Iterator[Progress]:
    """Makes tick() advance a progress bar for the duration of the block."""
    global _active
    previous = _active
    bar = Progress(desc, total, stream)
    _active = bar
    ok = False
    try:
        yield bar
        ok = True
    finally:
        _active = previous
        bar.close(ok)


def tick(n: int = 1) -> None:
    if _active is not None:
        _active.update(n)
