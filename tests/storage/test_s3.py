"""s3:// end to end against a real S3-API server on 127.0.0.1: moto's standalone server, started here.

Nothing is patched in-process: the server is `python -m moto.server` in a subprocess. moto accepts any
credentials unless IAM authentication is switched on; the credential tests switch it on (`moto.authenticating()`,
after IAM users and their access keys were made), so wrong credentials are really refused by the server. It
stays off elsewhere because moto 5.2 then miscomputes the signature of requests whose query holds a "/"
(ListObjectsV2 with Prefix="corpus/": SignatureDoesNotMatch), which real S3 accepts. A small TCP proxy (FaultProxy) sits in front of it where a test needs faults: it cuts,
resets or stalls GetObject responses of shards part-way through the body, or answers 503 SlowDown.
The credentials and the endpoint are set for these tests only (monkeypatched environment; the subprocesses
get an explicit environment); no address other than 127.0.0.1 is contacted (instance metadata is disabled).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from hashlib import sha256
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")  # the server runs in a subprocess; this only says it is installed

from spgdataset import ShardError, SpectrogramDataset, SpgError, s3, storage, write_shards  # noqa: E402
from spgdataset.demo import make_corpus  # noqa: E402
from spgdataset.storage.s3.cache import ShardCache  # noqa: E402
from spgdataset.storage.s3.client import backoff, client  # noqa: E402
from spgdataset.storage.s3.stream import S3Stream  # noqa: E402
from tests.helpers import index_rows  # noqa: E402
from tests.s3server import BUCKET, ENV_CLEARED, Moto  # noqa: E402

pytestmark = pytest.mark.slow  # starts servers or processes

SUMMARY_RE = re.compile(r"(\d+) shards written, (\d+) already complete")
# seconds: SPG_S3_LOCK_LEASE of the CLI runs here. Short, so that a killed run's lock runs out within a test, yet
# long enough that a second CLI process (which imports torch before it looks) meets a killed run's lock still alive
# on a slow machine: at 3 s, CI's rerun started after the lease had run out and was not refused.
LEASE = 12


# ---------------------------------------------------------------- the server: tests/s3server.py, fixtures in conftest.py


def open_shard(url: str) -> Any:
    """A shard's stream as a dataset opens one (without the manifest's size and sha256: never from the cache)."""
    folder, _, name = url.rpartition("/")
    return storage.at(folder).open_shard(name)


def manifest_of(url: str) -> Dict[str, Any]:
    return json.loads(storage.at(url).read_bytes("manifest.json", 1 << 30))


def run_cli(moto: Moto, args: List[Any], timeout: float = 120, **popen: Any) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env.update(moto.env(), SPG_S3_LOCK_LEASE=str(LEASE))
    return subprocess.run([sys.executable, "-m", "spgdataset.write.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **popen)


@pytest.fixture(scope="module")
def s3_shards(moto, corpus16k) -> str:
    """corpus16k written by the CLI to S3 with the arguments of the local `run16k` fixture."""
    root, meta = corpus16k
    url = f"s3://{BUCKET}/corpus/"
    done = run_cli(moto, [root, meta, url, "--workers", "1", "--max-shard-files", "3", "--quiet"])
    assert done.returncode == 0, done.stderr
    return url


def windows(source: Any, num_workers: int = 0, **loader_kwargs: Any) -> Dict[Tuple[str, int], bytes]:
    """{(key, start): spectrogram bytes} of one epoch in batches of 64; fails on a window seen twice."""
    ds = SpectrogramDataset(source, window_content_ratio=0, normalize=False, seed=3,
                            output_configuration={"spectrogram": True, "masks": []})
    out: Dict[Tuple[str, int], bytes] = {}
    for batch in ds.loader(batch_size=64, num_workers=num_workers, **loader_kwargs):
        for key, start, spec in zip(batch["key"], batch["start"].tolist(), batch["spectrogram"].numpy()):
            assert (key, start) not in out, f"window {key} {start} twice"
            out[key, start] = spec.tobytes()
    assert len(out) == len(ds.windows())
    return out


@pytest.fixture(scope="module")
def local_windows(run16k) -> Dict[Tuple[str, int], bytes]:
    return windows(run16k[0])


# ---------------------------------------------------------------- write and read


def test_cli_writes_the_same_bytes_to_s3_as_to_disk(moto, s3_shards, run16k, helpers):
    local = helpers.output_files(run16k[0])
    stored = moto.objects("corpus")
    published = {n: b for n, b in stored.items() if not n.startswith(".spg-state/")}
    assert published == local  # shards, index.bin, manifest.json: byte for byte
    records = [n for n in stored if n.startswith(".spg-state/")]
    assert {".spg-state/run.json", ".spg-state/headers.msgpack"} <= set(records)
    assert len(records) == len(helpers.manifest(run16k[0])["shards"]) + 2
    head = moto.client().head_object(Bucket=BUCKET, Key="corpus/shard-000000.tar")
    assert head["Metadata"]["sha256"] == sha256(local["shard-000000.tar"]).hexdigest()


def test_two_workers_stream_the_same_windows_as_local_disk(aws, s3_shards, local_windows):
    assert windows(s3_shards, num_workers=2) == local_windows


def test_s3_shards_are_read_ahead_in_a_thread_of_their_own(aws, s3_shards, monkeypatch):
    """In the training process the next S3 shard is downloaded in a thread while batches are built (local
    shards are named to the kernel instead: tests/read/test_stream.py)."""
    import threading

    started, start = [], threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda thread: (started.append(thread.name), start(thread))[1])
    ds = SpectrogramDataset(s3_shards, window_content_ratio=0, normalize=False, batch_size=8,
                            output_configuration={"spectrogram": True, "masks": []})
    assert sum(1 for _ in ds) == len(ds) > 0
    assert sorted(name for name in started if name.startswith("spgdataset-")) == [
        "spgdataset-batches", "spgdataset-next-epoch", "spgdataset-shards"]


def test_manifest_url_and_brace_lists(aws, s3_shards, local_windows, run16k):
    assert windows(s3_shards + "manifest.json") == local_windows
    wanted = ["shard-000000.tar", "shard-000002.tar"]
    selection = windows(s3_shards + "shard-00000{0,2}.tar")
    rows = [r for r in index_rows(run16k[0]) if r["shard"] in wanted]
    assert {k for k, _ in selection} == {r["key"] for r in rows}
    assert selection == {kw: v for kw, v in local_windows.items() if kw in selection}


def test_webdataset_opens_s3_urls(aws, moto, s3_shards):
    import webdataset as wds

    s3.register_with_webdataset()  # explicit: importing spgdataset changes no other library's tables

    samples = list(wds.WebDataset(s3_shards + "shard-{000000..000001}.tar", shardshuffle=False))
    assert len(samples) == 6 and all("spec.npy" in s for s in samples)
    with wds.TarWriter(f"s3://{BUCKET}/wds/copy.tar") as sink:  # gopen(url, "wb"): uploaded on close
        for sample in samples:
            sink.write({k: v for k, v in sample.items() if k in ("__key__", "spec.npy", "info.msgpack")})
    copied = list(wds.WebDataset(f"s3://{BUCKET}/wds/copy.tar", shardshuffle=False))
    assert [(s["__key__"], s["spec.npy"]) for s in copied] == [(s["__key__"], s["spec.npy"]) for s in samples]


# ---------------------------------------------------------------- faults


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of the moto server. For the next GET requests of `.tar` objects it
    applies, in order, one fault each: ("cut", n) closes both sockets after n bytes of the response body,
    ("reset", n) the same with a TCP reset, ("stall", n) stops forwarding after n body bytes and holds the
    connection until the client gives up, ("slowdown",) answers 503 SlowDown without asking the server."""

    def __init__(self, port: int, faults: List[tuple]) -> None:
        self.target, self.faults, self.lock = port, collections.deque(faults), threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.ranged_gets = 0
        threading.Thread(target=_accept_forever, args=(self.server, self._serve), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        pending: Dict[str, Any] = {"fault": None}
        threading.Thread(target=self._responses, args=(upstream, conn, pending), daemon=True).start()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                line = data.split(b"\r\n", 1)[0]
                if line.startswith(b"GET ") and b".tar" in line:
                    with self.lock:
                        self.ranged_gets += b"\r\nrange: bytes=" in data.lower()
                        fault = self.faults.popleft() if self.faults else None
                    if fault and fault[0] == "slowdown":
                        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                        conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                        break
                    pending["fault"] = fault
                upstream.sendall(data)
        except OSError:
            pass
        _close(conn, upstream)

    def _responses(self, upstream: socket.socket, conn: socket.socket, pending: Dict[str, Any]) -> None:
        header, body_sent = b"", 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                fault = pending["fault"]
                if fault is None:
                    conn.sendall(data)
                    continue
                if b"\r\n\r\n" not in header:  # still in the response head: the body starts after it
                    header += data
                    if b"\r\n\r\n" not in header:
                        conn.sendall(data)
                        continue
                    head_end = len(header) - len(data)
                    split = header.index(b"\r\n\r\n") + 4 - head_end
                    conn.sendall(data[:split])
                    data = data[split:]
                allowed = fault[1] - body_sent
                conn.sendall(data[:allowed])
                body_sent += min(len(data), allowed)
                if len(data) >= allowed:
                    if fault[0] == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    elif fault[0] == "stall":
                        conn.settimeout(30)
                        while conn.recv(65536):  # until the client times out and closes
                            pass
                    break
        except OSError:
            pass
        _close(conn, upstream)

    def close(self) -> None:
        self.server.close()


def _accept_forever(server: socket.socket, handle: Any) -> None:
    """Each connection to `server` handled by `handle(conn)` in a thread of its own, until it is closed."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


FAULTS = [("cut", 1), ("slowdown",), ("cut", 7001), ("reset", 30000), ("cut", 65536), ("stall", 20000),
          ("cut", 100), ("reset", 5)]


def test_stream_resumes_at_the_byte_where_it_broke(aws, moto, s3_shards, run16k, caplog):
    name = "shard-000001.tar"
    expected = (Path(run16k[0]) / name).read_bytes()
    # successive GetObject responses: cut after 10 body bytes; reset after 3000; 503 SlowDown; stalled after 1
    # byte (read timeout); cut after 40000; then one that completes. Streams retry themselves (botocore's own
    # retries would multiply a stall by its attempts), so each is one resume
    faults = [("cut", 10), ("reset", 3000), ("slowdown",), ("stall", 1), ("cut", 40000)]
    proxy = FaultProxy(moto.port, faults)
    aws(endpoint=proxy.endpoint)
    s3.configure(retry_base_delay=0.01, read_timeout=0.5)
    try:
        with caplog.at_level(logging.INFO, logger="spgdataset"):
            stream = S3Stream(s3_shards + name, s3.settings())
            data = b"".join(iter(lambda: stream.read(4096), b""))
    finally:
        proxy.close()
    assert data == expected
    assert not proxy.faults and stream.resumes == 5 and proxy.ranged_gets == 5
    breaks = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    # each resume starts at the last byte handed to the reader (the stalled byte sat in a read that timed out,
    # so it was never handed over, and is asked for again)
    assert [int(re.search(r"at byte (\d+)", m).group(1)) for m in breaks] == [10, 3010, 3010, 3010, 43010], breaks
    assert "SlowDown" in breaks[2] and "read timeout" in breaks[3]


def test_dropped_connections_still_yield_every_window_once(aws, moto, s3_shards, local_windows):
    proxy = FaultProxy(moto.port, FAULTS)
    aws(endpoint=proxy.endpoint)
    s3.configure(retry_base_delay=0.02, read_timeout=1.0)  # the dataset's storage takes it into the workers
    try:
        got = windows(s3_shards, num_workers=2)
    finally:
        proxy.close()
    assert got == local_windows
    assert not proxy.faults, "every fault was injected"
    assert proxy.ranged_gets >= len([f for f in FAULTS if f[0] != "slowdown"])  # each break resumed with Range


def test_a_stream_that_keeps_failing_gives_up_naming_the_url(aws, moto, s3_shards):
    proxy = FaultProxy(moto.port, [("cut", 0)] * 10)  # every response breaks before its first byte
    aws(endpoint=proxy.endpoint)
    s3.configure(retry_base_delay=0.001, max_retries=3)
    url = s3_shards + "shard-000000.tar"
    try:
        with pytest.raises(ShardError, match=re.escape(url) + r".*gave up after 4 failed attempts and \d+ s without "
                                                               r"progress at byte 0"):
            open_shard(url).read()
    finally:
        proxy.close()


# ---------------------------------------------------------------- clear errors


@pytest.mark.parametrize("who,code", [("wrong key", "InvalidAccessKeyId"), ("wrong secret", "SignatureDoesNotMatch"),
                                      ("nobody", "AccessDenied")])
def test_bad_credentials_are_named(aws, moto, monkeypatch, s3_shards, who, code):
    aws(user="nobody" if who == "nobody" else "spg")
    if who == "wrong key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    elif who == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    shard = s3_shards + "shard-000000.tar"
    with moto.authenticating():
        with pytest.raises(SpgError, match=re.escape(s3_shards + "manifest.json") + ".*" + code):
            SpectrogramDataset(s3_shards)
        with pytest.raises(ShardError, match=re.escape(shard) + ".*" + code):
            open_shard(shard)
    aws()
    with moto.authenticating():  # and the right credentials pass
        assert open_shard(shard).read(512)


def test_missing_bucket_prefix_and_key(aws, s3_shards):
    with pytest.raises(SpgError, match=r"s3://no-such-bucket/corpus/manifest.json: bucket 'no-such-bucket' "
                                       r"does not exist \(NoSuchBucket"):
        SpectrogramDataset("s3://no-such-bucket/corpus/")
    with pytest.raises(SpgError, match=f"s3://{BUCKET}/nothing-here: no such shard folder"):
        SpectrogramDataset(f"s3://{BUCKET}/nothing-here")
    with pytest.raises(SpgError, match="does not list shard-000999.tar"):
        SpectrogramDataset(s3_shards + "shard-000999.tar")
    missing = s3_shards + "shard-000999.tar"
    with pytest.raises(ShardError, match=re.escape(missing) + r": no such object \(NoSuchKey"):
        open_shard(missing)
    with pytest.raises(SpgError, match="one slash lost"):
        SpectrogramDataset(Path("s3://spg-test/corpus"))


def test_a_deleted_shard_fails_the_epoch_naming_it(aws, moto, s3_shards):
    c = moto.client()
    for name in ("manifest.json", "index.bin", "shard-000000.tar", "shard-000001.tar"):
        c.copy_object(Bucket=BUCKET, Key=f"holey/{name}", CopySource={"Bucket": BUCKET, "Key": f"corpus/{name}"})
    ds = SpectrogramDataset(f"s3://{BUCKET}/holey/", shuffle=False, window_content_ratio=0,
                            output_configuration={"masks": []})
    with pytest.raises(ShardError, match=f"s3://{BUCKET}/holey/shard-000002.tar: no such object"):
        list(ds)


def test_cli_errors_are_one_line(moto, corpus16k):
    root, meta = corpus16k
    done = run_cli(moto, [root, meta, "s3://no-such-bucket/out/", "--workers", "1", "--quiet"])
    assert done.returncode == 1
    assert done.stderr.strip() == ("spg-shard: error: s3://no-such-bucket/out/: bucket 'no-such-bucket' "
                                   "does not exist (NoSuchBucket)")


# ---------------------------------------------------------------- cache


def _cache_state(folder: Path) -> Tuple[int, List[Path]]:
    files = sorted(folder.iterdir())
    return sum(f.stat().st_size for f in files), [f for f in files if f.suffix == ".tar"]


def test_cache_keeps_under_its_limit_and_refetches_a_corrupt_copy(aws, s3_shards, run16k, local_windows, tmp_path,
                                                                  caplog):
    shards = SpectrogramDataset(run16k[0]).shards.shards
    limit = int(1.5 * max(s.bytes for s in shards))  # room for one or two shards, not all
    cache = tmp_path / "cache"
    s3.configure(cache_dir=str(cache), cache_bytes=limit)
    got: Dict[Tuple[str, int], bytes] = {}
    for shard in shards:  # one shard at a time, so the limit is checked after each
        got.update(windows(s3_shards + shard.name))
        used, cached = _cache_state(cache)
        assert used <= limit and cached
    assert got == local_windows
    assert len(shards) >= 3 and s3.stats["cache_misses"] == len(shards) and s3.stats["cache_evictions"] >= 1
    used, cached = _cache_state(cache)
    assert {p.stem for p in cached} <= {s.sha256 for s in shards} and len(cached) in (1, 2)
    assert all(sha256(p.read_bytes()).hexdigest() == p.stem for p in cached)

    last = shards[-1]
    expected = windows(os.path.join(run16k[0], last.name))
    assert windows(s3_shards + last.name) == expected
    assert s3.stats["cache_hits"] == 1

    path = cache / f"{last.sha256}.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="spgdataset"):
        again = windows(s3_shards + last.name)
    assert any("is corrupt" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert again == expected
    assert s3.stats["cache_corrupt"] == 1 and s3.stats["cache_hits"] == 1
    assert sha256(path.read_bytes()).hexdigest() == last.sha256  # fetched again and kept
    assert _cache_state(cache)[0] <= limit


def test_cache_through_env_in_dataloader_workers(aws, monkeypatch, s3_shards, local_windows, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPG_S3_CACHE_DIR", str(cache))
    monkeypatch.setenv("SPG_S3_CACHE_BYTES", "64M")
    assert windows(s3_shards, num_workers=2) == local_windows
    assert windows(s3_shards, num_workers=2) == local_windows  # second epoch from the cache
    used, cached = _cache_state(cache)
    manifest = manifest_of(s3_shards)
    assert sorted(p.stem for p in cached) == sorted(s["sha256"] for s in manifest["shards"])
    assert not [p for p in cache.iterdir() if p.suffix == ".tmp"]


def test_configure_reaches_spawned_workers(aws, s3_shards, local_windows, tmp_path):
    """Spawned workers do not inherit module state: the settings and shard digests travel with the dataset."""
    cache = tmp_path / "cache"
    s3.configure(cache_dir=str(cache), cache_bytes="64M", retry_base_delay=0.05)
    assert windows(s3_shards, num_workers=2, multiprocessing_context="spawn") == local_windows
    manifest = manifest_of(s3_shards)
    assert sorted(p.stem for p in _cache_state(cache)[1]) == sorted(s["sha256"] for s in manifest["shards"])


# ---------------------------------------------------------------- writer: multipart, resume


def test_multipart_upload_and_resume_by_size_and_digest(aws, moto, corpus16k, run16k, helpers):
    root, meta = corpus16k
    url = f"s3://{BUCKET}/multipart"
    s3.configure(multipart_threshold=64 * 1024)  # S3's 5 MiB minimum part size makes these one-part uploads
    first = write_shards(root, meta, url, workers=1, max_shard_files=3, progress=False)
    assert first.manifest == helpers.manifest(run16k[0])
    stored = moto.objects("multipart")
    assert {n: b for n, b in stored.items() if not n.startswith(".")} == helpers.output_files(run16k[0])
    etag = moto.client().head_object(Bucket=BUCKET, Key="multipart/shard-000000.tar")["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}-1"', etag), etag  # the ETag of a multipart upload
    again = write_shards(root, meta, url, workers=1, max_shard_files=3, progress=False)
    assert (again.shards_written, again.shards_reused) == (0, len(first.manifest["shards"]))
    # an object replaced behind the writer's back (other bytes, no sha256 metadata) is written again
    moto.client().put_object(Bucket=BUCKET, Key="multipart/shard-000001.tar", Body=b"not a shard")
    third = write_shards(root, meta, url, workers=1, max_shard_files=3, progress=False)
    assert (third.shards_written, third.shards_reused) == (1, len(first.manifest["shards"]) - 1)
    assert moto.objects("multipart")["shard-000001.tar"] == stored["shard-000001.tar"]


@contextlib.contextmanager
def counted_requests() -> Iterator[collections.Counter]:
    """The S3 operations this process's client sends while inside (botocore's before-call events)."""
    calls: collections.Counter = collections.Counter()

    def count(model, **_):
        calls[model.name] += 1

    clients = [client(s3.settings()), client(s3.settings(), attempts=1)]  # API calls; streams retry on their own
    for c in clients:
        c.meta.events.register("before-call.s3", count)
    try:
        yield calls
    finally:
        for c in clients:
            c.meta.events.unregister("before-call.s3", count)


def test_a_rerun_lists_the_shards_instead_of_asking_for_each(aws, moto, corpus16k):
    """Resuming thousands of shards took two requests each (the record, a HEAD of the shard); now one listing
    per 1,000 objects and the records (in parallel), and no HEAD at all. The folder is listed twice (before the
    headers are read, and again under the writer's lock), and what it holds is read once."""
    root, meta = corpus16k
    url = f"s3://{BUCKET}/listed"
    first = write_shards(root, meta, url, workers=1, max_shard_files=1, progress=False)
    shards = len(first.manifest["shards"])
    assert shards >= 8
    with counted_requests() as calls:
        again = write_shards(root, meta, url, workers=1, max_shard_files=1, progress=False)
    assert (again.shards_written, again.shards_reused, again.headers_read) == (0, shards, 0)
    assert calls["HeadObject"] == 0 and calls["ListObjectsV2"] == 4, calls
    assert calls["GetObject"] == shards + 4, calls  # the records, manifest, index's magic, run.json, saved headers
    assert calls["PutObject"] == 3 and calls["DeleteObject"] == 1, calls  # the lock, index and manifest; the lock
    assert again.manifest == first.manifest


def test_a_part_aborts_only_its_own_unfinished_uploads(aws, moto, corpus16k, run16k, helpers):
    root, meta = corpus16k
    prefix = "parts"
    c = moto.client()
    left = {k: c.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}/shard-00000{k}.tar")["UploadId"]
            for k in (0, 1)}

    def unfinished():
        uploads = c.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads", [])
        return sorted((u["Key"].rsplit("/", 1)[1], u["UploadId"]) for u in uploads)

    first = write_shards(root, meta, f"s3://{BUCKET}/{prefix}", workers=1, max_shard_files=3, part=(0, 2),
                         progress=False)
    assert first.manifest is None
    assert unfinished() == [("shard-000001.tar", left[1])]  # part 1's upload may still be under way
    second = write_shards(root, meta, f"s3://{BUCKET}/{prefix}", workers=1, max_shard_files=3, part=(1, 2),
                          progress=False)
    assert second.manifest is not None and unfinished() == []
    stored = {n: b for n, b in moto.objects(prefix).items() if not n.startswith(".spg-state/")}
    assert stored == helpers.output_files(run16k[0])


