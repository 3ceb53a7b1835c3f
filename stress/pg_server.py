"""A private PostgreSQL server for tests and drills that stop, kill or cut off their database - never the
machine's shared one.

``initdb`` + ``pg_ctl`` under a temp directory of its own (reachable by the ``postgres`` user: pytest's are
root's), on a port of its own, run as ``postgres`` (the server refuses to run as root), listening where it is
told (loopback by default; the multi-host drill adds the host side of its veth links).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (the CI image has it)")
    return found[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """One server: ``start``/``stop`` it at will; ``url`` for clients on loopback. ``listen``: the addresses
    it listens on; ``trust``: networks (CIDR) whose clients it lets in without a password."""

    def __init__(
        self, base: Path, *, listen: Sequence[str] = ("127.0.0.1",), trust: Sequence[str] = ()
    ) -> None:
        self.data = base / "data"
        self.sockets = base / "sockets"
        self.port = free_port()
        self.listen = ",".join(listen)
        self.user = "postgres"
        self._as_user = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        base.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(self.user)
            for path in (base, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")
        if trust:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in trust)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            [*self._as_user, *command], check=False, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses={self.listen} -c fsync=off"
        self._run(
            _bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.data / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def private_postgres(
    *, listen: Sequence[str] = ("127.0.0.1",), trust: Sequence[str] = ()
) -> Iterator[PrivatePostgres]:
    """A started server, stopped and deleted at the end."""
    base = Path(tempfile.mkdtemp(prefix="trainguard-pg-"))
    try:
        os.chmod(base, 0o755)
        server = PrivatePostgres(base / "cluster", listen=listen, trust=trust)
        server.start()
        try:
            yield server
        finally:
            if server.running():
                server.stop("immediate")
    finally:
        shutil.rmtree(base, ignore_errors=True)


__all__ = ["PrivatePostgres", "free_port", "private_postgres"]
