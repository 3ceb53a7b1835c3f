"""What the adversarial review fed the library (issue 10, defects 11, 12, 13, 18): every odd state round-trips
exactly or is a clear CheckpointRejected with nothing left behind; every forged manifest or tree is a clean
CorruptCheckpoint; a failed move after the registry decided is a documented error, and never makes the store
impossible to open."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from trainguard import (
    CheckpointRejected,
    CheckpointState,
    CheckpointStore,
    CheckpointWriteError,
    CorruptCheckpoint,
)
from trainguard._os.hashing import hash_file
from trainguard.checkpoints import Validation, retention
from trainguard.checkpoints.layout import QUARANTINE, STAGING, TRASH

_real_rename = os.rename


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointStore]:
    with CheckpointStore(tmp_path / "store", run="r") as opened:
        yield opened


def _lease(store: CheckpointStore) -> Any:
    return store.registry.acquire("r", ttl=60)


def _failing_rename_into(directory: str) -> Callable[..., None]:
    """os.rename as the store calls it (relative to directory descriptors), failing for moves into
    ``directory``."""

    def fake(source: Any, target: Any, **kwargs: Any) -> None:
        into = os.readlink(f"/proc/self/fd/{kwargs['dst_dir_fd']}") if "dst_dir_fd" in kwargs else str(target)
        if into.endswith(f"/{directory}"):
            raise OSError(errno.EIO, "injected I/O error")
        _real_rename(source, target, **kwargs)

    return fake


# -- defect 12: exact round trips -----------------------------------------------------------------


def test_zero_dimensional_arrays_and_numpy_scalars_round_trip_exactly(store: CheckpointStore) -> None:
    scalars = [np.float32(0.1), np.float16(1.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True)]
    state = {
        "zero_d": np.array(3.5, dtype=np.float32),
        "zero_d_int": np.array(-7, dtype=np.int64),
        "zero_d_torch": torch.tensor(2.25, dtype=torch.float64),
        "scalars": scalars,
        "nan": np.float32("nan"),
    }
    record = store.save(state, episode=1, lease=_lease(store))
    loaded = store.load(record.name).state
    assert loaded["zero_d"].shape == () and loaded["zero_d"].dtype == np.float32 and loaded["zero_d"] == 3.5
    assert loaded["zero_d_int"].shape == () and loaded["zero_d_int"] == -7
    assert loaded["zero_d_torch"].shape == () and loaded["zero_d_torch"].dtype == torch.float64
    for given, back in zip(scalars, loaded["scalars"], strict=True):
        assert type(back) is type(given) and back == given
    assert type(loaded["nan"]) is np.float32 and np.isnan(loaded["nan"])


# -- defect 13: inputs that cannot become a checkpoint --------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


BAD_STATES = [
    ("a tensor named like the safetensors header", {"__metadata__": np.ones(2)}, 1, "reserved"),
    ("a lone surrogate in a key", {"\ud800": np.ones(2)}, 1, "not valid Unicode"),
    ("a lone surrogate in a value", {"w": "\udfff"}, 1, "not valid Unicode"),
    ("nesting deeper than any state", _deep(5000), 1, "nested deeper"),
    ("an episode beyond 2**63 - 1", {"w": np.ones(2)}, 2**63, "beyond the largest storable"),
]


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "unvalidated"])
@pytest.mark.parametrize(("label", "state", "episode", "why"), BAD_STATES, ids=[c[0] for c in BAD_STATES])
def test_inputs_that_cannot_be_stored_are_rejected_with_nothing_left_behind(
    tmp_path: Path, label: str, state: object, episode: int, why: str, validate: bool
) -> None:
    with CheckpointStore(tmp_path / "s", run="r", validation=Validation(decode=validate)) as store:
        with pytest.raises(CheckpointRejected, match=why):
            store.save(state, episode=episode, lease=_lease(store))
        assert os.listdir(store.root / STAGING) == []
        assert store.checkpoints(states=None) == []


# -- defect 18: forged manifests and trees --------------------------------------------------------


def _forge(store: CheckpointStore, name: str, *, manifest: Any = None, tree: bytes | None = None) -> None:
    """Rewrite a checkpoint's files and re-pin every hash (manifest and registry row), as someone with write
    access to both could."""
    directory = store.root / name
    body = json.loads((directory / "MANIFEST.json").read_text())
    if tree is not None:
        (directory / "tree.json").write_bytes(tree)
        entry = next(f for f in body["files"] if f["path"] == "tree.json")
        entry["bytes"], entry["hash"] = hash_file(directory / "tree.json")
    if callable(manifest):
        manifest(body)
    text = manifest if isinstance(manifest, bytes) else json.dumps(body).encode()
    (directory / "MANIFEST.json").write_bytes(text)
    with sqlite3.connect(store.root / ".trainguard" / "registry.db") as db:
        db.execute(
            "UPDATE tg_checkpoints SET manifest_hash = ? WHERE name = ?",
            (hash_file(directory / "MANIFEST.json")[1], name),
        )


DEEP_TREE = b'{"skeleton": ' + b'{"__tg__":"list","items":[' * 3000 + b"]}" * 3000 + b', "frameworks": {}}'
OBJECT_SCALAR = b'{"skeleton": {"__tg__": "numpy", "dtype": "O", "value": 1}, "frameworks": {}}'
FORGERIES: list[tuple[str, dict[str, Any]]] = [
    ("frameworks given as a list", {"tree": b'{"skeleton": null, "frameworks": ["numpy"]}'}),
    ("a tree nested 3000 deep", {"tree": DEEP_TREE}),
    ("a numpy scalar of object dtype", {"tree": OBJECT_SCALAR}),
    ("a manifest nested 100000 deep", {"manifest": b"[" * 100000 + b"]" * 100000}),
    ("episode 1e400", {"manifest": lambda m: m.__setitem__("episode", 1e400)}),
    ("a NUL byte in a file path", {"manifest": lambda m: m["files"][0].__setitem__("path", "tree\x00.json")}),
    ("files given as an object", {"manifest": lambda m: m.__setitem__("files", {"a": 1})}),
    ("metrics given as a list", {"manifest": lambda m: m.__setitem__("metrics", [1])}),
    ("a file entry with a path outside", {"manifest": lambda m: m["files"][0].__setitem__("path", "../x")}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "forgery"), FORGERIES, ids=[f[0] for f in FORGERIES])
def test_forged_manifests_and_trees_are_clean_corrupt_checkpoints(
    store: CheckpointStore, label: str, forgery: dict[str, Any]
) -> None:
    name = store.save({"w": np.ones(3, dtype=np.float32), "n": 1}, episode=1, lease=_lease(store)).name
    _forge(store, name, **forgery)
    with pytest.raises(CorruptCheckpoint):
        store.load(name)
    report = store.verify(name)  # a value, never a crash (a forged tree with re-pinned hashes verifies)
    assert report.ok or report.problems[0].reason


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("shape", [[2**64, 0], [2**62 - 1, 0], [0] * 40], ids=["2^64x0", "2^62x0", "40 dims"])
def test_a_huge_zero_size_shape_is_decoded_or_refused_cleanly(
    store: CheckpointStore, framework: str, shape: list[int]
) -> None:
    value = torch.ones(3) if framework == "torch" else np.ones(3, dtype=np.float32)
    name = store.save({"w": value}, episode=1, lease=_lease(store)).name
    tensors = store.root / name / "tensors.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    tensors.write_bytes(len(header).to_bytes(8, "little") + header)

    def repin(m: dict[str, Any]) -> None:
        entry = next(f for f in m["files"] if f["path"] == "tensors.safetensors")
        entry["bytes"], entry["hash"] = hash_file(tensors)

    _forge(store, name, manifest=repin)
    try:
        loaded = store.load(name).state["w"]
    except CorruptCheckpoint:
        return
    assert loaded.numel() == 0 if framework == "torch" else loaded.size == 0


# -- defect 11: failures after the registry decided ------------------------------------------------


def test_a_failed_discard_after_a_commit_is_not_an_error_and_the_next_open_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    with CheckpointStore(root, run="r", retention_policy=retention.keep_last(1)) as store:
        lease = _lease(store)
        first = store.save({"w": np.ones(2)}, episode=1, lease=lease)
        monkeypatch.setattr("trainguard.checkpoints._durable.os.rename", _failing_rename_into(TRASH))
        second = store.save({"w": np.ones(2)}, episode=2, lease=lease)  # committed: no raw StepFailed
        monkeypatch.undo()
        assert store.registry.checkpoint("r", first.name).state is CheckpointState.EVICTED
        assert (root / first.name).is_dir() and store.load("latest").name == second.name
    with CheckpointStore(root, run="r") as reopened:
        assert f"evicted {first.name}" in reopened.recovery.finished
    assert not (root / first.name).exists()


def test_a_failed_quarantine_move_is_a_documented_error_and_no_open_ever_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    with CheckpointStore(root, run="r") as store:
        name = store.save({"w": np.ones(2)}, episode=1, lease=_lease(store)).name
        monkeypatch.setattr("trainguard.checkpoints._durable.os.rename", _failing_rename_into(QUARANTINE))
        with pytest.raises(CheckpointWriteError) as raised:
            store.quarantine(name, reason="suspicious")
        assert raised.value.committed  # the registry decided: nothing loads it any more
    # Every later open while the move keeps failing reports it and carries on.
    for _ in range(2):
        with CheckpointStore(root, run="r") as reopened:
            assert any(name in failed for failed in reopened.recovery.failed)
            with pytest.raises(Exception, match="quarantined"):
                reopened.load(name)
    monkeypatch.undo()
    with CheckpointStore(root, run="r") as healed:
        assert f"quarantined {name}" in healed.recovery.finished
        assert healed.verify(name).ok  # found in .quarantine, intact
    assert (root / QUARANTINE / name).is_dir() and not (root / name).exists()
