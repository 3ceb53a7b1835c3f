"""Ray Train and Ray Tune through the fenced store (issue 14), on a real local Ray instance.

Every Ray run is a process of tests/ray_job.py in namespaces of its own: a network namespace with only
loopback (Ray binds and probes the machine's addresses otherwise) and a PID namespace, so that whatever Ray
starts (raylet, GCS, workers) dies with it, whatever happens to the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from trainguard import Registry
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.prepared import stage_state
from trainguard.config import parse_config
from trainguard.integrations.ray import GuardCallback
from trainguard.registry import CheckpointRecord, EventKind, ProcessIdentity

pytestmark = pytest.mark.slow

JOB = Path(__file__).with_name("ray_job.py")
JOB_TIMEOUT = 900.0


def _namespaced(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.fail("`unshare` (util-linux) is needed to give Ray a loopback-only network namespace")
    wrapped = [
        "unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
        "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command,
    ]  # fmt: skip
    # On a timeout subprocess.run kills unshare, --kill-child kills the namespace's first process, and the
    # kernel every other process in the namespace: nothing Ray started outlives the test.
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(
        wrapped, capture_output=True, text=True, timeout=JOB_TIMEOUT, check=False, cwd=cwd, env=environment
    )


def _in_own_namespaces(scenario: str, store: Path, out: Path, options: dict[str, Any]) -> Any:
    done = _namespaced(sys.executable, str(JOB), scenario, str(store), str(out), json.dumps(options))
    result = out / "result.json"
    assert done.returncode == 0 and result.exists(), done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(result.read_text())


def _events(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]


def _registry(store: Path) -> Registry:
    return Registry.open(f"sqlite:///{store / '.trainguard' / 'registry.db'}")


def _settings(**limits: Any) -> dict[str, Any]:
    return {"limits": limits}


JOBS = {
    # a worker SIGKILLs itself at step 6 (after the first commit); Ray restarts the group once
    "killed": {"guard": _settings(max_steps=12), "kill_at": 6, "max_failures": 1},
    # three starts of one run under an 18-step budget (the trainer asks for 6, then 12, then all), a fourth
    # with the budget spent; retention keeps one, the best ("score" peaks at step 4) and the resume source
    "restarts": {
        "guard": {
            "limits": {"max_steps": 18},
            "checkpoints": {"keep_last": 1, "keep_best": 1, "best_metric": {"name": "score", "mode": "max"}},
        },
        "runs": [{"loop_steps": 6}, {"loop_steps": 12}, {}, {}],
    },
    # the driver is sent SIGTERM at step 6; the next fit resumes
    "sigterm": {"runs": [{"sigterm_at": 6}, {"loop_steps": 16}]},
    # an operator takes the run over at step 6: the next commit is refused, the workers stop themselves
    "takeover": {"takeover_at": 6},
}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ray")
    _in_own_namespaces("jobs", base / "store", base / "out", {"jobs": JOBS})
    return base


def _commits(registry: Registry, run: str) -> dict[str, int]:
    """Checkpoint name -> the id of its commit event (its place in the run's history)."""
    return {str(e.checkpoint): e.id for e in registry.events(run) if e.kind == EventKind.CHECKPOINT_COMMITTED}


def _lease_acquired(registry: Registry, run: str, token: int) -> int:
    return next(e.id for e in registry.events(run) if e.kind == EventKind.LEASE_ACQUIRED and e.token == token)


def test_a_killed_worker_restarts_the_group_under_a_new_token_and_the_budget_is_charged_once(
    jobs: Path,
) -> None:
    out, store = jobs / "out" / "killed", jobs / "store" / "killed"
    assert json.loads((out / "result.json").read_text()) == [{"error": ""}]
    starts = [
        (e["attempt"], e["token"], e["step"], e["resumed"]) for e in _events(out) if e["event"] == "start"
    ]
    assert sorted(starts) == [(1, 1, 0, None), (1, 1, 0, None), (2, 2, 4, "step4-t1"), (2, 2, 4, "step4-t1")]
    with _registry(store) as registry:
        assert registry.run("ray").steps_spent == 12  # 4 before the death, 8 after: the 2 lost steps once
        records = registry.checkpoints("ray")
        commits, restart = _commits(registry, "ray"), _lease_acquired(registry, "ray", 2)
    assert [r.name for r in records] == ["step4-t1", "step8-t2", "step12-t2"]
    # the killed attempt committed nothing once the new group's lease existed
    assert all(commits[r.name] < restart for r in records if r.token == 1)
    ends = {e["digest"] for e in _events(out) if e["event"] == "end"}
    assert len(ends) == 1  # both ranks finished with the same weights


def test_the_step_budget_holds_across_restarts_and_a_spent_start_runs_no_step(jobs: Path) -> None:
    out, store = jobs / "out" / "restarts", jobs / "store" / "restarts"
    results = json.loads((out / "result.json").read_text())
    assert [r["error"] for r in results[:3]] == ["", "", ""]
    assert "BudgetExhausted" in results[3]["error"] or "budget" in results[3]["error"], results[3]
    events = _events(out)
    fits = [i for i, e in enumerate(events) if e["event"] == "fit"]
    ends = [e["step"] for e in events if e["event"] == "end" and e["rank"] == 0]
    assert ends == [6, 12, 18]  # the third start asked for everything: the run's budget ended it at 18
    assert not [e for e in events[fits[3] :] if e["event"] == "start"]  # the fourth: no worker started
    with _registry(store) as registry:
        assert registry.run("ray").steps_spent == 18
        kept = [r.name for r in registry.checkpoints("ray")]
        resumed = [e.checkpoint for e in registry.events("ray") if e.kind == EventKind.RESUMED]
    # the best (step 4, by "score"), the last start's resume source (step 12) and the newest
    assert kept == ["step4-t1", "step12-t2", "step18-t3"], (kept, resumed)


def test_sigterm_to_the_driver_gives_a_last_checkpoint_that_resumes_bit_exact(jobs: Path) -> None:
    out, store = jobs / "out" / "sigterm", jobs / "store" / "sigterm"
    assert json.loads((out / "result.json").read_text()) == [{"error": ""}, {"error": ""}]
    events = _events(out)
    first_end = next(e for e in events if e["event"] == "end" and e["rank"] == 0)
    assert "SIGTERM" in str(first_end["stop"]) and not first_end["fenced"]
    stopped_at = first_end["step"]
    with _registry(store) as registry:
        last: CheckpointRecord = [r for r in registry.checkpoints("ray") if r.token == 1][-1]
    assert last.metrics["global_step"] == stopped_at >= 6
    second = [e for e in events if e["event"] == "start" and e["token"] == 2]
    assert {e["resumed"] for e in second} == {last.name}
    assert {e["step"] for e in second} == {stopped_at}
    # weights and optimizer state after the resume are those the workers had when they stopped
    assert {e["digest"] for e in second} == {first_end["digest"]}


def test_an_attempt_whose_lease_was_taken_over_commits_nothing_more(jobs: Path) -> None:
    out, store = jobs / "out" / "takeover", jobs / "store" / "takeover"
    [result] = json.loads((out / "result.json").read_text())
    assert result["error"].startswith("LeaseLost"), result
    ends = [e for e in _events(out) if e["event"] == "end"]
    assert len(ends) == 2 and all(e["fenced"] for e in ends)
    with _registry(store) as registry:
        commits, takeover = _commits(registry, "ray"), _lease_acquired(registry, "ray", 2)
        records = registry.checkpoints("ray")
    assert [r.name for r in records] == ["step4-t1"]
    assert all(commits[r.name] < takeover for r in records)


def test_a_report_from_an_earlier_attempt_is_not_committed(tmp_path: Path) -> None:
    """The controller's side alone (no Ray instance): a report that a worker of the first attempt sends after
    the group was restarted carries the old token; its files are not committed, the refusal is audited."""
    config, _ = parse_config({"run": "ray", "store": str(tmp_path / "store")}, strict=True)
    callback = GuardCallback(config)
    callback.after_controller_start(None)
    callback.before_worker_group_start(None)
    staged = stage_state(callback.store, "late-r0", ProcessIdentity.current(), 1, {"w": _tensor(1.0)})
    callback.before_worker_group_start(None)  # Ray restarts the group: attempt 2, token 2

    def report(token: int, state: Any) -> list[dict[str, Any]]:
        facts = {"token": token, "rank": 0, "steps": 1, "episodes": 0, "step": 1, "episode": 0, "name": None}
        return [{"loss": 0.5, "trainguard": {**facts, "staged": state.as_dict()}}]

    callback.after_report(None, report(1, staged))
    fresh = stage_state(callback.store, "now-r0", ProcessIdentity.current(), 2, {"w": _tensor(2.0)})
    callback.after_report(None, report(2, fresh))
    callback.after_controller_finish(None)
    with _registry(tmp_path / "store") as registry:
        assert [(r.name, r.token) for r in registry.checkpoints("ray")] == [("step1-t2", 2)]
        refused = [e for e in registry.events("ray") if e.kind == EventKind.COMMIT_REFUSED]
        assert [e.token for e in refused] == [1]
    with CheckpointStore.open_existing(tmp_path / "store", run="ray", read_only=True) as store:
        assert float(store.load("step1-t2").state["w"][0]) == 2.0


def _tensor(value: float) -> Any:
    import torch

    return torch.full((3,), value)


def test_a_sweep_budget_is_shared_by_concurrent_trials(tmp_path: Path) -> None:
    """Ray Tune: three trials (two at a time), each a guarded run with its own 6-episode budget, all drawing
    from one 10-episode sweep budget in the shared registry."""
    store, out = tmp_path / "store", tmp_path / "out"
    options = {"sweep_episodes": 10, "trials": 3, "guard": _settings(max_episodes=6), "save_every": 2}
    result = _in_own_namespaces("sweep", store, out, options)
    assert result["errors"] == [] and result["left_before"] == 10
    with _registry(store) as registry:
        spent = {run.name: run.episodes_spent for run in registry.runs()}
        per_trial = {name: spent[name] for name in spent if name.startswith("trial")}
        assert spent["sweep"] == 10 == sum(per_trial.values())  # every episode run was drawn, once
        assert sorted(per_trial.values())[0] < 6  # a trial was stopped by the sweep, not by its own budget
        assert all(registry.checkpoints(name) for name, n in per_trial.items() if n >= 2)


def test_the_example_runs_two_workers_to_the_budget_and_a_second_start_is_one_line(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    store = tmp_path / "store"
    done = _namespaced(
        sys.executable, "-m", "examples.ray.train", "--store", str(store), "--max-steps", "50", cwd=repo
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "committed: step25-t1, step50-t1" in done.stdout, done.stdout[-3000:]
    again = _namespaced(
        sys.executable, "-m", "examples.ray.train", "--store", str(store), "--max-steps", "50", cwd=repo
    )
    assert again.returncode == 3, again.stdout[-3000:] + again.stderr[-6000:]
    assert "trainguard: run 'ray-example' has spent 50 steps of its 50 steps budget" in again.stderr
    # (Ray's controller logs the refusal with its own traceback, forwarded to the driver's stderr.)
    with _registry(store) as registry:
        assert registry.run("ray-example").steps_spent == 50