@pytest.mark.timeout(240)
def test_killed_write_to_s3_then_rerun_finishes_the_same_job(moto, tmp_path, helpers):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=90, seed=5, rates=(44100,), min_seconds=1, max_seconds=3)
    flags = ["--workers", "1", "--max-shard-files", "1", "--quiet"]
    ref = tmp_path / "reference"
    write_shards(root, meta, ref, workers=1, max_shard_files=1, progress=False)
    reference = helpers.output_files(ref)
    plan_size = len(helpers.manifest(ref)["shards"])
    c = moto.client()
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env.update(moto.env(), SPG_S3_LOCK_LEASE=str(LEASE))

    for attempt in range(3):  # a retry only if the run finished before the kill landed
        prefix = f"killed{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "spgdataset.write.cli", str(root), meta, f"s3://{BUCKET}/{prefix}",
                                 *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            listed = c.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/shard-").get("KeyCount", 0)
            if listed >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        if proc.returncode == -signal.SIGKILL and "manifest.json" not in moto.objects(prefix):
            break
    else:
        pytest.fail("the run always finished before it could be killed")
    left = moto.objects(prefix)
    print(f"killed on attempt {attempt} with {len([n for n in left if n.startswith('shard-')])} shard(s) in place")
    shards = [n for n in left if n.startswith("shard-")]
    assert 2 <= len(shards) < plan_size and "index.bin" not in left
    for name in shards:  # an object is whole or absent
        assert left[name] == reference[name], name

    refused = run_cli(moto, [root, meta, f"s3://{BUCKET}/{prefix}", *flags])  # its lease has not run out yet
    assert refused.returncode == 1 and "another spg-shard run is writing here (pid" in refused.stderr, refused.stderr
    assert "a killed run's lock expires one lease after its last renewal" in refused.stderr
    time.sleep(LEASE + 0.5)
    rerun = run_cli(moto, [root, meta, f"s3://{BUCKET}/{prefix}", *flags])
    assert rerun.returncode == 0, rerun.stderr
    written, reused = map(int, SUMMARY_RE.search(rerun.stdout).groups())
    assert reused >= 1 and written >= 1 and written + reused == plan_size, rerun.stdout
    assert {n: b for n, b in moto.objects(prefix).items() if not n.startswith(".")} == reference
    assert not c.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")


