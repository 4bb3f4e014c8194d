"""Annotation files as vak users have them (simple-seq CSV, Audacity label tracks, Praat TextGrids), hand-written
small: what each parses to, exactly, and for each way a file can be broken, the one line that says where and why.
"""

from __future__ import annotations

import os

import pytest

from spgdataset.errors import BadInput, SpgError
from spgdataset.write import annotations
from spgdataset.write.annotations import (
    Annotation,
    annotation_format,
    annotation_paths_beside,
    intervals_in_samples,
    labelset_to_set,
    read_annotation,
)

LONG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0 
xmax = 3 
tiers? <exists> 
size = 3 
item []: 
    item [1]:
        class = "TextTier" 
        name = "bell" 
        xmin = 0 
        xmax = 3 
        points: size = 2 
        points [1]:
            number = 0.5 
            mark = "ding" 
        points [2]:
            number = 2 
            mark = "" 
    item [2]:
        class = "IntervalTier" 
        name = "syllables" 
        xmin = 0 
        xmax = 3 
        intervals: size = 4 
        intervals [1]:
            xmin = 0 
            xmax = 0.25 
            text = "" 
        intervals [2]:
            xmin = 0.25 
            xmax = 1.5 
            text = "a" 
        intervals [3]:
            xmin = 1.5 
            xmax = 2 
            text = "" 
        intervals [4]:
            xmin = 2 
            xmax = 3 
            text = "LABEL" 
    item [3]:
        class = "IntervalTier" 
        name = "other" 
        xmin = 0 
        xmax = 3 
        intervals: size = 1 
        intervals [1]:
            xmin = 0 
            xmax = 3 
            text = "ignored" 
'''

SHORT = '''File type = "ooTextFile"
Object class = "TextGrid"

0
3
<exists>
2
"TextTier"
"bell"
0
3
1
0.5
"ding"
"IntervalTier"
"syllables"
0
3
3
0
0.25
""
0.25
1.5
"a"
1.5
3
"b"
'''

UNICODE = '''File type = "ooTextFile"
Object class = "TextGrid"
xmin = 0
xmax = 1
tiers? <exists>
size = 1
item []:
    item [1]:
        class = "IntervalTier"
        name = "wörter"
        xmin = 0
        xmax = 1
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = "süß ""quoted"""
        intervals [2]:
            xmin = 0.5
            xmax = 1
            text = "ɑ́ 鳥"
