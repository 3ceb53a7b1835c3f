"""Model integrity: gates, the live pointer, live loading, rollback, recover, adopting legacy files."""

from __future__ import annotations

import io
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from support import run_cli
from trainguard import (
    CheckpointState,
    CheckpointStore,
    CommitFenced,
    CorruptCheckpoint,
    FingerprintMismatch,
    Guard,
    Registry,
    live,
)
from trainguard.config import Gates
from trainguard.fingerprint import compute
from trainguard.promotion import Promoter

FEATURES = "window: 64\nnormalisation: {price_mean: 1.0842, price_std: 0.012}\n"
HOLD_ONLY = {"HOLD": 970, "BUY": 15, "SELL": 15}
BALANCED = {"HOLD": 400, "BUY": 300, "SELL": 200, "CLOSE": 100}


def _setup(tmp_path: Path, run: str = "swt") -> Path:
    (tmp_path / "features.yaml").write_text(FEATURES)
    config = tmp_path / "guard.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": run,
                "store": "store",
                "features": ["features.yaml"],
                "checkpoints": {
                    "every_episodes": 1,
                    "keep_last": 50,
                    "best_metric": {"name": "expectancy", "mode": "max"},
                },
                "gates": {"max_action_share": 0.95, "min_decisions": 100, "metrics": {"expectancy": ">= 0"}},
            }
        )
    )
    return config


def _train(config: Path, histograms: list[dict[str, int]], expectancies: list[float]) -> list[str]:
    names = []
    with Guard.from_config(config) as guard:
        for episode, (actions, expectancy) in zip(
            guard.episodes(), zip(histograms, expectancies, strict=True), strict=False
        ):
            guard.report(actions=actions, expectancy=expectancy)
            record = guard.save({"policy": {"w": np.full(8, episode, dtype=np.float32)}})
            assert record is not None
            names.append(record.name)
            if len(names) == len(histograms):
                break
    return names


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / '.trainguard' / 'registry.db'}"