# ---------------------------------------------------------------- settings and processes


def test_a_forked_child_makes_its_own_client(aws):
    settings = s3.settings()
    parent = client(settings)
    assert client(settings) is parent and client(s3.settings()) is parent  # one per process and settings value
    pid = os.fork()
    if pid == 0:  # child: a new client, never the parent's (whose sockets it shares)
        os._exit(0 if client(settings) is not parent and client(settings) is client(settings) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_settings_from_env_and_configure(monkeypatch):
    s3.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("SPG_S3_CACHE_BYTES", "1.5G")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert s3.settings().endpoint_url == "http://127.0.0.1:1" and s3.settings().cache_bytes == 3 * 2**29
    assert s3.configure(endpoint_url="http://127.0.0.1:2", cache_bytes="512M").endpoint_url == "http://127.0.0.1:2"
    assert s3.settings().cache_bytes == 512 * 2**20
    assert s3.configure(endpoint_url=None).endpoint_url == "http://127.0.0.1:1"  # back to the environment
    with pytest.raises(TypeError, match="endpoint"):
        s3.configure(endpoin_url="x")
    s3.reset()


def test_backoff_grows_and_is_capped():
    config = s3.S3Settings(retry_base_delay=0.5, retry_max_delay=4.0)
    for failures, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff(failures, config) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)


