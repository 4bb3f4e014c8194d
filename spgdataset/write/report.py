"""The bad-input report: one line per problem on the way, one row per problem in manifest.json."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from ..errors import BadInput

KIND_WORDS = {"filtered": "skipped", "duplicate": "duplicate", "warning": "warning"}  # else "bad input"


def report_row(bad: BadInput) -> Dict[str, str]:
    return {"path": bad.path, "problem": bad.problem, "kind": bad.kind}


def count_kinds(report: List[Dict[str, str]]) -> Dict[str, int]:
    counts = {"bad": 0, "filtered": 0}
    for row in report:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return counts


def describe(bad: BadInput) -> str:
    """One line per problem (control characters in names escaped)."""
    return f"{KIND_WORDS.get(bad.kind, 'bad input')}: {bad}"


def nothing_usable(count: int, rejected: Sequence[Any], what: str) -> str:
    first = [(r.path, r.problem) if isinstance(r, BadInput) else (r["path"], r["problem"]) for r in rejected[:3]]
    detail = "; ".join(f"{p}: {why}" for p, why in first)
    return f"nothing usable: {what} ({count} rejected{': ' + detail if detail else ''})"
