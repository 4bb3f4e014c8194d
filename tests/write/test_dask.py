"""spg-shard on Dask: a LocalCluster of two worker processes on 127.0.0.1 (a real scheduler and real worker
processes, as dask-jobqueue or dask-kubernetes would give), writing to a local folder and to the moto S3 server.
The output must be the local writer's, byte for byte, even when a worker dies in the middle of a shard."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

from spgdataset import SpgError, write_shards  # noqa: E402
from spgdataset.demo import make_corpus  # noqa: E402
from spgdataset.write.cluster import DaskExecutor  # noqa: E402
from spgdataset.write.tasks import header_task  # noqa: E402
from tests.s3server import BUCKET  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def client(moto):
    """Two one-thread worker processes; their environment reaches the moto server (set at their start)."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.ERROR, env=moto.env())
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def no_temporaries(folder) -> list:
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names if ".tmp" in n]


def test_dask_writes_the_bytes_of_the_local_writer(client, run16k, corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    result = write_shards(root, meta, tmp_path / "out", max_shard_files=3, client=client, progress=False)
    assert result.manifest is not None and result.shards_written == len(result.manifest["shards"]) >= 3
    assert helpers.output_files(tmp_path / "out") == helpers.output_files(run16k[0])
    # the dashboard's names: the task prefixes the scheduler has seen
    prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert {"spg-shard", "spg-headers"} <= set(prefixes), prefixes
    again = write_shards(root, meta, tmp_path / "out", max_shard_files=3, client=client, progress=False)
    assert (again.shards_written, again.headers_read) == (0, 0)


def test_dask_writes_the_same_bytes_to_s3(client, aws, moto, run16k, corpus16k, helpers):
    root, meta = corpus16k
    result = write_shards(root, meta, f"s3://{BUCKET}/dask", max_shard_files=3, client=client, progress=False)
    assert result.manifest == helpers.manifest(run16k[0])
    stored = {n: b for n, b in moto.objects("dask").items() if not n.startswith(".spg-state/")}
    assert stored == helpers.output_files(run16k[0])


class KillMidShard(distributed.WorkerPlugin):
    """Kills its worker process (os._exit, as the out-of-memory killer would) once shard 1 is being written:
    its temporary file is open in the output folder. Acts once (a marker file), on whichever worker runs it."""

    name = "kill-mid-shard"

    def __init__(self, out: str, marker: str) -> None:
        self.out, self.marker = out, marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith("spg-shard-000001-") and not os.path.exists(self.marker):
            threading.Thread(target=self.kill_while_writing, daemon=True).start()

    def kill_while_writing(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            names = os.listdir(self.out) if os.path.isdir(self.out) else []
            partial = [n for n in names if n.startswith(".shard-000001.tar.tmp")]
            if partial:
                with open(self.marker, "w") as f:
                    f.write(partial[0])
                os._exit(1)
            time.sleep(0.0002)


def test_a_worker_killed_mid_shard_loses_nothing(client, tmp_path, helpers):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=150, seed=4, rates=(44100,), min_seconds=2, max_seconds=4)
    reference = tmp_path / "reference"
    write_shards(root, meta, reference, workers=1, max_shard_files=8, progress=False)
    out, marker = tmp_path / "out", tmp_path / "killed"
    client.register_plugin(KillMidShard(str(out), str(marker)))
    try:
        result = write_shards(root, meta, out, max_shard_files=8, client=client, progress=False)
    finally:
        client.unregister_worker_plugin(KillMidShard.name)
    assert marker.read_text().startswith(".shard-000001.tar.tmp"), "the worker was not killed mid-shard"
    assert result.shards_written == len(result.manifest["shards"]) >= 4
    assert helpers.output_files(out) == helpers.output_files(reference)
    assert no_temporaries(out) == []  # the killed attempt's temporary file is cleaned when the set is complete


def test_workers_that_cannot_see_a_path_are_named(client, tmp_path):
    executor = DaskExecutor(client, [str(tmp_path), str(tmp_path / "not-shared")])
    with pytest.raises(SpgError, match=r"cannot see .*not-shared.*shared file system"):
        list(executor.run(header_task, [("spg-headers-000000", ([],))]))


def test_cli_on_a_local_cluster(run16k, corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    done = helpers.run_cli([root, meta, tmp_path / "out", "--max-shard-files", "3", "--scheduler", "local:2"],
                           timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Dask scheduler tcp://127.0.0.1:" in done.stderr and "2 workers" in done.stderr
    assert helpers.output_files(tmp_path / "out") == helpers.output_files(run16k[0])


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "local:2", "--workers", "2"], "--workers sets local processes"),
    (["--scheduler", "local:zero"], "expected local:N"),
])
def test_scheduler_mistakes_are_one_line(args, message, corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    done = helpers.run_cli([root, meta, tmp_path / "out", *args])
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
    assert message in done.stderr.strip().splitlines()[-1]  # the last line says it (after argparse's usage)


def test_an_unreachable_scheduler_is_one_line(corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    started = time.monotonic()
    done = helpers.run_cli([root, meta, tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9"], timeout=120)
    assert done.returncode == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - started < 60


SHARD_TASK_FAULTS = """
import json, resource, sys
from spgdataset.format.features import FeatureConfig
from spgdataset.storage import at
from spgdataset.write.headers import HeaderCache, read_headers
from spgdataset.write.executors import InProcess
from spgdataset.write.inputs import collect_inputs
from spgdataset.write.plan import plan_files
from spgdataset.write.tasks import shard_task
entries, _ = collect_inputs(sys.argv[1], sys.argv[2])
headers, _, _ = read_headers(entries, InProcess(), HeaderCache(), progress=False)
planned, _ = plan_files(entries, headers, FeatureConfig())
shard_task(at(sys.argv[3]), 0, planned[:2], FeatureConfig(), False, False)  # warm: imports, filters
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
shard_task(at(sys.argv[3]), 1, planned, FeatureConfig(), False, False)
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / len(planned)))
"""


def test_shard_tasks_keep_their_memory_in_a_dask_worker_environment(tmp_path):
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which made glibc map and unmap every large buffer
    (about 300 page faults a file, 2.3x the time); a shard task keeps freed memory for reuse meanwhile."""
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=40, seed=8, min_seconds=2, max_seconds=3)
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, "-c", SHARD_TASK_FAULTS, str(root), meta, str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    faults_per_file = float(done.stdout.strip().splitlines()[-1])
    assert faults_per_file < 100, faults_per_file  # ~290 without; ~40 with, the heap growing once per task


class _Server:
    """A TCP server on 127.0.0.1 that is not a Dask scheduler: silent (as an HTTP server waiting for a request) or
    answering garbage (a length field of 2**64 - 1)."""

    def __init__(self, answer: bytes) -> None:
        import socket

        self.answer, self.sock = answer, socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.address = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        self.connections: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            if self.answer:
                conn.sendall(self.answer)


@pytest.mark.parametrize("answer, message", [
    (b"", "says nothing within 5 s, where a Dask scheduler greets at once"),
    (b"\xff" * 64, "does not answer as a Dask scheduler"),
])
def test_a_server_that_does_not_speak_dask_is_one_line_within_seconds(answer, message, corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    server = _Server(answer)
    started = time.monotonic()
    done = helpers.run_cli([root, meta, tmp_path / "out", "--scheduler", server.address], timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and server.address in lines[0], done.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()