# ---------------------------------------------------------------- hostile remote manifests, frozen servers


def _copy_prefix(moto: Moto, src: str, dst: str, edit: Any = None) -> str:
    """Copy the shard set at `src/` to `dst/`, its manifest changed by `edit(manifest)`; returns the URL."""
    c = moto.client()
    for name, data in moto.objects(src).items():
        if name == "manifest.json" and edit is not None:
            manifest = json.loads(data)
            edit(manifest)
            data = json.dumps(manifest).encode()
        c.put_object(Bucket=BUCKET, Key=f"{dst}/{name}", Body=data)
    return f"s3://{BUCKET}/{dst}/"


def test_a_remote_manifest_cannot_make_the_cache_delete_a_local_file(aws, moto, s3_shards, tmp_path):
    """The cache names a shard by the manifest's sha256: `../victim/victim` would be a path out of it."""
    cache = tmp_path / "cache"
    victim = tmp_path / "victim" / "victim.tar"
    victim.parent.mkdir()
    victim.write_bytes(b"precious")
    url = _copy_prefix(moto, "corpus", "evil-sha", lambda m: m["shards"][0].update(sha256="../victim/victim"))
    s3.configure(cache_dir=str(cache))
    with pytest.raises(SpgError, match=r"evil-sha/manifest.json: shards\[0\].sha256"):
        SpectrogramDataset(url)
    with pytest.raises(ShardError, match="not a sha256"):  # and the cache refuses such a name on its own
        ShardCache(s3.settings()).open(url + "shard-000000.tar", 100, "../victim/victim")
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("field,edit", [
    (r"shards\[1\].name", lambda m: m["shards"][1].update(name="/etc/hostname")),
    (r"shards\[0\].name", lambda m: m["shards"][0].update(name="../../../../etc/hostname")),
    ("index", lambda m: m.update(index="/etc/passwd"))])
