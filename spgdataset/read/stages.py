"""The reader as a chain of small stages, each a plain generator over the one before it.

    order (rules/order.py)     the epoch's canonical order: files, chunks, a permutation per chunk
    + ranges (rules/elastic.py)  what this worker of this rank yields of it
    -> Piece                   the chunks' windows the ranges cover, in order (EpochOrder.pieces)
    -> piece_plan              which files of which shard each piece needs
    -> read_plans              each run of pieces on one shard read at once (decode.py), a run ahead in a thread
                               (remote shards), or the next shard named to the kernel (local ones: `hinted`)
    -> chunk_inputs            a piece's files, cut to its windows, and the order to yield them in; windows of
                               skipped shards made up at the end (fill_in)
    -> batching.iterate_windows  chunks laid end to end, batches by one gather each

SpectrogramDataset.iter_epoch composes them in a few lines; each is tested on its own. How the items then
travel (read ahead in a thread, into a DataLoader's shared slots) is the stream's choice (transport.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import ShardError
from ..rules.order import EpochOrder, Piece
from .prefetch import read_ahead
from .records import FileRecord

# (selected shard, selection ids, each file alone by its byte range?) -> the files; None: the shard was skipped
ReadFiles = Callable[[int, np.ndarray, bool], Optional[List[FileRecord]]]
RUN_FILES = 256  # files read at once from one shard, at most (more when one piece needs them)


class PiecePlan(NamedTuple):
    """A piece and the files it needs: their selection ids (in the chunk's file order), each one's wanted windows
    (numbered in the file, ascending: offsets into `windows`), and the order to yield the wanted windows in."""

    piece: Piece
    files: np.ndarray  # selection ids
    shards: np.ndarray  # selected shard of each file
    cuts: np.ndarray  # file i's wanted windows are windows[cuts[i]:cuts[i + 1]]
    windows: np.ndarray  # window numbers inside each file
    arrangement: np.ndarray  # the piece's windows as positions in the files' wanted windows laid end to end


class ChunkInput(NamedTuple):
    """What a chunk is built from: files cut to their wanted windows, and the order to yield those in."""

    records: List[FileRecord]
    order: np.ndarray


def piece_plan(order: EpochOrder, piece: Piece, bounds: np.ndarray) -> PiecePlan:
    """The files piece `piece` needs and where its windows are in them."""
    edges = order.chunk_file_windows(piece.chunk)
    wanted = np.sort(piece.windows)
    file_of = np.searchsorted(edges, wanted, side="right") - 1
    cuts = np.flatnonzero(np.diff(file_of, prepend=-1))  # file_of is sorted: where each file's windows begin
    used = file_of[cuts]
    files = order.files[order.chunk_files[piece.chunk] + used]
    shards = np.searchsorted(bounds, files, side="right") - 1
    return PiecePlan(piece, files, shards, np.append(cuts, len(wanted)), wanted - edges[file_of],
                     np.searchsorted(wanted, piece.windows))


PlanFiles = List[Tuple[PiecePlan, Dict[int, Optional[FileRecord]]]]  # plans with their files (None: skipped)


def read_plans(plans: Iterable[PiecePlan], read: ReadFiles, done_reads: List[Tuple[int, np.ndarray]],
               shard_files: Optional[np.ndarray] = None, first_alone: bool = True) -> Iterator[PlanFiles]:
    """Plans with their files (None: its shard was skipped), in order, a list per read: consecutive pieces on one
    shard are read at once (a shard holds many chunks), up to RUN_FILES files; the first piece alone with
    `first_alone`, each of its files by its own byte range, so that the first batch waits for its own files
    only, not for a whole shard to be read and hashed (unless they are half of it or more: `shard_files`, the
    files of each shard); their shards are read whole right after, so that every shard still gets its checks.
    Reads that worked go to `done_reads`."""
    waiting: List[PiecePlan] = []
    run: List[np.ndarray] = []
    run_shard = -1
    held: Dict[int, Optional[FileRecord]] = {}
    alone_reads: List[Tuple[int, np.ndarray]] = []

    def flush(alone: bool = False) -> None:
        if run:
            ids = distinct(np.concatenate(run))
            alone = alone and few(ids, run_shard, shard_files)
            records = read(run_shard, ids, alone)
            if alone:
                alone_reads.append((run_shard, ids))
            elif records is not None:
                done_reads.append((run_shard, ids))
            held.update(zip(ids.tolist(), records if records is not None else [None] * len(ids)))
            run.clear()

    def done(plans: List[PiecePlan], current: Optional[PiecePlan] = None) -> PlanFiles:
        """The finished plans with their files; files only `current` still needs stay held."""
        out = [(plan, {i: held[i] for i in plan.files.tolist()}) for plan in plans]
        keep = set(current.files.tolist()) if current is not None else set()
        for i in [i for i in held if i not in keep]:
            del held[i]
        return out

    for n, plan in enumerate(plans):
        for j, ids in _shard_runs(plan):
            if j != run_shard or sum(map(len, run)) >= RUN_FILES:
                flush(alone=n == 0 and first_alone)
                if waiting:
                    yield done(waiting, plan)
                    waiting = []
                run_shard = j
            run.append(ids)
        waiting.append(plan)
        if n == 0 and first_alone:
            flush(alone=True)
            yield done(waiting)
            waiting, run_shard = [], -1
            for j, ids in alone_reads:  # now the shards those files came from, whole: every shard's checks still
                if read(j, ids, False) is not None:  # run (a bad one is an error, or skipped in warn mode), and
                    done_reads.append((j, ids))  # the bytes stay for the next run on that shard (decode.py)
    flush()
    if waiting:
        yield done(waiting)


def first_reads(order: EpochOrder, ranges: np.ndarray, bounds: np.ndarray) -> List[Tuple[int, np.ndarray]]:
    """(shard, selection ids) of the reads of single files that start ranges `ranges` (read_plans): the first
    piece's files, shard by shard, where they are few. What nextepoch.py reads ahead of an epoch."""
    piece = next(order.pieces(ranges), None)
    if piece is None:
        return []
    runs = [(j, distinct(ids)) for j, ids in _shard_runs(piece_plan(order, piece, bounds))]
    return [(j, ids) for j, ids in runs if few(ids, j, np.diff(bounds))]


def few(ids: np.ndarray, j: int, shard_files: Optional[np.ndarray]) -> bool:
    """Whether files `ids` of shard j are read each by its own byte range: fewer than half of the shard's (else
    reading the shard whole is less; with `shard_files` None, always)."""
    return shard_files is None or 2 * len(ids) < shard_files[j]


def distinct(ids: np.ndarray) -> np.ndarray:
    """`ids` sorted, each once (np.unique would import numpy.ma: 10 ms before the first batch)."""
    ids = np.sort(ids)
    return ids[np.diff(ids, prepend=-1) != 0]


def _shard_runs(plan: PiecePlan) -> Iterator[Tuple[int, np.ndarray]]:
    """(shard, selection ids) of a plan's files, shard run by shard run (a chunk's files are shard by shard)."""
    if not len(plan.files):
        return
    breaks = np.flatnonzero(np.diff(plan.shards)) + 1
    for ids, shards in zip(np.split(plan.files, breaks), np.split(plan.shards, breaks)):
        yield int(shards[0]), ids


def slot_chunks(order: EpochOrder, ranges: np.ndarray, bounds: np.ndarray, read: ReadFiles,
                filled: Callable[[int], None] = lambda n: None, where: str = "",
                ahead: bool = True, will_read: Optional[Callable[[int], None]] = None) -> Iterator[ChunkInput]:
    """What a worker yields of ranges `ranges` of the epoch's order, chunk by chunk, the reads a run ahead in a
    thread (`ahead`), or each shard named to `will_read` before it is read (see `hinted`). A shard skipped in warn
    mode leaves its windows out; they are made up at the end (fill_in), so that this worker still yields its
    planned count and every rank len() items (a rank that yields fewer batches hangs the others in their next
    all-reduce)."""
    if will_read is not None:
        read = hinted(read, order, np.diff(bounds), will_read)
    done_reads: List[Tuple[int, np.ndarray]] = []
    reads = read_plans((piece_plan(order, piece, bounds) for piece in order.pieces(ranges)), read, done_reads,
                       np.diff(bounds))
    lost = 0
    for group in read_ahead(reads, name="shards") if ahead else reads:
        while group:  # files are views of their shard's bytes: none is held on to once its chunk is yielded
            chunk, missing = assemble(*group.pop(0))  # (decode.read_reusing reuses a shard buffer once free)
            lost += missing
            if len(chunk.order):
                yield chunk
            del chunk
    if lost:
        yield from fill_in(done_reads, lost, read, filled, where)


def hinted(read: ReadFiles, order: EpochOrder, shard_files: np.ndarray, will_read: Callable[[int], None]) -> ReadFiles:
    """`read`, each read followed by `will_read` of the shards read next, once each: the shard itself after some
    of its files were read alone (it is read whole right after), and the shards after it in the epoch's order
    that hold a chunk's windows (a chunk's files span several shards, read one after the other). For local
    shards: the kernel reads them from disk while this one's batches are built, with no thread of ours."""
    named: Set[int] = set()
    chunk = int(np.diff(order.chunk_starts).max()) if len(order.chunk_starts) > 1 else 0

    def read_then_name_the_next(j: int, ids: np.ndarray, alone: bool) -> Optional[List[FileRecord]]:
        records = read(j, ids, alone)
        for following in ([j] if alone else []) + order.shards_after(j, shard_files, chunk):
            if following not in named:
                named.add(following)
                will_read(following)
        return records

    return read_then_name_the_next


def assemble(plan: PiecePlan, records: Dict[int, Optional[FileRecord]]) -> Tuple[ChunkInput, int]:
    """(the piece's files cut to its windows with their order, windows lost to skipped shards)."""
    kept: List[FileRecord] = []
    present = np.zeros(len(plan.files), dtype=bool)
    for i, file_id in enumerate(plan.files.tolist()):
        record = records[file_id]
        if record is not None:
            present[i] = True
            wanted = plan.windows[plan.cuts[i] : plan.cuts[i + 1]]
            kept.append(dataclasses.replace(record, starts=record.starts[wanted]))
    if present.all():
        return ChunkInput(kept, plan.arrangement), 0
    window_present = np.repeat(present, np.diff(plan.cuts))
    renumbered = np.cumsum(window_present) - 1
    arrangement = plan.arrangement[window_present[plan.arrangement]]
    return ChunkInput(kept, renumbered[arrangement]), int((~window_present).sum())


def fill_in(done_reads: Sequence[Tuple[int, np.ndarray]], lost: int, read: ReadFiles, filled: Callable[[int], None],
            where: str) -> Iterator[ChunkInput]:
    """`lost` windows repeated from the files of `done_reads` (read again, in order, as often as needed)."""
    readable = list(range(len(done_reads)))
    while lost > 0:
        if not readable:
            raise ShardError(f"{where}: every shard of this worker's share was skipped; {lost} windows cannot be "
                             "made up from other files, so this rank would yield fewer batches than len()")
        for k in list(readable):
            records = read(*done_reads[k], False)
            if records is None:  # it failed this time
                readable.remove(k)
                continue
            taken: List[FileRecord] = []
            for record in records:
                take = min(lost, len(record.starts))
                if take:
                    taken.append(dataclasses.replace(record, starts=record.starts[:take]))
                    lost -= take
                if not lost:
                    break
            count = sum(len(r.starts) for r in taken)
            filled(count)
            yield ChunkInput(taken, np.arange(count, dtype=np.int64))
            if not lost:
                return
