"""For tests that stop, kill or cut off their database: the private server (stress/pg_server.py, shared
with the multi-host drill) and a loopback TCP proxy that can drop a COMMIT's reply and refuse new
connections: the "connection died after COMMIT was sent" failure, for real.
"""

from __future__ import annotations

import socket
import struct
import threading
from contextlib import suppress

from pg_server import PrivatePostgres, free_port, private_postgres


class CommitReplyDropper:
    """A loopback TCP proxy in front of a server. While ``armed``, the first COMMIT a client sends is
    forwarded, the server's reply is read and thrown away, every connection is cut and new ones are refused
    until ``heal()``: the client cannot tell whether its transaction committed, nor ask."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.armed = threading.Event()
        self.tripped = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closing = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def cut(self) -> None:
        """Unreachable now: every connection cut, new ones refused (until ``heal``)."""
        self.tripped.set()
        self._cut_all()

    def heal(self) -> None:
        self.armed.clear()
        self.tripped.clear()

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        self._cut_all()
        for thread in self._threads:
            thread.join(5)

    def _cut_all(self) -> None:
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.tripped.is_set():
                client.close()  # the "server" is unreachable
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, server]
            dropped = threading.Event()  # this connection's COMMIT reply arrived and was thrown away
            for target, args in (
                (self._client_to_server, (client, server, dropped)),
                (self._server_to_client, (server, client, dropped)),
            ):
                thread = threading.Thread(target=target, args=args, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _server_to_client(
        self, server: socket.socket, client: socket.socket, dropped: threading.Event
    ) -> None:
        try:
            while data := server.recv(65536):
                if self.tripped.is_set():
                    # The answer to the forwarded COMMIT (it comes only once the transaction is over on the
                    # server): the client never hears it.
                    dropped.set()
                    return
                client.sendall(data)
        except OSError:
            return

    def _client_to_server(
        self, client: socket.socket, server: socket.socket, dropped: threading.Event
    ) -> None:
        """Forward whole frontend messages, looking at each for a simple-query COMMIT."""
        try:
            startup = _recv_exact(client, 4)
            length = struct.unpack("!I", startup)[0]
            body = _recv_exact(client, length - 4)
            server.sendall(startup + body)
            if struct.unpack("!I", body[:4])[0] == 80877103:  # SSLRequest: the server answers 'N'
                self._client_to_server(client, server, dropped)
                return
            while True:
                header = _recv_exact(client, 5)
                kind, size = header[:1], struct.unpack("!I", header[1:])[0]
                payload = _recv_exact(client, size - 4)
                commit = kind == b"Q" and payload.rstrip(b"\0").strip().upper() == b"COMMIT"
                if commit and self.armed.is_set() and not self.tripped.is_set():
                    self.tripped.set()  # from now on the other direction forwards nothing
                    server.sendall(header + payload)
                    dropped.wait(10)
                    self._cut_all()
                    return
                server.sendall(header + payload)
        except OSError:
            return


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


__all__ = ["CommitReplyDropper", "PrivatePostgres", "free_port", "private_postgres"]