def test_a_remote_manifest_cannot_name_local_files(aws, moto, s3_shards, field, edit):
    url = _copy_prefix(moto, "corpus", "evil-names", edit)
    with pytest.raises(SpgError, match=r"evil-names/manifest.json: " + field):
        SpectrogramDataset(url)


# ---------------------------------------------------------------- sizes a manifest claims


@pytest.mark.parametrize("cached", [False, True])
def test_a_claimed_size_is_refused_without_allocating_it(aws, moto, s3_shards, tmp_path, cached):
    """A manifest claiming 5 GiB for a 100 KB object: the read takes what the object's ContentLength says (or
    the cached copy's size), and the error names both sizes; in a process that could not hold 5 GiB."""
    from tests.read.test_untrusted_index_and_values import FIVE_GIB, capped_read

    url = _copy_prefix(moto, "corpus", "claims", lambda m: m["shards"][0].update(bytes=FIVE_GIB))
    held = moto.client().head_object(Bucket=BUCKET, Key="claims/shard-000000.tar")["ContentLength"]
    env = {k: v for k, v in os.environ.items() if k not in ENV_CLEARED}
    env.update(moto.env())
    if cached:  # the default limit, 10 GiB, has room for the claim
        env["SPG_S3_CACHE_DIR"] = str(tmp_path / "cache")
    seconds, message = capped_read(url, env)
    assert f"claims/shard-000000.tar: {held} bytes, the manifest says {FIVE_GIB}" in message, message
    assert seconds < 10


