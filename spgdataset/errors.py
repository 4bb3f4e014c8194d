"""Exceptions that carry the file or URL they are about, so every message names it."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional, Sequence


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline as \\n), so that one problem stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def excerpt(text: str, limit: int = 40, quote: str = '"') -> str:
    """A short, escaped quotation of untrusted text (a file's content) for a message: at most `limit` characters,
    control characters escaped, so a report never carries more of a file than it needs to name the problem."""
    return f"{quote}{printable(text[:limit])}{'...' if len(text) > limit else ''}{quote}"


def shown(value: Any, limit: int = 60) -> str:
    """repr() of a value for a one-line message, cut to `limit` characters (a 400-digit integer, a long list)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc.args[0]) if exc.args else ""
    return text.splitlines()[0] if text.strip() else type(exc).__name__


class SpgError(Exception):
    """Base class: an error the CLI prints as one line instead of a traceback."""


class BadInput(SpgError):
    """One input file cannot be used; the run goes on without it and lists it in the report."""

    def __init__(self, path: str, problem: str, kind: str = "bad") -> None:
        super().__init__(f"{printable(path)}: {printable(problem)}")
        self.path = path
        self.problem = problem
        # "bad" (broken input), "filtered" (excluded on purpose, e.g. labelset), "duplicate" (another name of
        # a file taken once) or "warning" (taken, with a problem fixed on the way)
        self.kind = kind

    def __reduce__(self):  # travels back from worker processes
        return (BadInput, (self.path, self.problem, self.kind))


class ShardError(SpgError):
    """A shard is missing, truncated, corrupt, or disagrees with its manifest."""


def integer_option(low: int, high: Optional[int] = None, why: str = "") -> Callable[[str], int]:
    """argparse type of both CLIs: an integer in [low, high] (no upper end when None); out of range is a usage
    error, which argparse words with the option's name."""
    def parse(text: str) -> int:
        try:
            value: Optional[int] = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            expected = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {expected}{why}, got {text!r}")
        return value
    return parse


def command_line(prog: str, run: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
                 interrupted: str = "interrupted") -> None:
    """Run a command's `run(argv)` and exit: an SpgError (or ValueError, OSError) is one line on stderr
    (`prog: error: ...`) and exit code 1, never a traceback; Ctrl-C exits with 130."""
    try:
        code = run(argv)
    except (SpgError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        code = 130
    sys.exit(code)
