"""Claiming an output folder: one writer at a time, and nothing touched that this project did not write.

One writer: a lock in the state folder, taken before anything is cleaned or removed (`.spg-state/lock`; the
part i of N of a split run holds it shared, and `.spg-state/lock-part-i-of-N` alone, so that the parts of a job
array write side by side). A second run is refused with the first one's pid, host, start and command, or waits
for it (`wait=True`: the reference call, which every rank of a DDP job makes at once). A run that died holds
nothing: the kernel drops its flock (on S3 its lease runs out, storage/s3/lock.py), so its temporary files are
cleaned by the next run, and a living run's never.

Nothing else touched: spgdataset writes a known set of names into OUTPUT_DIR and recognises each by its content,
not only by its name (`survey`): manifest.json saying it was created by spgdataset, the index by its magic bytes,
shards named by that manifest or by a state record that parses, or starting with one of our tar headers, state
records that parse, the run marker, header cache, lock files and build record by their fields, and temporary
files of those names. Anything else (a user's `shard-take1.wav`, notes, a subfolder, a symlink) makes the folder
someone else's: the run refuses and names what it found, before creating or removing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ..errors import SpgError, printable
from ..format.names import BUILD_RECORD, INDEX_NAME, MANIFEST_NAME, ROWS_INDEX_NAME, STATE_DIR
from ..format.tar import is_our_tar_start
from ..storage import Storage
from ..storage.local import temporary_of
from ..version import __version__
from .shards import Listed, ShardRecord, json_bytes

RUN_MARKER = f"{STATE_DIR}/run.json"
LOCK = "lock"
INDEX_MAGIC = b"SPGIDX\x00\x01"
HEADERS_START = b"\xa7version"  # after the map's first byte: the header cache's first key (write/headers.py)
WAIT_POLL_SECONDS = 0.5
JSON_LIMIT = 1 << 30  # bytes of a manifest (as a reader takes them), run marker or build record read to tell
_SHARD = re.compile(r"shard-[0-9]{6}\.tar")
_RECORD = re.compile(r"shard-[0-9]{6}\.tar\.msgpack")
_PART_LOCK = re.compile(r"lock-part-[0-9]+-of-[0-9]+")
_OUR_TOP = (MANIFEST_NAME, INDEX_NAME, ROWS_INDEX_NAME, BUILD_RECORD)
_OUR_STATE = ("run.json", "headers.msgpack", LOCK)


@dataclasses.dataclass
class Contents:
    """What an output folder holds, as far as a claim is concerned (`survey`)."""

    top: Dict[str, Tuple[str, str]]  # the folder's entries: {name: (kind, stamp)}
    state: Dict[str, Tuple[str, str]]  # the state folder's
    ours: List[str]  # names relative to the folder, recognised as written by spgdataset
    foreign: List[str]  # everything else, with what it is when not a file
    marker: Optional[str]  # the fingerprint in the run marker
    records: Dict[str, bytes]  # state records by name (relative to the folder), those read (_records)
    has_set: bool  # shards, a manifest or an index of ours are there

    def refuse_foreign(self, output_dir: str) -> None:
        if self.foreign:
            shown = ", ".join(printable(name) for name in self.foreign[:5])
            more = f" and {len(self.foreign) - 5} more" if len(self.foreign) > 5 else ""
            raise SpgError(f"{output_dir}: holds files spg-shard did not write ({shown}{more}); it writes only into "
                           "an empty folder or one it wrote before: choose another output folder, or move them away")

    def removable(self) -> List[str]:
        """What an overwrite removes: the previous job's shard set and state, never the locks or a build record."""
        return [name for name in self.ours if temporary_of(name.rsplit("/", 1)[-1]) is None
                and name != BUILD_RECORD and not _is_lock(name.rsplit("/", 1)[-1])]

    def listed(self) -> Listed:
        """The stamps and records for finished_shards (shards.py), which then lists and reads nothing again."""
        files = lambda entries: {n: stamp for n, (kind, stamp) in entries.items() if kind == "file"}  # noqa: E731
        return Listed(files(self.top), files(self.state), self.records)

    def same_as(self, top: Dict[str, Tuple[str, str]], state: Dict[str, Tuple[str, str]]) -> bool:
        """Whether listings taken later show the same files (lock files aside: taking a lock writes them)."""
        def unlocked(entries: Dict[str, Tuple[str, str]]) -> Dict[str, Tuple[str, str]]:
            return {n: e for n, e in entries.items() if not _is_lock(n)}

        return self.top == top and unlocked(self.state) == unlocked(state)


