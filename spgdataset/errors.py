"""Exceptions that carry the file or URL they are about, so every message names it."""

from __future__ import annotations


class SpgError(Exception):
    """Base class: an error the CLI prints as one line instead of a traceback."""


class BadInput(SpgError):
    """One input file cannot be used; the run goes on without it and lists it in the report."""

    def __init__(self, path: str, problem: str, kind: str = "bad") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.kind = kind  # "bad" (broken input) or "filtered" (excluded on purpose, e.g. labelset)

    def __reduce__(self):  # travels back from worker processes
        return (BadInput, (self.path, self.problem, self.kind))


class ShardError(SpgError):
    """A shard is missing, truncated, corrupt, or disagrees with its manifest."""