def test_a_claimed_size_makes_the_cache_drop_or_evict_nothing(aws, moto, s3_shards, local_windows, tmp_path):
    """The cache makes room for the object's size, not a manifest's claim, and keeps a copy whose sha256 is
    its name whatever size a manifest gives it."""
    from tests.read.test_untrusted_index_and_values import FIVE_GIB

    cache = tmp_path / "cache"
    s3.configure(cache_dir=str(cache), cache_bytes=FIVE_GIB + (64 << 10))  # a claim fits, with what is cached not
    assert windows(s3_shards) == local_windows
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    assert len(before) >= 3
    url = _copy_prefix(moto, "corpus", "claims-cached", lambda m: m["shards"][1].update(bytes=FIVE_GIB))
    ds = SpectrogramDataset(url + "shard-000001.tar", window_content_ratio=0, output_configuration={"masks": []})
    with pytest.raises(ShardError, match=rf"shard-000001.tar: \d+ bytes, the manifest says {FIVE_GIB}"):
        list(ds)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    evictions, corrupt = s3.stats["cache_evictions"], s3.stats["cache_corrupt"]
    url = _copy_prefix(moto, "corpus", "claims-new", lambda m: m["shards"][0].update(bytes=FIVE_GIB, sha256="0" * 64))
    with pytest.raises(ShardError, match=rf"shard-000000.tar: \d+ bytes, the manifest says {FIVE_GIB}"):
        list(SpectrogramDataset(url + "shard-000000.tar", window_content_ratio=0, output_configuration={"masks": []}))
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # no room made, no partial copy left
    assert (s3.stats["cache_evictions"], s3.stats["cache_corrupt"]) == (evictions, corrupt)


