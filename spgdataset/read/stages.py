"""The reader as a chain of small stages, each a plain generator over the one before it.

    plan (rules/plan.py)       [(shard, [(file, first window, end window), ...]), ...] for one worker
    -> planned_files           each shard read (decode.py) one ahead in a thread, its files restricted to their
                               planned window ranges; windows of skipped shards made up at the end (fill_in)
    -> shuffle_files           a shuffle buffer over files
    -> batching.iterate_windows  chunks of files, windows shuffled per chunk, batches by one gather each

SpectrogramDataset.iter_epoch composes them in a few lines; each is tested on its own. How the items then
travel (read ahead in a thread, into a DataLoader's shared slots) is the stream's choice (transport.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from ..errors import ShardError
from ..rules.plan import Pieces
from .prefetch import read_ahead
from .records import FileRecord

ShardPlan = List[Tuple[int, Pieces]]
ReadShard = Callable[[int, Pieces], Optional[List[FileRecord]]]  # None: the shard was skipped


def restrict(records: Sequence[FileRecord], pieces: Pieces) -> Iterator[FileRecord]:
    """Each file cut to its planned window range (pieces and records in the same order)."""
    for record, (a, b) in zip(records, pieces[:, 1:].tolist()):
        yield dataclasses.replace(record, starts=record.starts[a:b])


def planned_files(plan: ShardPlan, read: ReadShard, filled: Callable[[int], None] = lambda n: None,
                  where: str = "", ahead: bool = True) -> Iterator[FileRecord]:
    """The planned files, shard by shard, each shard read one ahead of its use in a thread (`ahead`), or when
    its turn comes.

    A shard skipped in warn mode (`read` gives None) leaves its windows out; they are made up at the end by
    `fill_in`, so that this worker still yields its planned count and every rank len() items (a rank that
    yields fewer batches hangs the others in their next all-reduce).
    """
    lost, done = 0, []
    shards: Iterator[Tuple[Tuple[int, Pieces], Optional[List[FileRecord]]]] = \
        (((k, pieces), read(k, pieces)) for k, pieces in plan)
    for (k, pieces), records in read_ahead(shards) if ahead else shards:
        if records is None:
            lost += int((pieces[:, 2] - pieces[:, 1]).sum())
            continue
        done.append((k, pieces))
        yield from restrict(records, pieces)
    if lost:
        yield from fill_in(done, lost, read, filled, where)


def fill_in(done: ShardPlan, lost: int, read: ReadShard, filled: Callable[[int], None],
            where: str) -> Iterator[FileRecord]:
    """`lost` windows repeated from the shards of `done` (read again, in plan order, as often as needed)."""
    readable = list(range(len(done)))
    while lost > 0:
        if not readable:
            raise ShardError(f"{where}: every shard of this worker's share was skipped; {lost} windows cannot be "
                             "made up from other files, so this rank would yield fewer batches than len()")
        for j in list(readable):
            k, pieces = done[j]
            records = read(k, pieces)
            if records is None:  # it failed this time
                readable.remove(j)
                continue
            for record in restrict(records, pieces):
                take = min(lost, len(record.starts))
                filled(take)
                yield dataclasses.replace(record, starts=record.starts[:take])
                lost -= take
                if not lost:
                    return


def shuffle_files(files: Iterable[FileRecord], bufsize: int, seed: int) -> Iterator[FileRecord]:
    """A shuffle buffer as webdataset's: once `bufsize` files are in, each new one sends out one drawn at
    random; the rest leave shuffled at the end."""
    rng, buffer = random.Random(seed), []
    for record in files:
        buffer.append(record)
        if len(buffer) >= bufsize:
            k = rng.randrange(len(buffer))
            buffer[k], buffer[-1] = buffer[-1], buffer[k]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer
