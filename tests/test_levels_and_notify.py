"""CPU sustained over a window, warning levels, no improvement, and the webhook that hears of warnings, stops,
fences and rogue writers (issue 11, items 8 and 9) - rules as tables, then enforced by a real Guard, a real
launcher and a real watchdog, told to a real HTTP server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import helper_command, run_cli, spawned, wait_until
from trainguard import CheckpointStore, Guard, Registry
from trainguard.budget import CpuWindow, LevelWarnings, Plateau, merge_limits
from trainguard.errors import LimitRaised
from trainguard.guard import StopReason
from trainguard.notify import Notifier
from trainguard.registry import EventKind
from trainguard.supervise import Watchdog

# -- the rules, as tables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("readings", "overrun_at"),
    [
        # (monotonic s, CPU s): one busy core = 100 %.
        ([(0, 0), (5, 5), (10, 10)], 2),  # 100 % over the full 10 s window
        ([(0, 0), (5, 5), (9, 9)], None),  # busy, but the window is not full yet
        ([(0, 0), (10, 7)], None),  # 70 %: under the 80 % limit
        ([(0, 0), (1, 1), (10, 1.5), (20, 2)], None),  # a 1 s burst, then idle: not sustained
        ([(0, 0), (10, 1), (15, 6), (20, 11)], 3),  # idle then busy: 100 % over the last 10 s
    ],
)
def test_cpu_is_judged_over_a_full_window(
    readings: list[tuple[float, float]], overrun_at: int | None
) -> None:
    window = CpuWindow(limit=80.0, window=10.0)
    results = [window.observe(now, cpu) for now, cpu in readings]
    fired = [i for i, r in enumerate(results) if r is not None]
    assert (fired[0] if fired else None) == overrun_at
    if fired:
        assert "over max_cpu_percent 80" in str(results[fired[0]])


@pytest.mark.parametrize(
    ("values", "patience", "min_delta", "mode", "stops_at"),
    [
        ([1, 1, 1, 1, 1], 3, 0.0, "max", 4),  # best at episode 1, three episodes without improvement
        ([1, 2, 3, 4, 5], 2, 0.0, "max", None),  # improving every episode
        ([1, 1.005, 1.009, 1.0095], 3, 0.01, "max", 4),  # improvements smaller than min_delta do not count
        ([5, 4, 3, 4, 4, 4], 3, 0.0, "min", 6),  # a loss: lower is better
        ([1, float("nan"), 1, 1], 3, 0.0, "max", 4),  # NaN neither improves nor stalls
    ],
)
def test_no_improvement_counts_episodes_since_the_best(
    values: list[float], patience: int, min_delta: float, mode: str, stops_at: int | None
) -> None:
    plateau = Plateau("reward", patience, min_delta, mode)
    stops = [episode for episode, v in enumerate(values, start=1) if plateau.observe(episode, v)]
    assert (stops[0] if stops else None) == stops_at


def test_each_warning_level_fires_once() -> None:
    levels = LevelWarnings.from_limits({"warn_memory": 100, "warn_episodes": 3})
    assert levels.check("memory", 99) is None
    assert levels.check("memory", 100) == ("memory", 100, 100.0)
    assert levels.check("memory", 150) is None  # once per process
    assert levels.check("runtime", 10**9) is None  # no level set
    assert [levels.check("episodes", n) for n in (2, 3, 4)] == [None, ("episodes", 3, 3.0), None]


# -- a webhook on loopback ---------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.received.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _kinds(received: list[dict[str, Any]]) -> list[str]:
    return [body["trainguard"]["kind"] for body in received]


def test_notices_are_slack_compatible_json_posts(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    notifier = Notifier(url, kinds=["stop", "rogue"], source="test")
    notifier.send("stop", "swt", "episodes: 5 of 5 spent", reason="episodes")
    notifier.send("warning", "swt", "not subscribed")  # filtered out
    notifier.close()
    assert len(received) == 1 and notifier.sent == 1
    body = received[0]
    assert (
        isinstance(body["text"], str)
        and "trainguard stop (run 'swt', test): episodes: 5 of 5" in body["text"]
    )
    assert body["trainguard"]["detail"] == {"reason": "episodes"} and body["trainguard"]["pid"] == os.getpid()


def test_an_unreachable_webhook_never_blocks_or_raises(tmp_path: Path) -> None:
    notifier = Notifier("http://127.0.0.1:9/nothing-listens", timeout=0.5)
    started = time.monotonic()
    notifier.send("stop", "swt", "x")
    assert time.monotonic() - started < 0.1  # queued, not posted on the caller's thread
    notifier.close()
    assert (notifier.sent, notifier.failed) == (0, 1)


# -- enforced by the Guard ---------------------------------------------------------------------------


def _guard(tmp_path: Path, run: str, url: str, **settings: Any) -> Guard:
    return Guard(
        run=run,
        store=str(tmp_path / "store"),
        install_signal_handlers=False,
        heartbeat_interval="0.1s",
        resource_check_interval="0.05s",
        notifications__webhook=url,
        **settings,
    )


def test_the_guard_stops_a_loop_that_keeps_the_cpu_busy(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    with _guard(tmp_path, "cpu", url, max_cpu_percent=30, cpu_window="0.5s") as guard:
        for _ in guard.episodes():
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:  # a busy episode: one core flat out
                pass
            if guard.episode and guard.episode > 400:
                break
    assert guard.stop is not None and guard.stop.reason is StopReason.CPU, guard.stop
    assert "over max_cpu_percent 30" in guard.stop.detail
    assert guard.episode is not None and guard.episode < 100  # within a few windows, not at the end
    wait_until(lambda: "stop" in _kinds(received), timeout=10)
    assert any("cpu" in body["text"] for body in received)


def test_the_guard_stops_when_the_reward_stops_improving_and_saves_a_final_checkpoint(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, _ = webhook
    saved = []
    with _guard(
        tmp_path, "plateau", url, max_episodes_without_improvement=5, min_improvement=0.5, every_episodes=1000
    ) as guard:
        for episode in guard.episodes():
            guard.report(reward=10.0 + 0.1 * episode)  # creeping up by less than min_improvement
            if guard.should_checkpoint():
                saved.append(guard.save({"w": [float(episode)]}).name)
            if episode > 100:
                break
    assert guard.stop is not None and guard.stop.reason is StopReason.NO_IMPROVEMENT
    assert guard.episode == 6  # best at episode 1, five episodes without improving by more than 0.5
    assert "reward has not improved on its best 10.1 (episode 1) for 5 episodes" in guard.stop.detail
    assert len(saved) == 1  # the final checkpoint of a graceful stop


def test_warning_levels_and_a_fence_reach_the_webhook_and_the_registry(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    with _guard(tmp_path, "warned", url, warn_episodes=3, lease_ttl="2s") as guard:
        for episode in guard.episodes():
            time.sleep(0.02)
            if episode == 5:
                guard.registry.revoke("warned", "operator: stop this run")
            if episode > 500:
                break
    assert guard.fenced
    wait_until(lambda: {"warning", "fence"} <= set(_kinds(received)), timeout=10)
    warning = next(b for b in received if b["trainguard"]["kind"] == "warning")
    assert "episodes 3 reached its warning level 3" in warning["text"]
    with Registry.open(f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}") as registry:
        events = registry.events("warned", kinds=[EventKind.BUDGET_WARNING])
        assert [e.detail["level"] for e in events] == [3]


# -- enforced by the launcher and the watchdog -------------------------------------------------------

BUSY = textwrap.dedent("""\
    import time
    while True:  # a runaway: one core flat out, no checkpoint, no Guard
        pass
    """)


def test_the_launcher_stops_a_child_that_keeps_the_cpu_busy_exit_3(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    script = tmp_path / "busy.py"
    script.write_text(BUSY)
    config = tmp_path / "guard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": "busy",
                "store": str(tmp_path / "store"),
                "limits": {"max_cpu_percent": 40, "cpu_window": "1s"},
                "monitoring": {"heartbeat_interval": "0.2s", "lease_ttl": "3s"},
                "notifications": {"webhook": url, "events": ["stop"]},
            }
        )
    )
    done = run_cli("run", "-c", str(config), "--grace", "2s", "--", sys.executable, str(script), timeout=120)
    assert done.returncode == 3, done.stderr
    assert "stopped (cpu) by trainguard run (exit 3)" in done.stderr
    assert [b["trainguard"]["kind"] for b in received] == ["stop"]
    assert "over max_cpu_percent 40" in received[0]["text"]


ROGUE = textwrap.dedent("""\
    import os, sys, time
    for n in range(100_000):
        open(os.path.join(sys.argv[1], f"model_{n}.bin"), "wb").write(b"w")
        time.sleep(0.1)
    """)


@pytest.mark.skipif(os.geteuid() != 0, reason="fanotify needs CAP_SYS_ADMIN")
def test_the_watchdog_tells_the_webhook_of_a_rogue_writer(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    store = tmp_path / "store"
    registry_url = f"sqlite:///{store / '.trainguard' / 'registry.db'}"
    CheckpointStore(store, run="swt").close()
    subprocess.run(helper_command("acquire_and_exit.py", registry_url, "swt"), check=True, timeout=60)
    script = tmp_path / "rogue.py"
    script.write_text(ROGUE)
    with Registry.open(registry_url) as registry, spawned([sys.executable, str(script), str(store)]) as rogue:
        watchdog = Watchdog(registry, interval=0.2, notifier=Notifier(url, kinds=["rogue"]))
        try:
            wait_until(lambda: watchdog.sweep().foreign, timeout=20, interval=0.3, what="the rogue's writes")
        finally:
            watchdog.close()
            assert watchdog.notifier is not None
            watchdog.notifier.close()
    assert received and received[0]["trainguard"]["kind"] == "rogue"
    assert f"pid {rogue.pid}" in received[0]["text"] and "without the run's lease" in received[0]["text"]


@pytest.mark.parametrize(
    ("key", "recorded", "given"),
    [("max_cpu_percent", 80.0, 150.0), ("max_episodes_without_improvement", 1500, 5000)],
)
def test_a_restart_cannot_loosen_the_cpu_ceiling_or_the_patience(
    key: str, recorded: float, given: float
) -> None:
    assert merge_limits("r", {key: recorded}, {key: recorded / 2})[key] == recorded / 2  # tightening is fine
    assert merge_limits("r", {key: recorded}, {})[key] == recorded  # leaving it out keeps it
    with pytest.raises(LimitRaised, match=key):
        merge_limits("r", {key: recorded}, {key: given})