def survey(out: Storage, earlier: Optional[Contents] = None) -> Contents:
    """Sort the folder's entries into ours and not ours (module docstring), reading what tells them apart; when
    the folder lists as it did for `earlier`, that survey is taken as it is (two listings, nothing read)."""
    top = out.entries()
    state = out.entries(STATE_DIR) if top.get(STATE_DIR, ("",))[0] == "folder" else {}
    if earlier is not None and earlier.same_as(top, state):
        return dataclasses.replace(earlier, top=top, state=state)
    ours: List[str] = []
    foreign: List[str] = []
    manifest = _our_json(_small(out, MANIFEST_NAME), "created_by") if top.get(MANIFEST_NAME, ("",))[0] == "file" \
        else None
    listed = {s.get("name") for s in (manifest or {}).get("shards", []) if isinstance(s, dict)}
    marker = (_our_json(_small(out, RUN_MARKER), "fingerprint") or {}).get("fingerprint") \
        if state.get("run.json", ("",))[0] == "file" else None
    records = _records(out, state, marker is None or any(_SHARD.fullmatch(n) and n not in listed for n in top))
    recorded = {r.name for r in map(ShardRecord.from_bytes, records.values()) if r is not None}
    for name, (kind, _) in sorted(top.items()):
        if name == STATE_DIR and kind == "folder":
            continue
        known = kind == "file" and _ours_at_top(out, name, manifest is not None, listed | recorded)
        (ours if known else foreign).append(name if kind == "file" or known else f"{name} ({kind})")
    for name, (kind, _) in sorted(state.items()):
        path = f"{STATE_DIR}/{name}"
        # in a state folder that our run marker vouches for, a damaged record or cache is ours (written again)
        record = ShardRecord.from_bytes(records[path]) if path in records else None
        known = kind == "file" and (_ours_by_name(name) and marker is not None or record is not None
                                    or _ours_in_state(out, path, name))
        (ours if known else foreign).append(path if kind == "file" or known else f"{path} ({kind})")
    has_set = any(_SHARD.fullmatch(n) or n in (MANIFEST_NAME, INDEX_NAME, ROWS_INDEX_NAME) for n in ours)
    return Contents(top, state, ours, foreign, marker, records, has_set)


def _records(out: Storage, state: Dict[str, Tuple[str, str]], needed: bool) -> Dict[str, bytes]:
    """The state records, read only when they tell something: when no run marker vouches for them, or a shard is
    there that the manifest does not name (a finished set's rerun reads them later, in finished_shards)."""
    if not needed:
        return {}
    names = [f"{STATE_DIR}/{n}" for n, (kind, _) in state.items() if kind == "file" and _RECORD.fullmatch(n)]
    return {name: data for name, data in out.read_many(names).items() if data is not None}


def _is_lock(name: str) -> bool:
    return name == LOCK or bool(_PART_LOCK.fullmatch(name))


def _ours_at_top(out: Storage, name: str, our_manifest: bool, shards: Set[Any]) -> bool:
    if _SHARD.fullmatch(name):
        return name in shards or is_our_tar_start(out.read_head(name, 512) or b"")
    if name == MANIFEST_NAME:
        return our_manifest
    if name == INDEX_NAME:
        return out.read_head(name, len(INDEX_MAGIC)) == INDEX_MAGIC
    if name == ROWS_INDEX_NAME:  # format 1: a msgpack list, named by our manifest
        return our_manifest
    if name == BUILD_RECORD:
        return _our_json(_small(out, name), "fingerprint") is not None
    return _is_our_temporary(name)


def _ours_in_state(out: Storage, path: str, name: str) -> bool:
    if name == "run.json":
        return False  # a marker that reads is ours by name (survey); one that does not is not
    if name == "headers.msgpack":
        head = out.read_head(path, 1 + len(HEADERS_START)) or b""
        return len(head) > 1 and 0x80 <= head[0] <= 0x8F and head[1:] == HEADERS_START
    if _is_lock(name):
        holder = out.read_head(path, 4096)
        return holder == b"" or _our_json(holder, "pid") is not None
    return _is_our_temporary(name)


