"""Elastic resume with real processes (torchrun, gloo on 127.0.0.1): an epoch stopped on 2 nodes x 2 ranks x 2
DataLoader workers, resumed from rank 0's saved state on 1 node x 3 ranks x 1 worker and, separately, on 3 nodes x
1 rank x 2 workers (tests/read/elastic_job.py is one rank)."""

import json
import os
from typing import Dict, List, Tuple

import pytest

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus
from tests.read import test_ddp as ddp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]  # starts processes

JOB = os.path.join(os.path.dirname(__file__), "elastic_job.py")
EPOCH, BATCH, STOP = 1, 16, 5  # elastic_job.py's defaults for the epoch and batch size
Window = Tuple[str, int]


def run_nodes(nnodes: int, nproc: int, *args: str, timeout: float = 150) -> None:
    ddp.run_nodes(JOB, nnodes, nproc, *args, timeout=timeout)


def load(out: str, name: str, world: int) -> List[dict]:
    results = []
    for rank in range(world):
        with open(os.path.join(out, f"{name}{rank}.json")) as f:
            results.append(json.load(f))
    assert [r["rank"] for r in results] == list(range(world)) and all(r["world"] == world for r in results)
    return results


def windows(result: dict) -> List[Window]:
    return [(k, s) for batch in result["batches"] for k, s in batch]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, object]:
    """The stopped run and both resumes (about 1150 windows of 1.92 s: ~18 batches of 16 per rank on 4 ranks)."""
    root = tmp_path_factory.mktemp("elastic_ddp")
    metadata = make_corpus(root / "audio", 150, seed=3, min_seconds=4, max_seconds=12)
    shards = str(root / "shards")
    write_shards(root / "audio", metadata, shards, max_shard_files=3, workers=1, progress=False)
    out, state = str(root / "out"), str(root / "state.json")
    os.makedirs(out)
    run_nodes(2, 2, shards, out, "stopped", "--workers", "2", "--stop-after", str(STOP), "--save", state)
    run_nodes(1, 3, shards, out, "one_node", "--workers", "1", "--load", state)
    run_nodes(3, 1, shards, out, "three_nodes", "--workers", "2", "--load", state)
    with open(state) as f:
        saved = json.load(f)
    return {"shards": shards, "state": saved, "stopped": load(out, "stopped", 4),
            "one_node": load(out, "one_node", 3), "three_nodes": load(out, "three_nodes", 3)}


def canonical(shards: str) -> List[Window]:
    """The epoch's one order: what a single rank with one worker yields (elastic_job.py's settings)."""
    ds = SpectrogramDataset(shards, window_content_ratio=0, output_configuration={"spectrogram": False, "masks": []},
                            batch_size=BATCH, seed=5)
    return [(k, s) for batch in ds.iter_epoch(EPOCH) for k, s in zip(batch["key"], batch["start"].tolist())]


def test_the_stopped_run_saved_one_state(runs):
    stopped = runs["stopped"]
    assert all(len(r["batches"]) == STOP for r in stopped)
    assert all(r["state"] == runs["state"] for r in stopped), "every rank's state is rank 0's"
    state = runs["state"]
    assert (state["epoch"], state["consumed"], state["world_size"], state["num_workers"], state["stages"]) == \
        (EPOCH, STOP, 4, 2, [])


@pytest.mark.parametrize("resumed, workers", [("one_node", 1), ("three_nodes", 2)])
def test_resumed_on_three_ranks_yields_the_rest_of_the_epoch_once(runs, resumed, workers):
    """4 x 2 stopped after 5 batches per rank, resumed on 3 ranks (3 x 1 on one node, or 3 nodes x 1 rank x 2
    workers): equal batches per resumed rank, len(loader) says how many, no window twice, and the epoch's windows
    all come once but the trimmed ones:

        stage 1 (4 ranks): N windows, the last N % 4 of the order left out; 4 x 5 x 16 = 320 consumed
        stage 2 (3 ranks): R = N - N % 4 - 320 windows left, the last R % 3 of them left out
        missing = N % 4 + R % 3, exactly those windows (checked against the canonical order)
    """
    before, after = runs["stopped"], runs[resumed]
    assert all(r["loaded"]["stages"] == [[4, 2, STOP]] and r["loaded"]["consumed"] == 0 for r in after)
    counts = [len(r["batches"]) for r in after]
    assert len(set(counts)) == 1 and counts[0] > 0, f"unequal batch counts per rank: {counts}"
    assert counts == [r["len"] for r in after], "len(loader) must predict the batch count"
    assert all(len(batch) == BATCH for r in before for batch in r["batches"])

    order = canonical(runs["shards"])
    n = len(order)
    everything = SpectrogramDataset(runs["shards"], window_content_ratio=0, output_configuration={"masks": []})
    everything = everything.windows()
    assert sorted(order) == sorted(everything) and len(set(order)) == n
    consumed = [w for r in before for w in windows(r)]
    assert len(consumed) == 4 * STOP * BATCH
    seen = consumed + [w for r in after for w in windows(r)]
    assert len(seen) == len(set(seen)), "a window was yielded twice"
    remaining = n - n % 4 - len(consumed)
    assert n - len(seen) == n % 4 + remaining % 3

    # exactly which: each old rank consumed from its own quarter; the rest, in order, shared out in thirds
    quarter = n // 4
    for rank, r in enumerate(before):
        assert set(windows(r)) <= set(order[rank * quarter: (rank + 1) * quarter])
    taken = set(consumed)
    rest = [w for w in order[: 4 * quarter] if w not in taken]
    assert len(rest) == remaining
    third = remaining // 3
    for rank, r in enumerate(after):
        assert sorted(windows(r)) == sorted(rest[rank * third: (rank + 1) * third]), f"rank {rank}"
    assert set(everything) - set(seen) == set(order[4 * quarter:]) | set(rest[3 * third:])
    batches_per_worker = [-(-((w + 1) * third // workers - w * third // workers) // BATCH) for w in range(workers)]
    assert counts[0] == sum(batches_per_worker)


def test_both_resumes_cover_the_same_windows(runs):
    """How many workers each resumed rank has changes who yields what within the rank, not the epoch's rest."""
    one = [set(windows(r)) for r in runs["one_node"]]
    three = [set(windows(r)) for r in runs["three_nodes"]]
    assert one == three


def test_a_checkpoint_at_the_end_of_the_resumed_epoch_keeps_its_stages(runs):
    """What a job that checkpoints after each epoch saves: the finished stage must still be in it, or a load reads
    `consumed` as batches of a fresh epoch on 3 ranks."""
    for r in runs["one_node"] + runs["three_nodes"]:
        assert r["state"]["stages"] == [[4, 2, STOP]], r["state"]
