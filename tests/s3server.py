"""A real S3-API server for the tests: moto's standalone server in a subprocess on 127.0.0.1, with IAM users.

moto accepts any credentials unless IAM authentication is switched on; the credential tests switch it on
(`Moto.authenticating()`, after IAM users and their access keys were made), so wrong credentials are really
refused by the server. It stays off elsewhere because moto 5.2 then miscomputes the signature of requests
whose query holds a "/" (ListObjectsV2 with Prefix="corpus/": SignatureDoesNotMatch), which real S3 accepts.
The fixtures `moto` (one server per test module) and `aws` (this process pointed at it) are in conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import boto3

from spgdataset import s3

BUCKET = "spg-test"
REGION = "us-east-1"
S3_POLICY = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def no_proxy_open(url: str, data: Optional[bytes] = None, timeout: float = 2.0) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP(S)_PROXY
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})  # not a form
    with opener.open(request, timeout=timeout) as response:
        return response.read()


def _prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved here: the child of a fork should import nothing


def _die_with_parent() -> None:
    """In the server's process: get SIGTERM when the test process dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    _PRCTL(1, signal.SIGTERM)


class Moto:
    """moto's standalone server in a subprocess, with IAM users `spg` (s3:*) and `nobody` (no policy)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if _PRCTL else None)
        try:
            self._set_up(log_path)
        except BaseException:
            self.close()  # a failed setup must not leave the server running
            raise

    def _set_up(self, log_path: Path) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                no_proxy_open(f"{self.endpoint}/moto-api/")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start; see {log_path}")
                time.sleep(0.05)
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        self.keys: Dict[str, Tuple[str, str]] = {}
        for user in ("spg", "nobody"):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        iam.put_user_policy(UserName="spg", PolicyName="s3", PolicyDocument=S3_POLICY)
        self.client().create_bucket(Bucket=BUCKET)

    @contextlib.contextmanager
    def authenticating(self) -> Iterator[None]:
        """Every request checked against the IAM users (signature, access key, policy) while inside."""
        no_proxy_open(f"{self.endpoint}/moto-api/reset-auth", data=b"0")
        try:
            yield
        finally:
            no_proxy_open(f"{self.endpoint}/moto-api/reset-auth", data=b"inf")

    def env(self, endpoint: Optional[str] = None, user: str = "spg") -> Dict[str, str]:
        """Environment for the package (in-process via monkeypatch, or for a subprocess)."""
        key_id, secret = self.keys[user]
        return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def client(self) -> Any:
        key_id, secret = self.keys["spg"]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=key_id,
                            aws_secret_access_key=secret)

    def objects(self, prefix: str) -> Dict[str, bytes]:
        """{name relative to prefix: bytes} of every object under `prefix/`."""
        c = self.client()
        names = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
                 for o in page.get("Contents", [])]
        return {n[len(prefix) + 1:]: c.get_object(Bucket=BUCKET, Key=n)["Body"].read() for n in names}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def moto_fixture(tmp_path_factory) -> Iterator[Moto]:
    server = Moto(tmp_path_factory.mktemp("moto") / "server.log")
    yield server
    server.close()


ENV_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
                "SPG_S3_CACHE_DIR", "SPG_S3_CACHE_BYTES", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def aws_fixture(moto, monkeypatch) -> Iterator[Any]:
    """Point this process at the moto server as user `spg`; `aws(user=..., endpoint=...)` switches."""

    def use(user: str = "spg", endpoint: Optional[str] = None) -> None:
        for name in ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
        for name, value in moto.env(endpoint, user).items():
            monkeypatch.setenv(name, value)
        s3.reset()  # clients hold the credentials they were made with

    use()
    yield use
    s3.reset()