'''


def write(path, content) -> str:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def problem(path: str, fmt: str) -> str:
    """The problem read_annotation reports, after checking the message is `path: problem` and one line."""
    with pytest.raises(BadInput) as info:
        read_annotation(path, fmt)
    assert info.value.path == path and info.value.kind == "bad"
    assert str(info.value) == f"{path}: {info.value.problem}" and "\n" not in str(info.value)
    return info.value.problem


# ---- what each format parses to

def test_simple_seq_columns_by_name_extra_columns_ignored_labels_kept_as_text(tmp_path):
    path = write(tmp_path / "a.wav.csv", 'label,onset_s,notes,offset_s\r\n'
                                          '"x, y",0.5,first,1.25\r\n'
                                          '\r\n'
                                          '01,2,,2.5\r\n'
                                          'a,1.5e0,,1.5\r\n')
    assert read_annotation(path, "simple-seq") == Annotation(
        path, (0.5, 2.0, 1.5), (1.25, 2.5, 1.5), ("x, y", "01", "a"))


def test_simple_seq_header_only_is_zero_segments(tmp_path):
    path = write(tmp_path / "a.csv", "\ufeffonset_s,offset_s,label\n")
    assert read_annotation(path, "simple-seq") == Annotation(path, (), (), ())


def test_audacity_label_track_with_points_empty_labels_and_frequency_lines(tmp_path):
    path = write(tmp_path / "a.txt", "0.000000\t0.500000\tcall A\n"
                                     "\\\t6928.456055\t7000.000000\n"
                                     "1.000000\t1.000000\tpoint\r\n"
                                     "1.500000\t2.250000\t\n"
                                     "2.500000\t3.000000\ttab\tinside\n"
                                     "\\\t100\t200\n")
    assert read_annotation(path, "audacity") == Annotation(
        path, (0.0, 1.0, 1.5, 2.5), (0.5, 1.0, 2.25, 3.0), ("call A", "point", "", "tab\tinside"))


def test_audacity_empty_file_is_an_empty_label_track(tmp_path):
    path = write(tmp_path / "a.txt", b"")
    assert read_annotation(path, "aud-seq") == Annotation(path, (), (), ())


def test_textgrid_long_format_first_interval_tier_gaps_skipped_point_tier_skipped(tmp_path):
    path = write(tmp_path / "a.TextGrid", LONG)
    assert read_annotation(path, "textgrid") == Annotation(path, (0.25, 2.0), (1.5, 3.0), ("a", "LABEL"))


@pytest.mark.parametrize("file_type", ["ooTextFile", "ooTextFile short"])  # older Praat wrote the second
def test_textgrid_short_format(tmp_path, file_type):
    path = write(tmp_path / "a.TextGrid", SHORT.replace('"ooTextFile"', f'"{file_type}"'))
    assert read_annotation(path, "textgrid") == Annotation(path, (0.25, 1.5), (1.5, 3.0), ("a", "b"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8", "utf-8-sig"])
def test_textgrid_utf16_and_utf8_non_ascii_labels_and_escaped_quote(tmp_path, encoding):
    path = write(tmp_path / "a.TextGrid", UNICODE.encode(encoding))
    assert read_annotation(path, "textgrid") == Annotation(path, (0.0, 0.5), (0.5, 1.0), ('süß "quoted"', "ɑ́ 鳥"))


def test_textgrid_label_over_several_lines_and_comments(tmp_path):
    text = SHORT.replace('"b"', '"two\nlines" ! a comment with "quotes"\n')
    path = write(tmp_path / "a.TextGrid", text)
    assert read_annotation(path, "textgrid").labels == ("a", "two\nlines")


# ---- broken files: one line naming the file, where and what

def test_bad_number(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,offset_s,label\n0,1,a\n0.5s,2,b\n")
    assert problem(path, "simple-seq") == "line 3: onset_s '0.5s' is not a number"
    path = write(tmp_path / "b.txt", "0\tnan\ta\n")
    assert problem(path, "aud-seq") == "line 1: end 'nan' is not a number"


def test_non_finite_time(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,offset_s,label\n0,1e999,a\n")
    assert problem(path, "simple-seq") == "line 2: offset inf is not finite"
    path = write(tmp_path / "a.TextGrid", SHORT.replace("\n1.5\n3\n", "\n1.5\n1e400\n"))
    assert problem(path, "textgrid") == 'line 26, tier 2 "syllables" interval 3: offset inf is not finite'


def test_missing_column(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,label\n0,a\n")
    assert problem(path, "simple-seq") == "line 1: header has no column offset_s (it has onset_s, label)"
    path = write(tmp_path / "d.csv", "label,onset_s,offset_s,label\n")
    assert problem(path, "simple-seq") == \
        "line 1: header has twice the column label (it has label, onset_s, offset_s, label)"
    path = write(tmp_path / "b.csv", "onset_s,offset_s,label\n0,1,a\n1,2\n")
    assert problem(path, "simple-seq") == "line 3: 2 column(s) where the header has 3"
    path = write(tmp_path / "c.txt", "0\t1\ta\n2 3 b\n")
    assert problem(path, "aud-seq") == "line 2: expected start<TAB>end<TAB>label, found no tab"


def test_offset_before_onset(tmp_path):
    path = write(tmp_path / "a.txt", "0\t1\ta\n2.5\t2\tb\n")
    assert problem(path, "aud-seq") == "line 2: offset 2 s is before onset 2.5 s"
    path = write(tmp_path / "b.TextGrid", LONG.replace("xmin = 0.25", "xmin = 1.75", 1))
    assert problem(path, "textgrid") == 'line 32, tier 2 "syllables" interval 2: offset 1.5 s is before onset 1.75 s'


def test_negative_onset(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,offset_s,label\n-0.5,1,a\n")
    assert problem(path, "simple-seq") == "line 2: onset -0.5 s is negative"


def test_empty_label_where_the_format_forbids_it(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,offset_s,label\n0,1,a\n1,2,\n")
    assert problem(path, "simple-seq") == "line 3: empty label"


def test_truncated_textgrid(tmp_path):
    path = write(tmp_path / "a.TextGrid", LONG[:LONG.index("intervals [4]:")])
    assert problem(path, "textgrid") == 'ends early (truncated?): expected the xmin of tier 2 "syllables" interval 4'
    path = write(tmp_path / "b.TextGrid", SHORT.replace('"b"', '"b'))
    assert problem(path, "textgrid") == \
        'line 28: expected the text of tier 2 "syllables" interval 3, found a string with no closing quote'


def test_textgrid_without_interval_tier(tmp_path):
    text = LONG[:LONG.index("    item [2]:")].replace("size = 3", "size = 1")
    path = write(tmp_path / "a.TextGrid", text)
    assert problem(path, "textgrid") == "no IntervalTier among its 1 tier(s); a TextGrid's segments are in one"
    path = write(tmp_path / "b.TextGrid", LONG.replace("tiers? <exists> \nsize = 3", "tiers? <absent>"))
    assert problem(path, "textgrid") == "TextGrid has no tiers, so no interval tier"


def test_textgrid_wrong_structure(tmp_path):
    path = write(tmp_path / "a.TextGrid", LONG.replace('class = "TextTier"', 'class = "Pitch"'))
    assert problem(path, "textgrid") == 'tier 1 "bell": unknown tier class "Pitch" (expected IntervalTier or TextTier)'
    path = write(tmp_path / "b.TextGrid", SHORT.replace('"a"', "7"))
    assert problem(path, "textgrid") == \
        'line 25: expected the text of tier 2 "syllables" interval 2, found the number 7'
    path = write(tmp_path / "c.TextGrid", SHORT.replace("\n2\n", "\n2.5\n", 1))
    assert problem(path, "textgrid") == "the TextGrid: size 2.5 is not a count"
    path = write(tmp_path / "d.TextGrid", 'File type = "ooTextFile"\nObject class = "Pitch 1"\n')
    assert problem(path, "textgrid") == 'a Praat "Pitch 1", not a TextGrid'
    path = write(tmp_path / "e.TextGrid", "onset_s,offset_s,label\n")
    assert problem(path, "textgrid") == 'ends early (truncated?): expected File type = "ooTextFile"'


def test_binary_garbage(tmp_path):
    garbage = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    for fmt in ("simple-seq", "aud-seq", "textgrid"):
        path = write(tmp_path / f"a.{fmt}", garbage)
        assert problem(path, fmt) == "line 1, byte 0: not UTF-8 text (b'\\x89')"
    path = write(tmp_path / "nul.txt", b"0\t1\ta\n\x00\x01\x02")
    assert problem(path, "aud-seq") == "line 2: NUL character; a binary file, not text"
    path = write(tmp_path / "bin.TextGrid", b"ooBinaryFile\x08TextGrid" + bytes(40))
    assert problem(path, "textgrid") == "a binary TextGrid (ooBinaryFile); save it from Praat as a text file"


def test_not_utf8(tmp_path):
    path = write(tmp_path / "a.csv", "onset_s,offset_s,label\n0,1,café\n".encode("latin-1"))
    assert problem(path, "simple-seq") == "line 2, byte 30: not UTF-8 text (b'\\xe9')"
    path = write(tmp_path / "a.TextGrid", b"\xff\xfe" + "File type".encode("utf-16-le") + b"\x00\xd8")
    assert problem(path, "textgrid") == "byte 20: not UTF-16 text (b'\\x00')"


def test_empty_file_where_invalid(tmp_path):
    path = write(tmp_path / "a.csv", b"")
    assert problem(path, "simple-seq") == "empty file; simple-seq needs a header row onset_s,offset_s,label"
    path = write(tmp_path / "a.TextGrid", b"")
    assert problem(path, "textgrid") == 'ends early (truncated?): expected File type = "ooTextFile"'


def test_over_size_refused_unread(tmp_path, monkeypatch):
    assert annotations.MAX_BYTES == 64 * 1024 * 1024
    monkeypatch.setattr(annotations, "MAX_BYTES", 1024 * 1024)
    rows = "onset_s,offset_s,label\n" + "0,1,abcdefghijklmnopqrstuvwxyz\n" * 33823
    rows += "\n" * (1024 * 1024 - len(rows))  # blank lines up to 1 MiB exactly
    path = write(tmp_path / "a.csv", rows)  # 1 MiB: taken
    assert len(read_annotation(path, "simple-seq").labels) == 33823
    path = write(tmp_path / "b.csv", rows + "\n")  # 1 MiB + 1 byte: refused
    assert problem(path, "simple-seq") == "over 1 MiB: too large for an annotation file; refused"


def test_unreadable_missing_and_fifo(tmp_path):
    assert problem(str(tmp_path / "none.csv"), "simple-seq") == "cannot read annotation: No such file or directory"
    fifo = str(tmp_path / "fifo.txt")
    os.mkfifo(fifo)  # opening must not block waiting for a writer
    assert problem(fifo, "aud-seq") == "cannot read annotation: not a regular file (a FIFO)"


def test_audacity_frequency_line_without_label(tmp_path):
    path = write(tmp_path / "a.txt", "\\\t100\t200\n")
    assert problem(path, "aud-seq") == "line 1: frequency line (\\ low high) with no label line before it"


def test_csv_syntax_error(tmp_path):
    path = write(tmp_path / "a.csv", 'onset_s,offset_s,label\n0,1,"a"b\n')
    assert problem(path, "simple-seq") == "line 2: not valid CSV (',' expected after '\"')"


# ---- labelsets, as vak converts them

def test_labelset_string_is_characters():
    assert labelset_to_set("abcc") == {"a", "b", "c"}
    assert labelset_to_set("1235") == {"1", "2", "3", "5"}


def test_labelset_list_of_ints_and_strings():
    assert labelset_to_set([1, 2, 10]) == {"1", "2", "10"}
    assert labelset_to_set(["en", "ab", 3]) == {"en", "ab", "3"}
    assert labelset_to_set(("a", "bc")) == {"a", "bc"}
    assert labelset_to_set({"x", 4}) == {"x", "4"}


def test_labelset_range_form():
    assert labelset_to_set("range: 1-3, 5") == {"1", "2", "3", "5"}
    assert labelset_to_set(["range: 1-3", "noise"]) == {"1", "2", "3", "noise"}
    assert labelset_to_set("range:08") == {"8"}


@pytest.mark.parametrize("labelset, message", [
    (None, "labelset must be a string or a list of strings/integers, got NoneType"),
    (7, "labelset must be a string or a list of strings/integers, got int"),
    ({"a": 1}, "labelset must be a string or a list of strings/integers, got dict"),
    (["a", 1.5], "labelset item 1.5 is a float; labels are strings or integers"),
    ([True], "labelset item True is a bool; labels are strings or integers"),
    ("range: 1-x", "labelset range '1-x': '1-x' is not N or N-M"),
    ("range: 1-2-3", "labelset range '1-2-3': '1-2-3' is not N or N-M"),
    ("range: 1-3,", "labelset range '1-3,': '' is not N or N-M"),
    ("range: 5-1", "labelset range '5-1': '5-1' is reversed or over 100000 labels"),
    ("range: 0-999999999", "labelset range '0-999999999': '0-999999999' is reversed or over 100000 labels"),
])
def test_labelset_bad(labelset, message):
    with pytest.raises(SpgError) as info:
        labelset_to_set(labelset)
    assert str(info.value) == message


# ---- samples, paths, format names

def test_intervals_in_samples_rounding_order_and_labels():
    annot = Annotation("x", (1.0, 0.25, 0.75, 2.0), (1.0, 0.5, 1.75, 2.5), ("b", "a", "b", "c"))
    # samples 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 (half to even); a point label is [s, s]
    assert intervals_in_samples(annot, 2) == {"a": [[0, 1]], "b": [[2, 4], [2, 2]], "c": [[4, 5]]}
    assert list(intervals_in_samples(annot, 2)) == ["a", "b", "c"]  # keys in onset order
    assert intervals_in_samples(Annotation("x", (0.1,), (0.30001,), ("s",)), 16000) == {"s": [[1600, 4800]]}
    assert intervals_in_samples(Annotation("x", (), (), ()), 16000) == {}
    for rate in (0, -1, 1.5, True):
        with pytest.raises(SpgError, match="sample rate must be a positive integer"):
            intervals_in_samples(annot, rate)


def test_annotation_paths_beside_in_order():
    assert annotation_paths_beside("d/a.wav", "simple-seq") == ["d/a.wav.csv", "d/a.csv", "d/a.wav.txt", "d/a.txt"]
    assert annotation_paths_beside("d/a.b.wav", "aud-seq") == ["d/a.b.wav.txt", "d/a.b.txt"]
    assert annotation_paths_beside("a.flac", "TextGrid") == ["a.flac.TextGrid", "a.TextGrid"]
    assert annotation_paths_beside("d.x/noext", "audacity") == ["d.x/noext.txt"]


def test_format_names():
    assert [annotation_format(n) for n in ("simple-seq", "aud-seq", "audacity", "aud-txt", "TextGrid", " textgrid ")] \
        == ["simple-seq", "aud-seq", "aud-seq", "aud-seq", "textgrid", "textgrid"]
    for name in ("raven", "simple-csv", "", None):
        with pytest.raises(SpgError) as info:
            annotation_format(name)
        assert str(info.value) == (f"unknown annotation format {name!r}; "
                                   "accepted: aud-seq, aud-txt, audacity, simple-seq, textgrid")
    with pytest.raises(SpgError, match="unknown annotation format 'raven'"):
        read_annotation("nowhere.txt", "raven")


# ---------------------------------------------------------------- annotation files follow the audio's rules


def test_an_annotation_linked_outside_the_root_is_refused_and_never_quoted(tmp_path):
    """`a.wav.csv -> /etc/passwd` (here: a secret file outside the root) was read, and its first line printed and
    stored in manifest.json's report."""
    import json

    from spgdataset import write_shards
    from tests.helpers import wav

    root = tmp_path / "audio"
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    wav(root / "a.wav", 2.0)
    (root / "a.wav.csv").symlink_to(secret)
    wav(root / "b.wav", 2.0)
    (root / "b.wav.csv").write_text("onset_s,offset_s,label\n0.1,0.5,x\n")
    result = write_shards(root, None, tmp_path / "out", annot_format="simple-seq", workers=1, progress=False)
    rows = {row["path"]: row for row in result.manifest["report"]["files"]}
    assert rows["a.wav"]["kind"] == "bad"
    assert "a link to a file outside the audio root" in rows["a.wav"]["problem"], rows
    assert "root:x" not in (tmp_path / "out" / "manifest.json").read_text()
    allowed = write_shards(root, None, tmp_path / "out2", annot_format="simple-seq", allow_outside_root=True,
                           workers=1, progress=False)  # asked for: read, and its content quoted short, escaped
    problem = {row["path"]: row for row in allowed.manifest["report"]["files"]}["a.wav"]["problem"]
    assert "no column onset_s" in problem and "root:x:0:0:root:/root:/bin/bash" in json.dumps(problem)


def test_file_content_in_a_message_is_a_short_escaped_excerpt(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x" * 5000 + "\x1b[2J,label\n")
    problem = problem_of(str(path), "simple-seq")
    assert len(problem) < 200 and "\x1b" not in problem and problem.endswith('...)'), problem
    grid = tmp_path / "a.TextGrid"
    grid.write_text('File type = "ooTextFile"\nObject class = "' + "P\x07" * 100 + '"\n')
    problem = problem_of(str(grid), "textgrid")
    assert len(problem) < 200 and "\x07" not in problem and "\\x07" in problem, problem


def problem_of(path: str, fmt: str) -> str:
    with pytest.raises(BadInput) as raised:
        read_annotation(path, fmt)
    return raised.value.problem
