"""Annotation files beside the audio, read as vak reads them through crowsetta: "simple-seq" CSVs, Audacity
label tracks ("aud-seq") and Praat TextGrids, turned into the {label: [[start, stop], ...]} sample intervals of
metadata.json, plus vak's labelset conversion.

The parsers are small and strict on purpose (no crowsetta, pandas or pandera to install): an annotation file
is untrusted input, so every problem is one BadInput line naming the file, the line and what is wrong, never a
traceback, a hang or an unbounded read. Labels stay the exact text of the file (pandas would turn "01" into 1).
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import math
import os
import re
from typing import Any, Dict, Iterator, List, Set, Tuple

from ..errors import BadInput, SpgError, excerpt
from ..storage.local import open_regular, read_at_most

MAX_BYTES = 64 * 1024 * 1024  # larger is not an annotation file; refused before it is read whole
MAX_RANGE = 100_000  # labels one "range:" labelset may name ("range: 1-999999999" must not eat the memory)

# crowsetta's names (it has no "simple-csv"; "aud-txt" is crowsetta 4's name for "aud-seq") and "audacity"
FORMATS: Dict[str, str] = {"simple-seq": "simple-seq", "aud-seq": "aud-seq", "aud-txt": "aud-seq",
                           "audacity": "aud-seq", "textgrid": "textgrid"}
# crowsetta's `ext` for each format, in order
EXTENSIONS: Dict[str, Tuple[str, ...]] = {"simple-seq": (".csv", ".txt"), "aud-seq": (".txt",),
                                          "textgrid": (".TextGrid",)}
SIMPLE_COLUMNS = ("onset_s", "offset_s", "label")  # crowsetta SimpleSeq's default header
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")  # no "nan", "inf", "1_0" that float() takes
# Praat's text format is a flat run of "strings" ("" inside is a quote), numbers and <flags>; the rest
# ("xmin =", "item [1]:", "! comments") is ignored, which is why the long and the short format read alike.
# (the string is matched inside a lookahead, which never backtracks: an unclosed quote costs one scan, not n²)
TOKEN = re.compile(r'"(?=([^"]*(?:""[^"]*)*))\1"|!.*|([^\s"!]+)|"')


@dataclasses.dataclass(frozen=True)
class Annotation:
    """The segments of one annotation file, in file order; times in seconds, labels as the file spells them."""

    source: str
    onsets: Tuple[float, ...]
    offsets: Tuple[float, ...]
    labels: Tuple[str, ...]


def annotation_format(name: str) -> str:
    """Canonical format name for a name a user typed (case-insensitive); SpgError listing the accepted ones."""
    canonical = FORMATS.get(name.strip().lower()) if isinstance(name, str) else None
    if canonical is None:
        raise SpgError(f"unknown annotation format {name!r}; accepted: {', '.join(sorted(FORMATS))}")
    return canonical


def read_annotation(path: str, annot_format: str) -> Annotation:
    """Parse one annotation file; any problem is BadInput(path, "where: what"), so the run can skip the file.

    simple-seq: CSV, header with onset_s, offset_s, label (extra columns ignored), non-empty labels; a header
    alone is zero segments. aud-seq: start<TAB>end<TAB>label lines (label may be empty; start == end is a point
    label; a "\\<TAB>low<TAB>high" frequency line after a label is skipped); an empty file is an empty track.
    textgrid: UTF-8 or UTF-16, long or short text format; the first IntervalTier, its empty intervals (gaps)
    left out. Times must be finite numbers, onsets non-negative, offsets not before onsets.
    """
    fmt = annotation_format(annot_format)
    try:
        with open_regular(path) as f:
            raw = read_at_most(f, MAX_BYTES)
    except OSError as exc:
        raise BadInput(path, f"cannot read annotation: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise BadInput(path, f"over {MAX_BYTES / 2**20:g} MiB: too large for an annotation file; refused")
    if fmt == "textgrid":
        rows = _textgrid(path, raw)
    else:
        text = _decode(path, raw, "utf-8-sig")
        rows = _simple_seq(path, text) if fmt == "simple-seq" else _aud_seq(path, text)
    labels: Dict[str, str] = {}  # one str object per distinct label
    return Annotation(path, tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                      tuple(labels.setdefault(r[2], r[2]) for r in rows))


def annotation_paths_beside(audio_path: str, annot_format: str) -> List[str]:
    """Where an audio file's annotation may be, in the order to try: vak pairs them by removing the annotation
    extension ("a.wav.csv" annotates "a.wav"), and failing that by replacing it ("a.csv" annotates "a.wav").
    Each extension crowsetta gives the format is tried in turn: simple-seq .csv then .txt, aud-seq .txt,
    textgrid .TextGrid. "a.csv" is ambiguous when "a.wav" and "a.flac" share a folder; the caller decides."""
    stem = os.path.splitext(audio_path)[0]
    exts = EXTENSIONS[annotation_format(annot_format)]
    return list(dict.fromkeys(name for ext in exts for name in (audio_path + ext, stem + ext)))  # "a" has one


def labelset_to_set(labelset: Any) -> Set[str]:
    """vak's labelset_to_set, so a vak config means the same here: a str is a set of characters ("abc" ->
    {"a", "b", "c"}) unless it starts with "range:" ("range: 1-3, 5" -> {"1", "2", "3", "5"}); a list, tuple or
    set of str/int gives str(item) each, items starting with "range:" expanded. Anything else (None included,
    as in vak) is SpgError; so are booleans, bad ranges and reversed ranges (vak: TypeError/ValueError/empty)."""
    if isinstance(labelset, str):
        return set(_range(labelset[6:])) if labelset.startswith("range:") else set(labelset)
    if not isinstance(labelset, (list, tuple, set, frozenset)):
        raise SpgError(f"labelset must be a string or a list of strings/integers, got {type(labelset).__name__}")
    labels: Set[str] = set()
    for label in labelset:
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise SpgError(f"labelset item {label!r} is a {type(label).__name__}; labels are strings or integers")
        if isinstance(label, str) and label.startswith("range:"):
            labels.update(_range(label[6:]))
        else:
            labels.add(str(label))
    return labels


def intervals_in_samples(annotation: Annotation, sample_rate: int) -> Dict[str, List[List[int]]]:
    """{label: [[start, stop], ...]} in samples at `sample_rate`, as metadata.json holds them: start =
    round(onset * rate), stop = round(offset * rate) (Python's round, half to even), half-open, in onset order.
    A point label gives [s, s], which the writer drops with a warning."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise SpgError(f"sample rate must be a positive integer, got {sample_rate!r}")
    intervals: Dict[str, List[List[int]]] = {}
    for i in sorted(range(len(annotation.onsets)), key=annotation.onsets.__getitem__):
        intervals.setdefault(annotation.labels[i], []).append(
            [round(annotation.onsets[i] * sample_rate), round(annotation.offsets[i] * sample_rate)])
    return intervals


def _range(spec: str) -> List[str]:
    labels: List[str] = []
    for part in spec.split(","):
        bounds = [b.strip() for b in part.split("-")]
        if len(bounds) > 2 or not all(b.isascii() and b.isdigit() for b in bounds):
            raise SpgError(f"labelset range {spec.strip()!r}: {part.strip()!r} is not N or N-M")
        low, high = int(bounds[0]), int(bounds[-1])
        if high < low or len(labels) + high - low >= MAX_RANGE:
            raise SpgError(f"labelset range {spec.strip()!r}: {part.strip()!r} is reversed or over {MAX_RANGE} labels")
        labels.extend(str(n) for n in range(low, high + 1))
    return labels


def _decode(path: str, raw: bytes, encoding: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        utf8, bad = encoding == "utf-8-sig", raw[exc.start:exc.start + 1]
        where = f"line {raw[:exc.start].count(10) + 1}, " if utf8 else ""  # UTF-16 has no byte lines
        raise BadInput(path, f"{where}byte {exc.start}: not {'UTF-8' if utf8 else 'UTF-16'} text ({bad!r})") from None
    if "\x00" in text:
        raise BadInput(path, f"line {_line(text, text.index(chr(0)))}: NUL character; a binary file, not text")
    return text


def _line(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _time(path: str, where: str, what: str, text: str) -> float:
    if not NUMBER.fullmatch(text.strip()):
        raise BadInput(path, f"{where}: {what} {excerpt(text.strip(), quote=chr(39))} is not a number")
    return float(text)


def _check(path: str, where: str, onset: float, offset: float) -> None:
    for what, value in (("onset", onset), ("offset", offset)):
        if not math.isfinite(value):
            raise BadInput(path, f"{where}: {what} {value} is not finite")
    if onset < 0:
        raise BadInput(path, f"{where}: onset {onset:.15g} s is negative")
    if offset < onset:
        raise BadInput(path, f"{where}: offset {offset:.15g} s is before onset {onset:.15g} s")


def _simple_seq(path: str, text: str) -> List[Tuple[float, float, str]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    try:
        header = next(reader, None)
        if header is None:
            raise BadInput(path, "empty file; simple-seq needs a header row onset_s,offset_s,label")
        names = [name.strip() for name in header]
        for column in (c for c in SIMPLE_COLUMNS if names.count(c) != 1):
            how = "no column" if column not in names else "twice the column"
            raise BadInput(path, f"line 1: header has {how} {column} (it has {excerpt(', '.join(names), 60, quote='')})")
        onset_col, offset_col, label_col = (names.index(c) for c in SIMPLE_COLUMNS)
        for fields in reader:
            where = f"line {reader.line_num}"
            if not fields:
                continue  # a blank line, skipped as pandas does
            if len(fields) != len(names):
                raise BadInput(path, f"{where}: {len(fields)} column(s) where the header has {len(names)}")
            onset = _time(path, where, "onset_s", fields[onset_col])
            offset = _time(path, where, "offset_s", fields[offset_col])
            _check(path, where, onset, offset)
            if fields[label_col] == "":
                raise BadInput(path, f"{where}: empty label")
            rows.append((onset, offset, fields[label_col]))
    except csv.Error as exc:
        raise BadInput(path, f"line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _aud_seq(path: str, text: str) -> List[Tuple[float, float, str]]:
    rows, after_label = [], False
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): a label may hold \x0c or \u2028
        line = line.removesuffix("\r")
        where, was_label, after_label = f"line {number}", after_label, False
        if line.startswith("\\"):  # Audacity's "\ low high" frequency range of the label above
            if not was_label:
                raise BadInput(path, f"{where}: frequency line (\\ low high) with no label line before it")
            continue
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) < 2:
            raise BadInput(path, f"{where}: expected start<TAB>end<TAB>label, found no tab")
        onset, offset = _time(path, where, "start", fields[0]), _time(path, where, "end", fields[1])
        _check(path, where, onset, offset)
        rows.append((onset, offset, fields[2] if len(fields) == 3 else ""))
        after_label = True
    return rows


def _tokens(text: str) -> Iterator[Tuple[str, Any, int]]:
    for match in TOKEN.finditer(text):
        string, word = match.group(1), match.group(2)
        if string is not None:
            yield "string", string.replace('""', '"'), match.start()
        elif word is not None:
            if NUMBER.fullmatch(word):
                yield "number", float(word), match.start()
            elif word.startswith("<") and word.endswith(">"):
                yield "flag", word, match.start()
        elif match.group(0) == '"':
            yield "unterminated", "a string with no closing quote", match.start()


def _textgrid(path: str, raw: bytes) -> List[Tuple[float, float, str]]:
    if raw.startswith(b"ooBinaryFile"):
        raise BadInput(path, "a binary TextGrid (ooBinaryFile); save it from Praat as a text file")
    # Praat writes UTF-16 with a byte-order mark when a label is not ASCII; without one, "F" of "File type" tells
    encoding = {codecs.BOM_UTF16_LE: "utf-16", codecs.BOM_UTF16_BE: "utf-16", b"F\x00": "utf-16-le",
                b"\x00F": "utf-16-be"}.get(raw[:2], "utf-8-sig")
    text = _decode(path, raw, encoding)
    tokens, pos = _tokens(text), [0]

    def take(kind: str, what: str) -> Any:
        for got, value, pos[0] in tokens:
            if got == kind:
                return value
            found = excerpt(value) if got == "string" else f"the number {value:.15g}" if got == "number" else value
            raise BadInput(path, f"line {_line(text, pos[0])}: expected {what}, found {found}")
        raise BadInput(path, f"ends early (truncated?): expected {what}")

    if take("string", 'File type = "ooTextFile"') not in ("ooTextFile", "ooTextFile short"):
        raise BadInput(path, 'not a Praat text file (its File type is not "ooTextFile")')
    if (object_class := take("string", 'Object class = "TextGrid"')) != "TextGrid":
        raise BadInput(path, f'a Praat {excerpt(object_class)}, not a TextGrid')
    take("number", "the TextGrid's xmin"), take("number", "the TextGrid's xmax")
    if take("flag", "tiers? <exists>") != "<exists>":
        raise BadInput(path, "TextGrid has no tiers, so no interval tier")
    n_tiers = _count(path, "the TextGrid", take("number", "the number of tiers"))
    for t in range(1, n_tiers + 1):
        kind = take("string", f"the class of tier {t}")
        tier = f'tier {t} {excerpt(take("string", f"the name of tier {t}"))}'
        take("number", f"the xmin of {tier}"), take("number", f"the xmax of {tier}")
        size = _count(path, tier, take("number", f"the number of intervals or points of {tier}"))
        if kind == "IntervalTier":
            rows = []
            for i in range(1, size + 1):
                where = f"{tier} interval {i}"
                onset, start = take("number", f"the xmin of {where}"), pos[0]
                offset = take("number", f"the xmax of {where}")
                label = take("string", f"the text of {where}")
                if not (math.isfinite(onset) and math.isfinite(offset) and 0 <= onset <= offset):
                    _check(path, f"line {_line(text, start)}, {where}", onset, offset)  # lines counted on errors only
                if label != "":  # an empty interval is a gap between segments, as crowsetta keep_empty=False
                    rows.append((onset, offset, label))
            return rows
        if kind != "TextTier":  # a point tier: skipped
            raise BadInput(path, f'{tier}: unknown tier class {excerpt(kind)} (expected IntervalTier or TextTier)')
        for i in range(1, size + 1):
            take("number", f"the time of {tier} point {i}"), take("string", f"the mark of {tier} point {i}")
    raise BadInput(path, f"no IntervalTier among its {n_tiers} tier(s); a TextGrid's segments are in one")


def _count(path: str, what: str, value: float) -> int:
    if not (math.isfinite(value) and value >= 0 and value.is_integer()):
        raise BadInput(path, f"{what}: size {value} is not a count")
    return int(value)
