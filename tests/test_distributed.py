"""torch.distributed.checkpoint through the fenced store (issue 13): real torchrun jobs of 4 ranks (gloo,
CPU) with a sharded (DTensor) state - round trip, a stale job fenced on every rank, a rank killed in the
middle of a save, resharding 4 -> 2, a load that unpickles nothing - and one lease per job."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch

from dcp_worker import full_state
from support import run_job, torchrun_command, torchrun_reports
from trainguard.checkpoints import CheckpointStore
from trainguard.checkpoints.layout import staging_root
from trainguard.distributed import Reader

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "dcp_worker.py"
RUN = "dcp"


def torchrun(
    ranks: int, mode: str, root: Path, out: Path, options: dict[str, Any], timeout: float = 180
) -> list[dict[str, Any]]:
    """Run the worker under ``torchrun --standalone``; what each rank saw, by rank."""
    args = [mode, str(root), str(out), json.dumps(options)]
    return torchrun_reports(WORKER, args, out, ranks=ranks, log=f"{mode}.log", timeout=timeout)


def _store(root: Path) -> CheckpointStore:
    return CheckpointStore.open_existing(root, run=RUN, read_only=True)


def _no_unpickling(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("something unpickled while loading a fenced DCP checkpoint")


def _load_in_process(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Load the sharded checkpoint whole into this one process (DCP reshards N -> 1), with every way to
    unpickle disabled: the index, the shards and the reader must not need one."""
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    target = {key: torch.zeros_like(value) for key, value in full_state(0).items()}
    with monkeypatch.context() as patch:
        for module, attribute in (("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler")):
            patch.setattr(f"{module}.{attribute}", _no_unpickling)
        patch.setattr(torch, "load", _no_unpickling)
        with _store(root) as store:
            dcp_load(target, storage_reader=Reader(store, name))
    return target