def test_hold_only_checkpoint_is_refused_and_the_balanced_one_promoted_and_served(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    # The collapsed one reports the better expectancy: only the decision gate stands between it and live.
    hold, balanced = _train(config, [HOLD_ONLY, BALANCED], [0.9, 0.3])
    result = run_cli("promote", "swt", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["promoted"] == balanced
    verdicts = {c["name"]: {v["gate"]: v for v in c["verdicts"]} for c in report["candidates"]}
    refusal = verdicts[hold]["decisions"]
    assert not refusal["passed"]
    assert "action 'HOLD' takes 97.0% of 1000 decisions (max_action_share 95%)" in refusal["reason"]
    assert all(v["passed"] for v in verdicts[balanced].values())
    served = live.load("swt", registry=_url(tmp_path), features=tmp_path / "features.yaml")
    assert served.name == balanced and served.state["policy"]["w"][0] == 2.0
    with Registry.open(_url(tmp_path)) as registry:
        moved = next(e for e in registry.events("swt") if e.kind == "live_moved")
        assert moved.checkpoint == balanced and {v["gate"] for v in moved.detail["verdicts"]} >= {"decisions"}
    human = run_cli("promote", "swt", "-c", str(config))
    assert "FAIL: action 'HOLD' takes 97.0%" in human.stdout


def test_no_passing_candidate_exits_1_and_changes_nothing(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    _train(config, [HOLD_ONLY, {"HOLD": 50}], [0.5, 0.5])  # collapsed; too few decisions
    result = run_cli("promote", "swt", "-c", str(config))
    assert result.returncode == 1 and "live pointer is unchanged (none)" in result.stdout
    assert "only 50 decisions recorded or evaluated; need at least 100" in result.stdout
    with Registry.open(_url(tmp_path)) as registry:
        assert registry.live_pointer("swt") is None


def test_live_load_with_other_features_names_the_key(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    _train(config, [BALANCED], [0.3])
    assert run_cli("promote", "swt", "-c", str(config)).returncode == 0
    serving = tmp_path / "serving-features.yaml"
    serving.write_text(FEATURES.replace("price_std: 0.012", "price_std: 0.02"))
    with pytest.raises(FingerprintMismatch) as raised:
        live.load("swt", registry=_url(tmp_path), features=serving)
    # Another file name, the same key: the fingerprint is about the features, not about the file.
    assert raised.value.differences == ["normalisation.price_std: 0.012 -> 0.02"]
    assert "refusing to serve" in str(raised.value)


def test_live_model_keeps_serving_when_a_promoted_checkpoint_is_corrupt(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    first, second = _train(config, [BALANCED, BALANCED], [0.3, 0.8])
    assert run_cli("promote", "swt", "-c", str(config), first).returncode == 0
    with live.LiveModel(
        "swt", registry=_url(tmp_path), features=tmp_path / "features.yaml", poll_interval=3600
    ) as model:
        assert model.current is not None and model.current.name == first
        assert run_cli("promote", "swt", "-c", str(config), second).returncode == 0
        data = tmp_path / "store" / second / "tensors.safetensors"
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 0xFF  # the promoted checkpoint's data rots on disk after promotion
        data.write_bytes(bytes(raw))
        assert model.refresh() is False
        assert model.current.name == first and float(model.state["policy"]["w"][0]) == 1.0
        assert isinstance(model.last_error, CorruptCheckpoint)


def test_live_model_swaps_in_a_good_promotion(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    first, second = _train(config, [BALANCED, BALANCED], [0.3, 0.8])
    assert run_cli("promote", "swt", "-c", str(config), first).returncode == 0
    with live.LiveModel(
        "swt", registry=_url(tmp_path), features=tmp_path / "features.yaml", poll_interval=3600
    ) as model:
        assert run_cli("promote", "swt", "-c", str(config)).returncode == 0  # the best: second
        assert model.refresh() is True
        assert model.current is not None and model.current.name == second


def _files_outside_registry(root: Path) -> int:
    return sum(
        len(files) for directory, _, files in os.walk(root) if ".trainguard" not in directory.split(os.sep)
    )


def test_recover_pins_and_serves_the_last_good_and_quarantines_the_rest(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with CheckpointStore(store_dir, run="swt") as store:
        old = store.registry.acquire("swt", ttl=3600)
        for episode in range(100, 1001, 100):
            store.save({"w": np.full(4, episode, dtype=np.float32)}, episode=episode, lease=old)
    files_before = _files_outside_registry(store_dir)
    result = run_cli(
        "recover",
        "swt",
        "--store",
        str(store_dir),
        "--last-good",
        "ep00000400-t1",
        "--reason",
        "rogue training from episode 500 on",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["quarantined"] == [f"ep{e:08d}-t1" for e in range(500, 1001, 100)]
    assert summary["states_before"] == {"committed": 10}
    assert summary["states_after"] == {"committed": 4, "quarantined": 6}
    assert (
        summary["files_before"] == summary["files_after"] == 30
    )  # 10 checkpoints x 3 files: nothing deleted
    # Everything that was on disk still is; the only additions are the six quarantine reason records.
    assert _files_outside_registry(store_dir) == files_before + 6
    with CheckpointStore(store_dir, run="swt") as store:
        good = store.record("ep00000400-t1")
        assert good.pinned and store.registry.live_pointer("swt") == good.name
        assert [r.episode for r in store.checkpoints()] == [100, 200, 300, 400]
        with pytest.raises(CommitFenced, match="revoked: recover: rogue training"):
            store.save({"w": np.zeros(4, dtype=np.float32)}, episode=1100, lease=old)
        assert store.verify("ep00001000-t1").ok  # quarantined, intact
    served = live.load("swt", registry=f"sqlite:///{store_dir / '.trainguard' / 'registry.db'}")
    assert served.name == "ep00000400-t1"


def test_quarantine_after_episode_and_rollback(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    with CheckpointStore(store_dir, run="swt") as store:
        lease = store.registry.acquire("swt", ttl=3600)
        for episode in (10, 20, 30):
            store.save({"w": np.zeros(2)}, episode=episode, lease=lease)
        store.registry.set_live_pointer("swt", "ep00000030-t1", reason="test")
    quarantine = run_cli(
        "ckpt",
        "quarantine",
        "swt",
        "--store",
        str(store_dir),
        "--after-episode",
        "15",
        "--reason",
        "suspicious",
    )
    assert quarantine.returncode == 0 and "2 checkpoint(s) moved aside" in quarantine.stdout
    assert "was the live checkpoint" in quarantine.stdout
    refused = run_cli(
        "rollback", "swt", "--store", str(store_dir), "--to", "ep00000020-t1", "--reason", "back"
    )
    assert refused.returncode == 1 and "refusing to roll back" in refused.stdout
    rolled = run_cli(
        "rollback", "swt", "--store", str(store_dir), "--to", "ep00000010-t1", "--reason", "back"
    )
    assert rolled.returncode == 0, rolled.stderr
    scan_before = run_cli("incident", "scan", str(store_dir))
    assert "the live pointer is on" not in scan_before.stdout  # live is healthy again
    with Registry.open(f"sqlite:///{store_dir / '.trainguard' / 'registry.db'}") as registry:
        assert registry.live_pointer("swt") == "ep00000010-t1"
        registry.set_checkpoint_state("swt", "ep00000010-t1", CheckpointState.QUARANTINED, reason="test")
    scan = run_cli("incident", "scan", str(store_dir))
    assert (
        scan.returncode == 1 and "the live pointer is on ep00000010-t1, which is quarantined" in scan.stdout
    )


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_adopt_legacy_files(tmp_path: Path) -> None:
    legacy, marker = tmp_path / "legacy", tmp_path / "code-ran"
    legacy.mkdir()
    model = torch.nn.Linear(4, 2)
    for episode in (13400, 13475):
        torch.save(model.state_dict(), legacy / f"checkpoint_ep{episode:06d}.pth")
    good_bytes = (legacy / "checkpoint_ep013475.pth").read_bytes()
    (legacy / "checkpoint_ep013476.pth").write_bytes(good_bytes[: len(good_bytes) // 2])
    evil = io.BytesIO()
    torch.save({"weight": _RunsCode(marker)}, evil)
    (legacy / "checkpoint_ep013477.pth").write_bytes(evil.getvalue())
    (legacy / "notes.txt").write_text("not a checkpoint")
    originals = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in legacy.iterdir()}
    (tmp_path / "features.yaml").write_text(FEATURES)

    result = run_cli(
        "ckpt",
        "adopt",
        "swt",
        str(legacy),
        "--store",
        str(tmp_path / "store"),
        "--features",
        str(tmp_path / "features.yaml"),
        "--json",
    )
    assert result.returncode == 1  # some were refused
    report = json.loads(result.stdout)
    assert [a["file"] for a in report["adopted"]] == ["checkpoint_ep013400.pth", "checkpoint_ep013475.pth"]
    refused = {r["file"]: r["reason"] for r in report["refused"]}
    assert set(refused) == {"checkpoint_ep013476.pth", "checkpoint_ep013477.pth"}
    assert "damaged zip archive (truncated?)" in refused["checkpoint_ep013476.pth"]
    assert "refused by torch's weights_only loader" in refused["checkpoint_ep013477.pth"]
    assert report["ignored"] == ["notes.txt"]
    assert not marker.exists()  # nothing executed
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in legacy.iterdir()} == originals
    with CheckpointStore(tmp_path / "store", run="swt") as store:
        adopted = store.load("latest")
        assert adopted.episode == 13475 and torch.equal(adopted.state["weight"], model.weight.detach())
        origin = adopted.manifest.origin
        assert origin is not None and origin["adopted_from"].endswith("checkpoint_ep013475.pth")
        features = compute([str(tmp_path / "features.yaml")])
        assert features is not None and adopted.manifest.fingerprint == features.digest
        assert (tmp_path / "store" / adopted.name / "state.pt").read_bytes() == good_bytes  # byte for byte


def test_evaluator_numbers_override_what_the_trainer_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _setup(tmp_path)
    (_,) = _train(config, [BALANCED], [0.9])
    (tmp_path / "held_out.py").write_text(
        textwrap.dedent("""\
        def evaluate(checkpoint):
            # On held-out data the policy turns out to sit on HOLD.
            return {"metrics": {"expectancy": -0.2}, "actions": {"HOLD": 990, "BUY": 10}}
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with CheckpointStore(tmp_path / "store", run="swt") as store:
        promoter = Promoter(
            store,
            Gates(evaluator="held_out:evaluate", metrics={"expectancy": ">= 0"}),
            live_features=compute([str(tmp_path / "features.yaml")]),
        )
        (assessment,) = promoter.assess_all()
    failed = {v.gate: v.reason for v in assessment.verdicts if not v.passed}
    assert set(failed) == {"decisions", "metrics"}
    assert "expectancy = -0.2 fails >= 0" in failed["metrics"]


def test_auto_promotion_from_the_guard(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    body = yaml.safe_load(config.read_text())
    body["gates"]["auto_promote"] = True
    config.write_text(yaml.safe_dump(body))
    _train(config, [BALANCED, HOLD_ONLY, BALANCED], [0.1, 0.9, 0.2])
    with Registry.open(_url(tmp_path)) as registry:
        moves = [e.checkpoint for e in registry.events("swt") if e.kind == "live_moved"]
    assert moves == ["ep00000001-t1", "ep00000003-t1"]  # the HOLD-only save in between never went live