class FrozenServer:
    """Accepts connections on 127.0.0.1, reads the requests, never answers (a hung S3 endpoint)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.requests = 0
        self.sockets: List[socket.socket] = []
        threading.Thread(target=_accept_forever, args=(self.server, self._hold), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        self.sockets.append(conn)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.requests += data.count(b"HTTP/1.1\r\n")
        except OSError:
            return

    def close(self) -> None:
        self.server.close()
        _close(*self.sockets)


def test_a_frozen_server_is_given_up_on_in_bounded_time(aws):
    """One stalled attempt costs read_timeout (botocore does not retry under the stream's own retries); the
    stream gives up after max_retries more attempts, or after give_up_after seconds, whichever comes first."""
    frozen = FrozenServer()
    aws(endpoint=frozen.endpoint)
    try:
        s3.configure(read_timeout=1, connect_timeout=1, max_retries=2, retry_base_delay=0.01)
        started = time.monotonic()
        with pytest.raises(SpgError, match=rf"s3://{BUCKET}/corpus/manifest.json: .*gave up after 3 failed "
                                           r"attempts.*read timeout"):
            SpectrogramDataset(f"s3://{BUCKET}/corpus/")
        assert time.monotonic() - started < 6
        assert frozen.requests == 3  # one request per attempt
        s3.configure(max_retries=1000, give_up_after=2.5)
        started = time.monotonic()
        with pytest.raises(ShardError, match=r"gave up after \d+ failed attempts and [23] s without progress"):
            open_shard(f"s3://{BUCKET}/corpus/shard-000000.tar")
        assert time.monotonic() - started < 2.5 + 1 + 1 + 1.5  # give_up_after + connect + read + slack
    finally:
        frozen.close()


# ---------------------------------------------------------------- writer: one at a time on a prefix (a lease)


def test_a_prefix_written_by_a_living_run_is_refused_and_a_dead_runs_lease_taken_over(aws, moto, corpus16k):
    root, meta = corpus16k
    url = f"s3://{BUCKET}/leased"
    s3.configure(lock_lease=2)
    holder = json.dumps({"pid": 4242, "host": "elsewhere", "started": "today", "command": "spg-shard ..."}).encode()
    alive = storage.at(url).try_lock(".spg-state/lock", holder)  # renewed every half second by its thread
    assert alive is not None and storage.at(url).try_lock(".spg-state/lock", b"{}") is None
    time.sleep(2.5)  # a living holder keeps its lease past the lease time
    with pytest.raises(SpgError, match=r"another spg-shard run is writing here \(pid 4242 on elsewhere.*renewed"):
        write_shards(root, meta, url, workers=1, progress=False)
    alive._stop.set()  # the holder dies without removing its lock: the renewals stop
    alive._thread.join()
    assert moto.client().head_object(Bucket=BUCKET, Key="leased/.spg-state/lock")
    time.sleep(2.5)
    done = write_shards(root, meta, url, workers=1, progress=False)
    assert done.manifest is not None
    assert ".spg-state/lock" not in moto.objects("leased")  # released at the end


def test_a_prefix_holding_other_objects_is_refused(aws, moto, corpus16k):
    root, meta = corpus16k
    c = moto.client()
    c.put_object(Bucket=BUCKET, Key="mixed/results/summary.csv", Body=b"a,b")
    c.put_object(Bucket=BUCKET, Key="mixed/shard-000000.tar", Body=b"someone else's")
    with pytest.raises(SpgError, match=r"did not write \(results \(folder\), shard-000000.tar\)"):
        write_shards(root, meta, f"s3://{BUCKET}/mixed", workers=1, overwrite=True, progress=False)
    assert sorted(moto.objects("mixed")) == ["results/summary.csv", "shard-000000.tar"]
