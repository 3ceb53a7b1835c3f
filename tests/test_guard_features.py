"""Feature fingerprints: resume refuses a checkpoint made with other features and names the keys."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from guard_support import run_worker, write_config
from trainguard import CheckpointState, FingerprintMismatch, Guard
from trainguard.fingerprint import compute, differences

FEATURES = textwrap.dedent("""\
    # features the model was trained on
    window: 64
    features:
      - {name: wavelet_db4_l1, dim: 32}
      - {name: position_side, dim: 1}
    normalisation:
      price_mean: 1.0842
      price_std: 0.012
    """)

REFORMATTED = textwrap.dedent("""\
    normalisation: {price_std: 0.0120, price_mean: 1.08420}   # same values, other order and spelling
    features: [{dim: 32, name: wavelet_db4_l1}, {name: position_side, dim: 1}]
    window:   64.0
    """)


def _trained(tmp_path: Path) -> Path:
    (tmp_path / "features.yaml").write_text(FEATURES)
    config = write_config(tmp_path, "fx", features=["features.yaml"], checkpoints={"every_episodes": 2})
    result = run_worker(config, "--episodes-per-run", "4")  # a real process trains and saves episodes 2 and 4
    assert result["saved"] == ["ep00000002-t1", "ep00000004-t1"]
    return config


def test_changed_normalisation_constant_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = _trained(tmp_path)
    (tmp_path / "features.yaml").write_text(FEATURES.replace("price_std: 0.012", "price_std: 0.015"))
    with Guard.from_config(config) as guard, pytest.raises(FingerprintMismatch) as raised:
        guard.resume()
    error = raised.value
    assert error.name == "ep00000004-t1"  # the newest: not silently skipped for an older one
    assert error.differences == ["normalisation.price_std: 0.012 -> 0.015"]
    assert "normalisation.price_std: 0.012 -> 0.015" in str(error)
    assert error.exit_code == 2


def test_same_content_reformatted_is_accepted(tmp_path: Path) -> None:
    config = _trained(tmp_path)
    (tmp_path / "features.yaml").write_text(REFORMATTED)
    with Guard.from_config(config) as guard:
        restored = guard.resume()
        assert restored is not None and restored.episode == 4
        assert guard.fingerprint is not None and restored.manifest.fingerprint == guard.fingerprint.digest
        assert next(iter(guard.episodes())) == 5


def test_resume_skips_a_corrupt_newest_checkpoint_and_quarantines_it(tmp_path: Path) -> None:
    config = _trained(tmp_path)
    tensors = tmp_path / "store" / "ep00000004-t1" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    with Guard.from_config(config) as guard:
        restored = guard.resume()
        assert restored is not None and restored.episode == 2
        quarantined = guard.store.checkpoints(states=(CheckpointState.QUARANTINED,))
        assert [r.name for r in quarantined] == ["ep00000004-t1"]


def test_a_guard_without_features_will_not_resume_a_fingerprinted_checkpoint(tmp_path: Path) -> None:
    config = _trained(tmp_path)
    body = yaml.safe_load(config.read_text())
    del body["features"]
    config.write_text(yaml.safe_dump(body))
    with Guard.from_config(config) as guard, pytest.raises(FingerprintMismatch, match="no features declared"):
        guard.resume()


def test_inline_values_and_file_parsing() -> None:
    inline = compute([{"window": 64, "pairs": ["EURUSD"]}])
    same = compute([{"pairs": ["EURUSD"], "window": 64.0}])
    other = compute([{"window": 32, "pairs": ["EURUSD"]}])
    assert inline is not None and same is not None and other is not None
    assert inline.digest == same.digest != other.digest
    assert differences(inline.content, other.content) == ["window: 64 -> 32"]
    assert differences({"a": {"b": 1}}, {"a": {"c": 1}}) == ["a.b: 1 -> (missing)", "a.c: (missing) -> 1"]
    assert compute([]) is None


def test_fingerprint_lands_in_every_manifest(tmp_path: Path) -> None:
    (tmp_path / "features.yaml").write_text(FEATURES)
    with Guard(run="fp", store=str(tmp_path / "s"), features=[str(tmp_path / "features.yaml")]) as guard:
        for episode in guard.episodes():
            guard.save({"w": np.zeros(2)})
            if episode == 2:
                break
        manifests = [guard.store.manifest(r.name) for r in guard.store.checkpoints()]
    fingerprint = guard.fingerprint
    assert fingerprint is not None and {m.fingerprint for m in manifests} == {fingerprint.digest}
    assert manifests[0].features == fingerprint.content
    assert manifests[0].features["normalisation"]["price_std"] == 0.012
