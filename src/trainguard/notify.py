"""Notifications: a webhook told of warnings, stops, fences and rogue writers, as they happen.

The body is a JSON POST that a Slack incoming webhook takes as is (``text``), with the same facts as data
under ``trainguard`` for anything else (a pager, a chat bot). Sending never blocks or fails training: notices
are queued and posted by a thread of their own, with a timeout and one retry; a webhook that cannot be
reached is logged (once per outage) and the notice dropped - the registry's events remain the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard._os import environment
from trainguard.errors import InvalidArgument

log = logging.getLogger("trainguard")

KINDS = ("warning", "stop", "fence", "rogue")
_ICONS = {"warning": ":warning:", "stop": ":octagonal_sign:", "fence": ":lock:", "rogue": ":rotating_light:"}


@dataclass(frozen=True)
class Notice:
    kind: str  # one of KINDS
    run: str | None
    text: str
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def body(self, source: str) -> dict[str, Any]:
        where = f"run {self.run!r}" if self.run else "no run"
        return {
            "text": f"{_ICONS.get(self.kind, '')} trainguard {self.kind} ({where}, {source}): {self.text}",
            "trainguard": {
                "kind": self.kind,
                "run": self.run,
                "text": self.text,
                "detail": dict(self.detail),
                "source": source,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "at": self.at,
            },
        }


class Notifier:
    """Posts notices of the chosen kinds to one webhook, from its own thread."""

    def __init__(
        self, url: str, *, kinds: Sequence[str] = KINDS, timeout: float = 5.0, source: str = "trainguard"
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument("webhook", url, "must be an http:// or https:// URL")
        self.url = url
        self.kinds = frozenset(kinds)
        self.timeout = timeout
        self.source = source
        self.sent = 0
        self.failed = 0
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=1000)
        self._thread = threading.Thread(target=self._post_all, name="trainguard-notify", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(
        cls, webhook: str | None, kinds: Sequence[str], timeout: float, source: str
    ) -> Notifier | None:
        """The configured notifier (``notifications.webhook``, else $TRAINGUARD_WEBHOOK_URL), or None."""
        url = webhook or os.environ.get(environment.WEBHOOK_URL)
        if not url or not kinds:
            return None
        return cls(url, kinds=kinds, timeout=timeout, source=source)

    def send(self, kind: str, run: str | None, text: str, **detail: Any) -> None:
        """Queue a notice (safe from any thread and from signal handlers: nothing here blocks)."""
        if kind not in self.kinds:
            return
        try:
            self._queue.put_nowait(Notice(kind, run, text, detail))
        except queue.Full:
            self.failed += 1  # a webhook far behind: the registry's events keep the record

    def close(self, timeout: float | None = None) -> None:
        """Post what is queued (waiting at most ``timeout``, default two webhook timeouts), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(self.timeout * 2 if timeout is None else timeout)

    def _post_all(self) -> None:
        failing = False
        while (notice := self._queue.get()) is not None:
            data = json.dumps(notice.body(self.source), default=str).encode()
            for attempt in range(2):
                try:
                    self._post(data)
                    self.sent += 1
                    failing = False
                    break
                except (OSError, urllib.error.URLError, ValueError) as error:
                    if attempt == 1:
                        self.failed += 1
                        if not failing:
                            log.warning(
                                "trainguard: webhook %s not reached (notices dropped): %s", self.url, error
                            )
                        failing = True

    def _post(self, data: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        # http(s) only: checked in __init__ (a file: URL must not turn a notice into a local read).
        request = urllib.request.Request(self.url, data=data, method="POST", headers=headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            response.read()


__all__ = ["KINDS", "Notice", "Notifier"]
