"""Multi-node DDP with real processes: 2 simulated nodes x 2 ranks (torchrun, gloo on 127.0.0.1), 2 workers each."""

import json
import os
import socket
import subprocess
import sys

import pytest

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus

pytestmark = pytest.mark.slow  # starts servers or processes


JOB = os.path.join(os.path.dirname(__file__), "ddp_job.py")
WORLD = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    metadata = make_corpus(root / "audio", 150, seed=3, min_seconds=4, max_seconds=12)
    many = root / "many"
    one = root / "one"
    write_shards(root / "audio", metadata, many, max_shard_files=3, workers=1, progress=False)
    write_shards(root / "audio", metadata, one, max_shard_files=10_000, workers=1, progress=False)
    return {"many": str(many), "one": str(one), "root": root}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(job: str, nnodes: int, nproc: int, *args: str, timeout: float = 300) -> None:
    """`nnodes` torchrun 'nodes' of `nproc` ranks each running `job`; fails (instead of hanging) if any rank hangs."""
    port = str(free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node),
             "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", port, job, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in range(nnodes)
    ]
    try:
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        pytest.fail(f"DDP job on {nnodes} x {nproc} did not finish in {timeout} s (a rank hung?)")
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]


def run_two_nodes(shards: str, out: str, *extra: str, timeout: float = 300) -> None:
    """Two torchrun 'nodes' of 2 processes each."""
    os.makedirs(out, exist_ok=True)
    run_nodes(JOB, 2, 2, shards, out, *extra, timeout=timeout)


def load(out: str, name: str):
    results = []
    for rank in range(WORLD):
        with open(os.path.join(out, f"{name}{rank}.json")) as f:
            results.append(json.load(f))
    return results


def all_windows(shards: str):
    dataset = SpectrogramDataset(shards, window_content_ratio=0, output_configuration={"masks": ["speech"]})
    return dataset.windows()


@pytest.fixture(scope="module")
def full_run(corpus):
    out = str(corpus["root"] / "full")
    run_two_nodes(corpus["many"], out)
    return load(out, "full")


def check_epoch(results, shards):
    counts = [len(r["batches"]) for r in results]
    assert all(r["world"] == WORLD for r in results)
    assert len(set(counts)) == 1, f"unequal batch counts per rank: {counts}"
    assert counts == [r["len"] for r in results], "len(loader) must predict the batch count"
    seen = [tuple(w) for r in results for batch in r["batches"] for w in batch]
    assert len(seen) == len(set(seen)), "a window was yielded twice"
    everything = set(all_windows(shards))
    assert set(seen) <= everything
    # docs/dataset.md's promise: all but fewer than world_size windows per epoch
    assert len(everything) - len(seen) == len(everything) % WORLD


def test_equal_batches_and_distinct_windows(full_run, corpus):
    check_epoch(full_run, corpus["many"])


def test_resume_yields_exactly_the_rest(full_run, corpus):
    out = str(corpus["root"] / "resume")
    run_two_nodes(corpus["many"], out, "--stop-after", "5")
    run_two_nodes(corpus["many"], out, "--resume")
    stopped, resumed = load(out, "stopped"), load(out, "resumed")
    for rank in range(WORLD):
        assert len(stopped[rank]["batches"]) == 5
        assert stopped[rank]["batches"] + resumed[rank]["batches"] == full_run[rank]["batches"], f"rank {rank}"


def test_one_shard_four_ranks_does_not_hang(corpus):
    out = str(corpus["root"] / "one_out")
    run_two_nodes(corpus["one"], out, timeout=240)
    check_epoch(load(out, "full"), corpus["one"])


def test_long_files_in_segments_split_across_ranks_as_whole_files(corpus):
    """The same corpus with every file in segments (2.03 s owned, 2 s overlap: a 1.92 s window fits): each rank
    gets equal batches, no window twice, and together the whole files' windows."""
    from tests.helpers import index_rows

    segmented = corpus["root"] / "segmented"
    write_shards(corpus["root"] / "audio", corpus["root"] / "audio" / "metadata.json", segmented, max_shard_files=3,
                 workers=1, progress=False, segments=(2.03, 2.0))
    rows = index_rows(segmented)
    assert len(rows) > len(index_rows(corpus["many"])), "no file was cut into segments"
    out = str(corpus["root"] / "segmented_out")
    run_two_nodes(str(segmented), out)
    results = load(out, "full")
    check_epoch(results, str(segmented))
    path_of = {r["key"]: r["path"] for r in rows + index_rows(corpus["many"])}
    seen = {(path_of[k], s) for r in results for batch in r["batches"] for k, s in batch}
    whole = {(path_of[k], s) for k, s in all_windows(corpus["many"])}
    assert seen <= whole and len(whole) - len(seen) == len(whole) % WORLD
