"""Elastic resume in one process: an epoch stopped on one layout (world size x DataLoader workers) and resumed on
another (spgdataset/rules/elastic.py, read/cursor.py, read/stream.py).

Ranks are datasets made with rank=r, world_size=W. DataLoader workers are simulated as torch runs them
(`run_rank`): each worker runs the stream's own `stream()` (what a DataLoader worker iterates, told which worker it
is through `current_worker`), the loader takes items from the workers in turn, skipping exhausted ones, and counts
them in the training process (`cursor.track`, as SpectrogramLoader does). Workers 0 means no DataLoader: the
stream is iterated in this process and counts itself. Two slow tests use real DataLoader workers.

What is checked, against a model written here from the rules (not from spgdataset.rules.elastic): an epoch's
windows have one canonical order (the world-1, one-worker stream); a stage shares out a sequence of it, each rank
an equal contiguous part (world > 1 leaves out the last `length % world`), each worker an equal contiguous part of
its rank's; a stage stopped after k items per rank is recorded when the run resumes on another layout and it had
consumed something (or stages came before it), and the next stage's sequence is the old one, trimmed, without
what was consumed. drop_last leaves out each worker's partial last batch of the final stage.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple
from unittest import mock

import pytest

import spgdataset.read.stream as stream_module
from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter, write_shards
from spgdataset.demo import make_corpus
from spgdataset.read.stream import EpochStream

LIGHT = {"spectrogram": False, "masks": [], "meta": []}  # key and start are all the checks need
EPOCH = 3
Window = Tuple[Any, ...]  # (key, start), or (dataset, key, start) from a router


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Dict[str, str]:
    """Two shard sets of 2-5 s files, three files a shard: a (120 s, ~1150 windows) and b (60 s, ~550 windows)."""
    out = {}
    for name, seconds, seed in (("a", 120, 4), ("b", 60, 9)):
        root = tmp_path_factory.mktemp(f"elastic_{name}")
        metadata = make_corpus(root / "audio", total_seconds=seconds, seed=seed, min_seconds=2, max_seconds=5)
        write_shards(root / "audio", metadata, root / "shards", max_shard_files=3, workers=1, progress=False)
        out[name] = str(root / "shards")
    return out


def make(source: str, rank: int = 0, world: int = 1, workers: int = 0, batch_size: Optional[int] = 16,
         drop_last: bool = False, **kwargs: Any) -> SpectrogramDataset:
    """A window every 50 ms; chunks of 300 windows (several per epoch, so the order is shuffled across files)."""
    kwargs.setdefault("seed", 5)
    return SpectrogramDataset(source, window_content_ratio=0, window_offset_sec=0.05, output_configuration=LIGHT,
                              shuffle_buffer=300, rank=rank, world_size=world, num_workers=workers,
                              batch_size=batch_size, drop_last=drop_last, **kwargs)


def windows_in(item: Dict[str, Any]) -> List[Window]:
    """The windows of an item (a batch or a single window), tagged with their dataset when a router gave them."""
    if isinstance(item["key"], list):
        pairs = list(zip(item["key"], item["start"].tolist()))
        if "dataset" in item:
            return [(d, k, s) for d, (k, s) in zip(item["dataset"].tolist(), pairs)]
        return pairs
    pair = (item["key"], int(item["start"]))
    return [(int(item["dataset"]), *pair)] if "dataset" in item else [pair]


def round_robin(parts: Sequence[Iterator[Any]]) -> Iterator[Tuple[int, Any]]:
    """What a DataLoader does with its workers' iterators: one item from each in turn, exhausted ones skipped."""
    live = [True] * len(parts)
    w = 0
    while any(live):
        if live[w]:
            item = next(parts[w], None)
            if item is None:
                live[w] = False
            else:
                yield w, item
        w = (w + 1) % len(parts)


Items = List[Tuple[int, List[Window]]]  # (DataLoader worker, windows) per item, in the order the loop got them


