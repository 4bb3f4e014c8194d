"""A progress line for long jobs: files, audio hours, throughput and ETA, on stderr."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Redraws one line on a terminal; elsewhere (logs, CI) prints a line every `interval` seconds."""

    def __init__(self, total_files: int, total_seconds: float, label: str = "spg-shard",
                 stream: Optional[TextIO] = None, enabled: bool = True, interval: float = 10.0, bad: int = 0,
                 filtered: int = 0, messages: Optional[bool] = None) -> None:
        """`bad`, `filtered`: inputs already counted out before this stage (the line shows them from the start).
        `messages`: print the lines of `message()` (None: when `enabled`; quiet is quiet about each file too)."""
        self.total_files, self.total_seconds = total_files, total_seconds
        self.label, self.enabled, self.interval = label, enabled, interval
        self.messages = enabled if messages is None else messages
        self.stream = stream or sys.stderr
        self.tty = self.enabled and getattr(self.stream, "isatty", lambda: False)()
        self.files, self.bad, self.filtered = 0, bad, filtered  # bad: broken inputs; filtered: left out on purpose
        self.seconds = 0.0
        self.start = self.last_draw = time.monotonic()

    def update(self, files: int = 0, seconds: float = 0.0, bad: int = 0) -> None:
        self.files += files
        self.seconds += seconds
        self.bad += bad
        now = time.monotonic()
        if self.enabled and (now - self.last_draw >= (0.2 if self.tty else self.interval)):
            self.last_draw = now
            self._draw(self.line())

    def message(self, text: str) -> None:
        """A line printed above the progress line (e.g. a rejected file); none when messages are off."""
        if not self.messages:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self.tty:
            self._draw(self.line())
        self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        if not self.total_seconds:  # a count of files only (headers being read)
            rate = self.files / elapsed
            eta = format_duration((self.total_files - self.files) / rate) if rate > 0 else "?"
            return (f"[{self.label}] {self.files}/{self.total_files} files, {rate:.0f} files/s, "
                    f"elapsed {format_duration(elapsed)}, ETA {eta}")
        speed = self.seconds / elapsed
        remaining = max(self.total_seconds - self.seconds, 0.0)
        eta = format_duration(remaining / speed) if speed > 0 else "?"
        return (
            f"[{self.label}] {self.files}/{self.total_files} files, "
            f"{self.seconds / 3600:.2f}/{self.total_seconds / 3600:.2f} h audio, "
            f"{speed:.0f}x real time, {self.files / elapsed:.1f} files/s, "
            f"bad {self.bad}, filtered {self.filtered}, elapsed {format_duration(elapsed)}, ETA {eta}"
        )

    def close(self) -> None:
        if self.enabled:
            self._draw(self.line())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()

    def _draw(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