def _small(out: Storage, name: str) -> Optional[bytes]:
    """A JSON file's bytes, at most JSON_LIMIT of them: a larger file of that name is not one of ours."""
    data = out.read_head(name, JSON_LIMIT + 1)
    return None if data is None or len(data) > JSON_LIMIT else data


def _ours_by_name(name: str) -> bool:
    """A name of the state folder that spgdataset writes (its content aside)."""
    return name in _OUR_STATE or bool(_RECORD.fullmatch(name) or _PART_LOCK.fullmatch(name))


def _is_our_temporary(name: str) -> bool:
    base = temporary_of(name)
    if base is None:
        return False
    return base in _OUR_TOP or base in _OUR_STATE or bool(_SHARD.fullmatch(base) or _RECORD.fullmatch(base)
                                                          or _PART_LOCK.fullmatch(base))


def _our_json(data: Optional[bytes], field: str) -> Optional[Dict[str, Any]]:
    """The JSON object in `data` when it has `field` (and for a manifest, says spgdataset made it)."""
    try:
        found = json.loads((data or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(found, dict) or field not in found:
        return None
    if field == "created_by" and not str(found["created_by"]).startswith("spgdataset"):
        return None
    return found


# ---------------------------------------------------------------- the lock


def holder_bytes(part: Tuple[int, int]) -> bytes:
    """Who holds a lock, for the message of a run that finds it held."""
    return json_bytes({"pid": os.getpid(), "host": socket.gethostname(), "spgdataset": __version__,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       "command": " ".join(sys.argv)[:300], "part": f"{part[0]}/{part[1]}"})


def describe_holder(raw: Optional[bytes]) -> str:
    holder = _our_json(raw, "pid")
    if holder is None:
        return "a run that has not said who it is yet"
    part = f", part {holder['part']}" if holder.get("part", "0/1") != "0/1" else ""
    renewed = f", lock renewed {holder['renewed']}" if holder.get("renewed") else ""
    return printable(f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}{part}"
                     f"{renewed}: {holder.get('command', '')}")


def _lock_names(part: Tuple[int, int]) -> List[Tuple[str, bool]]:
    """(lock file, shared) to hold: a whole run holds the lock alone; a part holds it shared, and its part's."""
    if part[1] == 1:
        return [(f"{STATE_DIR}/{LOCK}", False)]
    return [(f"{STATE_DIR}/{LOCK}", True), (f"{STATE_DIR}/lock-part-{part[0]}-of-{part[1]}", False)]


def _live_parts(out: Storage, state: Dict[str, Tuple[str, str]], mine: Optional[str] = None) -> List[str]:
    """Descriptions of the parts of split runs holding their locks now (besides `mine`), among the state
    folder's entries `state`."""
    names = [f"{STATE_DIR}/{n}" for n, (kind, _) in state.items() if kind == "file" and _PART_LOCK.fullmatch(n)]
    holders = [out.lock_holder(name) for name in sorted(names) if name != mine]
    return [describe_holder(h) for h in holders if h is not None]


def _try_locks(out: Storage, part: Tuple[int, int], earlier: Optional[Contents]) -> Tuple[List[Any], Any]:
    """(the locks of `part`, the folder surveyed under them), or ([], who holds what we need)."""
    held: List[Any] = []
    holder = holder_bytes(part)
    for name, shared in _lock_names(part):
        lock = out.try_lock(name, holder, shared)
        if lock is None:
            for taken in held:
                taken.release()
            if name.endswith(f"/{LOCK}"):  # held shared by parts, or alone by a whole run
                parts = _live_parts(out, out.entries(STATE_DIR))
                if parts:
                    return [], "; ".join(parts)
            return [], _busy(out, name)
        held.append(lock)
    contents = survey(out, earlier)
    busy = _live_parts(out, contents.state) if part[1] == 1 else []  # on S3 a part's lease does not exclude a whole run
    if busy:
        for taken in held:
            taken.release()
        return [], "; ".join(busy)
    return held, contents


def _busy(out: Storage, name: str) -> str:
    holder = out.lock_holder(name)
    lease = b'"renewed"' in (holder or b"")  # an S3 lease outlives a killed holder, an flock does not
    expiry = " (a killed run's lock expires one lease after its last renewal)" if lease else ""
    return describe_holder(holder) + expiry


def take_locks(out: Storage, output_dir: str, part: Tuple[int, int], wait: bool,
               earlier: Optional[Contents] = None) -> Tuple[List[Any], Contents]:
    """The writer's locks on `output_dir` and the folder surveyed under them; SpgError naming the run that holds
    them, or (wait) once it ended."""
    said = False
    while True:
        held, found = _try_locks(out, part, earlier)
        if held:
            return held, found
        if not wait:
            raise SpgError(f"{output_dir}: another spg-shard run is writing here ({found}); wait for it to end, "
                           "or write to another folder")
        if not said:
            print(f"spg-shard: waiting for the run writing {output_dir} to end ({found})", file=sys.stderr)
            said = True
        time.sleep(WAIT_POLL_SECONDS)


@dataclasses.dataclass
class Claim:
    """A run's hold on its output folder: its locks, and what the folder held when they were taken."""

    out: Storage
    output_dir: str
    part: Tuple[int, int]
    locks: List[Any]
    contents: Contents
    emptied: bool = False  # an overwrite removed the previous set: the survey's listings are out of date

    def listed(self) -> Optional[Listed]:
        """What finished_shards may take as listed and read (shards.py), instead of asking the storage again."""
        return None if self.emptied else self.contents.listed()

    def check(self) -> None:
        """Before the manifest is written: the locks are still this run's (an S3 lease can be taken over)."""
        if any(lock.lost for lock in self.locks):
            raise SpgError(f"{self.output_dir}: another run took this run's lock over (was it frozen for "
                           "longer than the lease?); nothing more is written: rerun to finish")

    def settle(self, fingerprint: str, overwrite: bool, owned: Callable[[str], bool]) -> None:
        """Refuse to mix two jobs in one folder unless asked to overwrite (then remove the other job's set, and
        only it); clean what dead runs left half-written of the names `owned` says are this run's."""
        self.out.clean(owned)
        if self.contents.marker is not None:
            if self.contents.marker == fingerprint:
                return
            if not overwrite:
                raise SpgError(f"{self.output_dir}: holds shards of a different job (other inputs or parameters); "
                               "use a new output folder or --overwrite")
        elif self.contents.has_set and not overwrite:
            raise SpgError(f"{self.output_dir}: holds shards not written by spg-shard's state; use --overwrite")
        if overwrite:
            for name in self.contents.removable():
                self.out.remove(name)
            self.emptied = True
        self.out.write(RUN_MARKER, json_bytes({"fingerprint": fingerprint, "spgdataset": __version__}))

    def clean_when_alone(self) -> None:
        """Remove every temporary left in the folder by dead runs, when no other run (another part) is writing."""
        if self.part[1] == 1:
            self.out.clean(lambda name: True)
            return
        self.locks[0].release()  # the shared lock of a part, to ask for it alone
        alone = self.out.try_lock(f"{STATE_DIR}/{LOCK}", holder_bytes(self.part), shared=False)
        if alone is None:
            return
        try:
            if not _live_parts(self.out, self.out.entries(STATE_DIR), mine=_lock_names(self.part)[1][0]):
                self.out.clean(lambda name: True)
        finally:
            alone.release()


def check_free(out: Storage, output_dir: str) -> Contents:
    """Before a run reads its inputs: the storage is there (a bucket) and the folder holds nothing of anyone
    else. Nothing is created here: the folder is made when the run claims it."""
    out.prepare()
    contents = survey(out)
    contents.refuse_foreign(output_dir)
    return contents


@contextlib.contextmanager
def claimed(out: Storage, output_dir: str, part: Tuple[int, int], wait: bool,
            earlier: Optional[Contents] = None) -> Iterator[Claim]:
    """The folder locked for this run and surveyed again under the lock (another run may have written meanwhile;
    when nothing changed since `earlier`, its survey stands)."""
    locks, contents = take_locks(out, output_dir, part, wait, earlier)
    try:
        contents.refuse_foreign(output_dir)
        yield Claim(out, output_dir, part, locks, contents)
    finally:
        for lock in locks:
            lock.release()