def run_rank(stream: EpochStream, workers: int, stop: Optional[int] = None) -> Items:
    """One rank's training loop over its current epoch with `workers` simulated DataLoader workers (0: iterated
    in this process), stopped after `stop` items (None: to the end)."""
    parts: List[Iterator[Any]] = []
    if workers == 0:
        parts = [iter(stream)]  # counts its items itself
        source: Iterator[Tuple[int, Any]] = zip(itertools.repeat(0), parts[0])
    else:
        for w in range(workers):
            with mock.patch.object(stream_module, "current_worker", return_value=(w, workers, True)):
                parts.append(stream.stream())
        source = stream.cursor.track(round_robin(parts), stream.cursor.epoch, counting=True)
    out: Items = []
    try:
        if stop != 0:
            for w, item in source:
                out.append((w, windows_in(item)))
                if stop is not None and len(out) == stop:
                    break
    finally:
        for part in [source, *parts]:
            close = getattr(part, "close", None)
            if close is not None:
                close()
    return out


class Rank(NamedTuple):
    items: Items
    length: int  # len() after set_epoch / load_state_dict, before iterating
    state: Dict[str, Any]  # state_dict() after the loop
    loaded: Dict[str, Any]  # state_dict() after set_epoch / load_state_dict, before iterating


Make = Callable[[int, int, int], EpochStream]  # (rank, world, workers) -> a fresh stream


def run_stage(make_stream: Make, world: int, workers: int, state: Optional[Dict[str, Any]] = None,
              stop: Optional[int] = None) -> List[Rank]:
    """Every rank of a layout, each loading `state` first (else starting epoch EPOCH), stopped after `stop`."""
    ranks = []
    for rank in range(world):
        stream = make_stream(rank, world, workers)
        if state is None:
            stream.set_epoch(EPOCH)
        else:
            stream.load_state_dict(state)
        length, loaded = len(stream), stream.state_dict()
        items = run_rank(stream, workers, stop)
        ranks.append(Rank(items, length, stream.state_dict(), loaded))
    return ranks


def saved_state(ranks: List[Rank]) -> Dict[str, Any]:
    """Rank 0's state, after checking every rank saved the same one (equal counts: one state fits all)."""
    states = [r.state for r in ranks]
    assert all(s == states[0] for s in states), states
    return states[0]


def flat(items: Items) -> List[Window]:
    return [w for _, windows in items for w in windows]


def canonical(source: str, batch_size: Optional[int], epoch: int = EPOCH, **kwargs: Any) -> List[Window]:
    """The epoch's canonical order: what one rank with one worker yields, window by window."""
    key = (source, batch_size, epoch, tuple(sorted(kwargs.items())))
    if key not in _CANONICAL:
        ds = make(source, batch_size=batch_size, **kwargs)
        _CANONICAL[key] = [w for item in ds.iter_epoch(epoch) for w in windows_in(item)]
    return list(_CANONICAL[key])


_CANONICAL: Dict[Tuple[Any, ...], List[Window]] = {}


def batches(n: int, batch_size: Optional[int], drop_last: bool) -> int:
    size = batch_size or 1
    return n // size if drop_last else -(-n // size)


def share(length: int, world: int) -> int:
    return length // world if world > 1 else length


