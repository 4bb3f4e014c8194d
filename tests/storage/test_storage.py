"""The storage object (storage.at) and `spgdataset.s3`, without a server: which object a URL gets, and that S3
settings are a value the object holds (read once when it is built, carried by pickling), not process state."""

from __future__ import annotations

import pickle

import pytest

from spgdataset import SpgError, storage
from spgdataset.storage.folder import LocalStorage
from spgdataset.storage.s3.prefix import S3Storage


@pytest.fixture
def clean_s3(monkeypatch):
    import spgdataset.s3

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "SPG_S3_CACHE_DIR", "SPG_S3_CACHE_BYTES",
                 "SPG_S3_LOCK_LEASE"):
        monkeypatch.delenv(name, raising=False)
    spgdataset.s3.reset()
    yield spgdataset.s3
    spgdataset.s3.reset()


def test_spgdataset_s3_is_a_module_of_what_users_call():
    import spgdataset.s3
    from spgdataset import s3

    assert s3 is spgdataset.s3
    assert sorted(s3.__all__) == ["S3Settings", "configure", "register_with_webdataset", "reset", "settings", "stats"]
    assert all(hasattr(s3, name) for name in s3.__all__)


def test_a_url_gets_its_storage(tmp_path):
    local = storage.at(str(tmp_path))
    assert isinstance(local, LocalStorage) and local.url("manifest.json") == str(tmp_path / "manifest.json")
    remote = storage.at("s3://bucket/some/prefix/")
    assert isinstance(remote, S3Storage) and remote.url("shard-000000.tar") == "s3://bucket/some/prefix/shard-000000.tar"
    assert storage.at("s3://bucket").url("manifest.json") == "s3://bucket/manifest.json"
    with pytest.raises(SpgError, match="one slash lost"):
        storage.check_url("s3:/bucket/prefix")


def test_s3_settings_are_read_once_and_travel_with_the_storage(clean_s3, monkeypatch):
    monkeypatch.setenv("SPG_S3_CACHE_BYTES", "1G")
    clean_s3.configure(endpoint_url="http://127.0.0.1:1", cache_dir="/scratch/shards")
    made = storage.at("s3://bucket/prefix")
    clean_s3.configure(endpoint_url="http://127.0.0.1:2")  # later changes are for storages made later
    monkeypatch.setenv("SPG_S3_CACHE_BYTES", "2G")
    assert (made.settings.endpoint_url, made.settings.cache_dir, made.settings.cache_bytes) == (
        "http://127.0.0.1:1", "/scratch/shards", 2**30)
    assert storage.at("s3://bucket/prefix").settings.endpoint_url == "http://127.0.0.1:2"
    clean_s3.reset()  # a worker process that never called configure() ...
    copy = pickle.loads(pickle.dumps(made))  # ... gets the settings with the object
    assert copy.settings == made.settings and copy.url("x") == "s3://bucket/prefix/x"
    given = clean_s3.S3Settings(endpoint_url="http://127.0.0.1:3")
    assert storage.at("s3://bucket", given).settings is given


def test_a_local_shard_named_before_it_is_read_is_asked_of_the_kernel_never_blocking(tmp_path, monkeypatch):
    """will_read: posix_fadvise(WILLNEED) on a regular file; a hint, so a missing name, a folder or a FIFO (whose
    open would block without O_NONBLOCK) is passed over, and read() reports them. S3 names are no-ops: its
    shards are read ahead in a thread."""
    import os
    import threading

    (tmp_path / "shard.tar").write_bytes(b"x" * 10000)
    os.mkfifo(tmp_path / "fifo.tar")
    (tmp_path / "folder.tar").mkdir()
    advised = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: (
        advised.append((os.fstat(fd).st_size, advice)), real(fd, offset, length, advice)))
    local = storage.at(str(tmp_path))
    assert local.local and not storage.at("s3://bucket/prefix").local
    done = threading.Event()

    def name_them() -> None:
        for name in ("shard.tar", "fifo.tar", "folder.tar", "missing.tar"):
            local.will_read(name)
        done.set()

    threading.Thread(target=name_them, daemon=True).start()
    assert done.wait(5), "will_read blocked (on the FIFO?)"
    assert advised == [(10000, os.POSIX_FADV_WILLNEED)]
    storage.at("s3://bucket/prefix").will_read("shard.tar")  # nothing to do, no request made