def _exact(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sharded_save_round_trips_exactly_and_reshards_4_to_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = tmp_path / "store", tmp_path / "out"
    saved = torchrun(4, "save", root, out, {"seed": 3, "name": "step-100"})
    assert [s.get("error") for s in saved] == [None] * 4, (out / "save.log").read_text()[-3000:]
    assert saved[0]["committed"] == "step-100"
    with _store(root) as store:
        assert store.verify("step-100").ok
        files = {f.path: f.codec for f in store.manifest("step-100").files}
    assert sorted(p for p, c in files.items() if c == "dcp-shard") == [f"shard-{r:05d}.bin" for r in range(4)]
    loaded = torchrun(4, "load", root, out, {"seed": 3})
    assert [(s.get("error"), s["exact"], s["name"], s["extra"]) for s in loaded] == [
        (None, True, "step-100", {"seed": 3})
    ] * 4
    resharded = torchrun(2, "load", root, out, {"seed": 3, "name": "step-100"})
    assert [(s.get("error"), s["exact"]) for s in resharded] == [(None, True)] * 2
    assert _exact(_load_in_process(root, "step-100", monkeypatch), full_state(3))  # 4 -> 1, no pickle


def test_a_stale_job_is_refused_on_every_rank_and_a_killed_rank_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = tmp_path / "store", tmp_path / "out"
    seen = torchrun(4, "stale", root, out, {"seed": 5, "name": "step-100"})
    assert [s.get("error") for s in seen] == [None] * 4, (out / "stale.log").read_text()[-3000:]
    # the coordinator's refusal reaches all four ranks, as the fencing error
    assert all(s.get("stale_refused") == ["LeaseLost"] for s in seen), seen
    with _store(root) as store:
        record = store.record("step-100")
        assert record.token == 2 and store.verify("step-100").ok  # the newer incarnation's, untouched
    assert _exact(_load_in_process(root, "step-100", monkeypatch), full_state(5))  # nothing of seed 6

    killed = torchrun(4, "save", root, out, {"seed": 9, "name": "step-200", "victim": 2}, timeout=240)
    assert all(s.get("committed") is None for s in killed)  # any rank that lived to report saw no commit
    with _store(root) as store:
        assert [r.name for r in store.checkpoints()] == ["step-100"]
        assert store.verify("step-100").ok
    assert not (root / "step-200").exists()
    staging = staging_root(root)
    assert any(staging.iterdir())  # the torn attempt, still staged (its writer may be alive: kept)...
    with CheckpointStore(root, run=RUN) as writer:  # ...until a writer's open finds its writer gone
        assert writer.recovery is not None
    assert not any(staging.iterdir())


def test_one_lease_per_job_and_every_rank_stops_at_the_same_episode(tmp_path: Path) -> None:
    root, out = tmp_path / "store", tmp_path / "out"
    # A SIGTERM to rank 2 alone, in episode 3: every rank ends after episode 3, none is left in a collective.
    first = torchrun(
        4,
        "job",
        root,
        out,
        {"guard": {"max_episodes": 6, "every_episodes": 2}, "signal_at": 3, "signal_rank": 2},
    )
    assert [s.get("error") for s in first] == [None] * 4, (out / "job.log").read_text()[-3000:]
    assert [s["episodes"] for s in first] == [[1, 2, 3]] * 4
    assert [s["verdict"] for s in first] == ["SIGNALLED"] * 4
    assert len({s["token"] for s in first}) == 1  # one token for the job, learnt by every rank
    assert first[0]["saved"] == ["ep00000002-t1"]
    # Restarted: the budget is the job's, charged once per episode (not once per rank), across restarts.
    second = torchrun(4, "job", root, out, {"guard": {"max_episodes": 6, "every_episodes": 2}})
    assert [s.get("error") for s in second] == [None] * 4, (out / "job.log").read_text()[-3000:]
    assert [s["resumed"] for s in first] == [None] * 4  # a new run: nothing to load, on every rank
    assert [(s["resumed"], s["resumed_exact"]) for s in second] == [("ep00000002-t1", True)] * 4
    assert [s["episodes"] for s in second] == [[4, 5, 6]] * 4
    assert [s["verdict"] for s in second] == ["DONE"] * 4 and second[0]["stop"] == "episodes"
    assert second[0]["saved"] == ["ep00000004-t2", "ep00000006-t2"]
    with _store(root) as store:
        assert store.registry.run(RUN).episodes_spent == 6
        assert [r.name for r in store.checkpoints()] == ["ep00000002-t1", "ep00000004-t2", "ep00000006-t2"]


def test_trainguard_run_supervises_a_torchrun_job_that_adopts_its_lease(tmp_path: Path) -> None:
    root, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    config = tmp_path / "guard.yaml"
    config.write_text(
        json.dumps(
            {
                "run": RUN,
                "store": str(root),
                "limits": {"max_episodes": 4},
                "checkpoints": {"every_episodes": 2},
                "monitoring": {"heartbeat_interval": "0.5s", "lease_ttl": "5s"},
            }
        )
    )
    job = torchrun_command(WORKER, ["job", str(root), str(out), json.dumps({"from_config": True})], ranks=2)
    command = [sys.executable, "-m", "trainguard", "run", "-c", str(config), "--", *job]
    status = run_job(command, out / "run.log", timeout=180)
    log = (out / "run.log").read_text()
    assert status == 3, log[-3000:]  # a guard rule (the budget) ended it, as designed
    assert "stopped (episodes) by the Guard in the child" in log
    seen = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [s.get("error") for s in seen] == [None, None], seen
    assert [s["episodes"] for s in seen] == [[1, 2, 3, 4]] * 2 and [s["verdict"] for s in seen] == [
        "DONE"
    ] * 2
    with _store(root) as store:
        events = store.registry.events(RUN)
        acquired = [e for e in events if e.kind == "lease_acquired"]
        started = next(e for e in events if e.kind == "guard_started")
        # one lease for the whole tree: the launcher's, adopted by the Guard on rank 0, known to rank 1
        assert len(acquired) == 1 and started.detail["adopted"] and seen[1]["token"] == acquired[0].token
        assert [r.name for r in store.checkpoints()] == ["ep00000002-t1", "ep00000004-t1"]
    for rank in seen:  # the launcher reaped the whole tree: no rank outlives it
        assert (
            not Path(f"/proc/{rank['pid']}").exists()
            or "zombie" in Path(f"/proc/{rank['pid']}/status").read_text()
        )