def parts(sequence: List[Window], world: int, workers: int) -> List[List[List[Window]]]:
    """[rank][worker] -> its contiguous part of `sequence`."""
    per, n = share(len(sequence), world), max(workers, 1)
    return [[sequence[r * per + w * per // n: r * per + (w + 1) * per // n] for w in range(n)] for r in range(world)]


class Model:
    """The stages of an epoch by the rules, checked stage by stage against what the ranks yielded."""

    def __init__(self, sequence: List[Window], batch_size: Optional[int], drop_last: bool) -> None:
        self.sequence, self.batch_size, self.drop_last = sequence, batch_size, drop_last
        self.recorded = 0  # finished stages in the state
        self.seen: List[Window] = []

    def full(self, part: List[Window]) -> List[Window]:
        """What a worker with this part yields when it runs to its end."""
        if self.drop_last and self.batch_size:
            return part[: len(part) // self.batch_size * self.batch_size]
        return part

    def check(self, ranks: List[Rank], world: int, workers: int, stopped: bool) -> None:
        """The stage's items: each worker a prefix of its part (all of it when not stopped), equal counts on every
        rank, len() the items of the whole stage; then the next stage's sequence if the state will record it."""
        expected = parts(self.sequence, world, workers)
        stage_items = sum(batches(len(self.full(p)), self.batch_size, self.drop_last) for p in expected[0])
        consumed = []
        for r, rank in enumerate(ranks):
            assert rank.length == stage_items, f"rank {r}: len() {rank.length}, its stage has {stage_items} items"
            for w, part in enumerate(expected[r]):
                got = [x for v, windows in rank.items if v == w for x in windows]
                full = self.full(part)
                if stopped:
                    assert got == full[: len(got)], f"rank {r} worker {w}: not a prefix of its part"
                else:
                    assert got == full, f"rank {r} worker {w}: not its whole part"
                consumed += got
            if self.batch_size and self.drop_last:
                assert all(len(windows) == self.batch_size for _, windows in rank.items)
        counts = [len(rank.items) for rank in ranks]
        assert len(set(counts)) == 1, f"unequal items per rank: {counts}"
        if not stopped:
            assert counts[0] == stage_items
        self.seen += consumed
        if stopped and (consumed or self.recorded):  # the resume on another layout makes it a finished stage
            taken = set(consumed)
            self.sequence = [x for x in self.sequence[: world * share(len(self.sequence), world)] if x not in taken]
            self.recorded += 1


def expected_missing(total: int, stopped: Sequence[Tuple[int, int]], final: Tuple[int, int],
                     batch_size: Optional[int], drop_last: bool) -> int:
    """Windows of the epoch never yielded, from counts alone: each recorded stage (world, windows consumed over all
    ranks) leaves out `length % world` (world > 1) and passes on the rest minus what it consumed; the final stage
    (world, workers) leaves out its own `length % world` and, with drop_last, each worker's partial last batch."""
    length, missing = total, 0
    for world, consumed in stopped:
        trimmed = length - world * share(length, world)
        missing += trimmed
        length -= trimmed + consumed
    world, workers = final
    per = share(length, world)
    missing += length - world * per
    if drop_last and batch_size:
        n = max(workers, 1)
        missing += world * sum(((w + 1) * per // n - w * per // n) % batch_size for w in range(n))
    return missing


def dataset_maker(source: str, batch_size: Optional[int], drop_last: bool, **kwargs: Any) -> Make:
    return lambda rank, world, workers: make(source, rank, world, workers, batch_size, drop_last, **kwargs)


# ---------------------------------------------------------------- one order, any layout


@pytest.mark.parametrize("world, workers", [(1, 1), (1, 3), (2, 1), (2, 3), (3, 2), (4, 1), (5, 2)])
def test_slots_are_contiguous_ranges_of_one_order(corpus, world, workers):
    """Single windows: the ranks' workers' streams, concatenated rank-major worker-minor, are the world-1 one-worker
    stream in order, up to the last `total % world` windows; and rank 0 worker 0's first batch is the first
    batch_size windows of the canonical order whatever the layout."""
    order = canonical(corpus["a"], None)
    total = len(order)
    assert total == make(corpus["a"]).num_windows() and len(set(order)) == total
    concatenated = []
    for rank in range(world):
        ds = make(corpus["a"], rank, world, workers, batch_size=None)
        for w in range(workers):
            concatenated += [x for item in ds.iter_epoch(EPOCH, w, workers) for x in windows_in(item)]
    assert concatenated == order[: world * share(total, world)]
    first = next(make(corpus["a"], 0, world, workers, batch_size=16).iter_epoch(EPOCH, 0, workers))
    assert sorted(windows_in(first)) == sorted(canonical(corpus["a"], 16)[:16])


def test_the_order_is_shuffled_by_seed_and_epoch_only(corpus):
    """A real shuffle (not file order), another one per epoch and per seed; the same for every drop_last, worker
    count and world size (the checks above cover the last two)."""
    order = canonical(corpus["a"], 16)
    assert sorted(order) == sorted(make(corpus["a"]).windows()) and order != make(corpus["a"]).windows()
    assert canonical(corpus["a"], 16, epoch=EPOCH + 1) != order
    assert canonical(corpus["a"], 16, seed=6) != order
    dropped = canonical(corpus["a"], 16, drop_last=True)  # the partial last batch left out, nothing else moved
    assert dropped == order[: len(order) // 16 * 16]
    assert canonical(corpus["a"], 16, workers=3) == order


# ---------------------------------------------------------------- stopped on one layout, resumed on another


LAYOUTS = [((2, 2), (1, 3)), ((2, 2), (3, 2)), ((1, 1), (4, 1)), ((1, 0), (4, 0)), ((3, 1), (2, 2)), ((3, 0), (2, 1))]
STOPS = ["zero", "middle", "last"]  # "before_last": in the chains and the router tests


def stop_at(where: str, length: int) -> int:
    return {"zero": 0, "middle": length // 2, "before_last": max(length - 1, 0), "last": length}[where]


@pytest.mark.parametrize("old, new", LAYOUTS, ids=[f"{a}x{b}-{c}x{d}" for (a, b), (c, d) in LAYOUTS])
@pytest.mark.parametrize("batch_size", [5, 16])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("where", STOPS)
def test_resume_on_another_layout(corpus, old, new, batch_size, drop_last, where):
    """Stopped after k items per rank on A ranks x B workers, resumed from rank 0's state on C x D: the new ranks
    yield equal counts, len() says how many, no window comes twice, and every window of the epoch comes once but
    the trimmed ones (counted from the rules), each worker's exactly the model's."""
    make_ds = dataset_maker(corpus["a"], batch_size, drop_last)
    (a, b), (c, d) = old, new
    length = len(make_ds(0, a, b))
    k = stop_at(where, length)
    before = run_stage(make_ds, a, b, stop=k)
    state = saved_state(before)
    assert state["consumed"] == k and state["world_size"] == a and state["num_workers"] == b
    assert state["stages"] == [] and state["epoch"] == EPOCH
    model = Model(canonical(corpus["a"], batch_size), batch_size, drop_last)
    total = len(model.sequence)
    model.check(before, a, b, stopped=True)

    after = run_stage(make_ds, c, d, state=state)
    model.check(after, c, d, stopped=False)

    seen = model.seen
    assert len(seen) == len(set(seen)), "a window was yielded twice"
    everything = set(make(corpus["a"]).windows())
    assert set(seen) <= everything and len(everything) == total
    consumed_before = sum(len(flat(r.items)) for r in before)
    stopped = [(a, consumed_before)] if k else []  # a run stopped before its first item is no stage
    assert total - len(seen) == expected_missing(total, stopped, (c, d), batch_size, drop_last)
    # the loaded state holds the finished stage (a save during the new stage carries it on), and starts it at 0
    assert after[0].loaded["stages"] == ([[a, max(b, 1), k]] if k else [])
    assert after[0].loaded["consumed"] == 0 and after[0].loaded["world_size"] == c


def _resumed_len(make_ds: Make, world: int, workers: int, state: Dict[str, Any]) -> int:
    """len() of rank 0 of a layout once it loaded `state`."""
    ds = make_ds(0, world, workers)
    ds.load_state_dict(state)
    return len(ds)


CHAINS = [
    # (world, workers, where it stops) per stage; the last runs to its end
    [(2, 2, "middle"), (3, 1, "middle"), (1, 2, None)],
    [(4, 1, "middle"), (2, 0, "before_last"), (3, 2, None)],
    [(1, 3, "last"), (3, 1, "middle"), (2, 2, None)],
    [(3, 2, "middle"), (2, 1, "zero"), (4, 1, None)],  # a resumed stage that consumed nothing is still a stage
]


@pytest.mark.parametrize("chain", CHAINS, ids=["2x2-3x1-1x2", "4x1-2x0-3x2", "1x3-3x1-2x2", "3x2-2x1-4x1"])
@pytest.mark.parametrize("batch_size, drop_last", [(None, False), (7, False), (7, True)])
def test_chain_of_two_resumes(corpus, chain, batch_size, drop_last):
    """A x B -> C x D -> E x F, each resume loading the state the stage before saved: the stages pile up in the
    state, each stage's workers yield exactly the model's parts, no window twice, the trimmed ones missing only."""
    make_ds = dataset_maker(corpus["a"], batch_size, drop_last)
    model = Model(canonical(corpus["a"], batch_size), batch_size, drop_last)
    total, state, stopped, rows = len(model.sequence), None, [], []
    for world, workers, where in chain:
        recorded = model.recorded
        if where is None:
            ranks = run_stage(make_ds, world, workers, state=state)
        else:
            length = len(make_ds(0, world, workers)) if state is None else _resumed_len(make_ds, world, workers, state)
            k = stop_at(where, length)
            ranks = run_stage(make_ds, world, workers, state=state, stop=k)
        model.check(ranks, world, workers, stopped=where is not None)
        if where is not None:
            state = saved_state(ranks)
            assert state["stages"] == rows
            if model.recorded > recorded:
                stopped.append((world, sum(len(flat(r.items)) for r in ranks)))
                rows = rows + [[world, max(workers, 1), k]]
    assert len(model.seen) == len(set(model.seen))
    assert total - len(model.seen) == expected_missing(total, stopped, chain[-1][:2], batch_size, drop_last)


def test_same_layout_resume_continues_exactly(corpus):
    """2 ranks x 3 workers stopped after 7 items and resumed on 2 x 3: each rank yields exactly the rest of the
    uninterrupted run, in its order (restarted workers play rotated roles), and no stage is recorded."""
    make_ds = dataset_maker(corpus["a"], 16, False)
    full = run_stage(make_ds, 2, 3)
    before = run_stage(make_ds, 2, 3, stop=7)
    state = saved_state(before)
    after = run_stage(make_ds, 2, 3, state=state)
    for r in range(2):
        assert flat(before[r].items) + flat(after[r].items) == flat(full[r].items)
        assert after[r].length == full[r].length and len(after[r].items) == full[r].length - 7  # len(): the epoch's
    assert after[0].state["stages"] == []


def test_the_epoch_after_a_resumed_one_is_whole(corpus):
    """After the resumed stage runs out, the next epoch on the new layout is a plain epoch: len() and the items are
    those of a fresh stream."""
    make_ds = dataset_maker(corpus["a"], 16, False)
    state = saved_state(run_stage(make_ds, 2, 2, stop=5))
    resumed = make_ds(0, 3, 1)
    resumed.load_state_dict(state)
    run_rank(resumed, 1)
    resumed.set_epoch(EPOCH + 1)
    fresh = make_ds(0, 3, 1)
    fresh.set_epoch(EPOCH + 1)
    assert len(resumed) == len(fresh)
    assert run_rank(resumed, 1) == run_rank(fresh, 1)


def test_state_saved_after_the_resumed_epoch_ended_yields_nothing_more(corpus):
    """A checkpoint written once the resumed epoch ran out (before set_epoch of the next): loading it on any layout
    yields nothing more of that epoch, as for a plain epoch saved at its end."""
    make_ds = dataset_maker(corpus["a"], 16, False)
    plain = make_ds(0, 3, 1)
    plain.set_epoch(EPOCH)
    run_rank(plain, 1)
    plain_end = plain.state_dict()
    again = make_ds(0, 3, 1)
    again.load_state_dict(plain_end)
    assert run_rank(again, 1) == []  # the plain case (len() stays the epoch's: 25)

    state = saved_state(run_stage(make_ds, 2, 2, stop=5))
    resumed = make_ds(0, 3, 1)
    resumed.load_state_dict(state)
    run_rank(resumed, 1)
    end = resumed.state_dict()
    for world, workers in ((3, 1), (2, 2)):
        again = make_ds(0, world, workers)
        again.load_state_dict(end)
        left = flat(run_rank(again, workers))
        assert left == [], f"{world}x{workers}: {len(left)} windows again of a finished epoch (state {end})"


@pytest.mark.parametrize("change, words", [
    ({"batch_size": 8}, "batch_size"),
    ({"seed": 6}, "seed"),
    ({"window_offset_sec": 0.1}, "window"),
    ({"shuffle_buffer": 400}, "chunks"),
])
def test_other_plans_are_still_refused(corpus, change, words):
    """Only the layout may change: another batch size, seed, window or chunking is refused on another layout too,
    before anything changes."""
    state = saved_state(run_stage(dataset_maker(corpus["a"], 16, False), 2, 2, stop=3))
    kwargs: Dict[str, Any] = {"batch_size": 16, **change}
    if set(change) <= {"batch_size", "seed"}:
        ds = make(corpus["a"], 0, 3, 1, **kwargs)
    else:  # window_offset_sec and shuffle_buffer are make()'s own
        kwargs = {"window_offset_sec": 0.05, "shuffle_buffer": 300, **kwargs}
        ds = SpectrogramDataset(corpus["a"], window_content_ratio=0, output_configuration=LIGHT, rank=0,
                                world_size=3, num_workers=1, seed=5, **kwargs)
    with pytest.raises(ValueError, match=words):
        ds.load_state_dict(state)
    assert ds.state_dict()["stages"] == [] and ds.cursor.resumed_at(EPOCH) == 0


def test_other_shards_and_too_many_items_are_refused(corpus):
    state = saved_state(run_stage(dataset_maker(corpus["a"], 16, False), 2, 2, stop=3))
    with pytest.raises(ValueError, match="shards"):
        make(corpus["b"], 0, 3, 1).load_state_dict(state)
    length = len(make(corpus["a"], 0, 2, 2))
    with pytest.raises(ValueError, match="consumed"):  # more than the saved layout's items
        make(corpus["a"], 0, 3, 1).load_state_dict({**state, "consumed": length + 1})
    with pytest.raises(ValueError, match="consumed"):  # a recorded stage that consumed more than it had
        make(corpus["a"], 0, 3, 1).load_state_dict({**state, "stages": [[4, 1, length]], "consumed": 0})


# ---------------------------------------------------------------- with real DataLoader workers


def loader_run(ds: SpectrogramDataset, workers: int, state: Optional[Dict[str, Any]] = None,
               stop: Optional[int] = None) -> Tuple[List[List[Window]], int, Dict[str, Any]]:
    loader = ds.loader(num_workers=workers, persistent_workers=False)
    if state is None:
        loader.set_epoch(EPOCH)
    else:
        loader.load_state_dict(state)
    length, batches_seen = len(loader), []
    for batch in loader:
        batches_seen.append(windows_in(batch))
        if stop is not None and len(batches_seen) == stop:
            break
    return batches_seen, length, loader.state_dict()


@pytest.mark.slow
def test_real_loaders_2x2_to_3x1_and_the_simulation_agrees(corpus):
    """Each rank's loader with 2 real DataLoader workers stopped after 6 batches; resumed by loaders with one
    worker on 3 ranks: the items are those the simulated DataLoader gives (both sides), no window twice, the rest
    of the epoch once but the trimmed windows."""
    make_ds = dataset_maker(corpus["a"], 16, False)
    before = [loader_run(make_ds(r, 2, 2), 2, stop=6) for r in range(2)]
    simulated = run_stage(make_ds, 2, 2, stop=6)
    assert [b[0] for b in before] == [[w for _, w in r.items] for r in simulated]
    state = before[0][2]
    assert state == before[1][2] == simulated[0].state
    after = [loader_run(make_ds(r, 3, 1), 1, state=state) for r in range(3)]
    simulated_after = run_stage(make_ds, 3, 1, state=state)
    assert [b[0] for b in after] == [[w for _, w in r.items] for r in simulated_after]
    assert len({len(b[0]) for b in after}) == 1 and all(length == len(seen) for seen, length, _ in after)
    seen = [w for run in before + after for batch in run[0] for w in batch]
    total = make(corpus["a"]).num_windows()
    assert len(seen) == len(set(seen))
    assert total - len(seen) == expected_missing(total, [(2, 2 * 6 * 16)], (3, 1), 16, False)


# ---------------------------------------------------------------- the router


def router_maker(corpus: Dict[str, str], stop: str, batch_size: Optional[int], drop_last: bool = False,
                 epoch_length: Optional[int] = None) -> Make:
    def build(rank: int, world: int, workers: int) -> SpectrogramDatasetRouter:
        dss = [make(corpus[n], rank, world, workers, batch_size, drop_last) for n in "ab"]
        return SpectrogramDatasetRouter(dss, weights=[0.6, 0.4], seed=2, stop=stop, epoch_length=epoch_length)
    return build


ROUTER_LAYOUTS = [((2, 1), (3, 1)), ((1, 2), (2, 1)), ((2, 0), (3, 2))]
ROUTER_RUNS = [(None, False, "middle"), (16, False, "middle"), (16, False, "before_last"), (16, True, "middle")]


@pytest.mark.parametrize("old, new", ROUTER_LAYOUTS, ids=[f"{a}x{b}-{c}x{d}" for (a, b), (c, d) in ROUTER_LAYOUTS])
@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted"])
@pytest.mark.parametrize("batch_size, drop_last, where", ROUTER_RUNS)
def test_router_resume_on_another_layout(corpus, old, new, stop, batch_size, drop_last, where):
    """A router of two datasets stopped on A x B and resumed on C x D: equal items per new rank, len() says how
    many, no window twice; with "all_exhausted" (and no drop_last) every window of both datasets comes once but
    each dataset's trimmed ones: `length % world` per stage, where stage 2's length is what stage 1 left."""
    make_router = router_maker(corpus, stop, batch_size, drop_last)
    (a, b), (c, d) = old, new
    k = stop_at(where, len(make_router(0, a, b)))
    before = run_stage(make_router, a, b, stop=k)
    state = saved_state(before)
    after = run_stage(make_router, c, d, state=state)
    counts = [len(r.items) for r in after]
    assert len(set(counts)) == 1 and all(r.length == len(r.items) for r in after), (counts, [r.length for r in after])
    assert all(len(r.items) == k for r in before)
    seen = [w for r in before + after for w in flat(r.items)]
    assert len(seen) == len(set(seen)), "a window was yielded twice"
    totals = [make(corpus[n]).num_windows() for n in "ab"]
    for i, n in enumerate("ab"):
        assert {w[1:] for w in seen if w[0] == i} <= set(make(corpus[n]).windows())
    if stop == "all_exhausted" and not drop_last:
        for i, total in enumerate(totals):
            consumed = sum(1 for r in before for w in flat(r.items) if w[0] == i)
            got = sum(1 for w in seen if w[0] == i)
            assert total - got == expected_missing(total, [(a, consumed)], (c, d), None, False), f"dataset {i}"


@pytest.mark.parametrize("batch_size", [None, 16])
def test_router_chain_of_two_resumes(corpus, batch_size):
    """all_exhausted on 2 x 1, stopped mid-epoch; 3 x 2, stopped mid-stage; 1 x 2 to the end: the router's states
    pile up stages like a dataset's, no window twice, each dataset's missing windows exactly its trimmed ones."""
    make_router = router_maker(corpus, "all_exhausted", batch_size)
    first = run_stage(make_router, 2, 1, stop=len(make_router(0, 2, 1)) // 3)
    state = saved_state(first)
    length = _resumed_len(make_router, 3, 2, state)
    second = run_stage(make_router, 3, 2, state=state, stop=length // 2)
    state2 = saved_state(second)
    assert state2["stages"] == [[2, 1, state["consumed"]]] and state2["consumed"] == length // 2
    third = run_stage(make_router, 1, 2, state=state2)
    assert third[0].loaded["stages"] == [[2, 1, state["consumed"]], [3, 2, length // 2]]
    assert third[0].length == len(third[0].items) > 0
    seen = [w for stage in (first, second, third) for r in stage for w in flat(r.items)]
    assert len(seen) == len(set(seen)), "a window was yielded twice"
    for i, n in enumerate("ab"):
        total = make(corpus[n]).num_windows()
        stopped = [(2, sum(1 for r in first for w in flat(r.items) if w[0] == i)),
                   (3, sum(1 for r in second for w in flat(r.items) if w[0] == i))]
        got = sum(1 for w in seen if w[0] == i)
        assert total - got == expected_missing(total, stopped, (1, 2), None, False), f"dataset {i}"


def test_router_resample_refuses_another_layout(corpus):
    make_router = router_maker(corpus, "resample", 16, epoch_length=400)
    state = saved_state(run_stage(make_router, 2, 1, stop=3))
    with pytest.raises(ValueError, match="world_size"):
        make_router(0, 3, 1).load_state_dict(state)
    with pytest.raises(ValueError, match="num_workers"):
        make_router(0, 2, 2).load_state_dict(state)
    same = run_stage(make_router, 2, 1, state=state)  # its own layout: the exact rest
    full = run_stage(make_router, 2, 1)
    assert [flat(r.items) for r in same] == [flat(r.items)[3 * 16:] for r in full]
