"""The feature specification (features.yaml) as a typed value, and the price data it names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_FEATURES = HERE / "features.yaml"


@dataclass(frozen=True)
class Spec:
    raw: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path = DEFAULT_FEATURES) -> Spec:
        return cls(yaml.safe_load(Path(path).read_text()))

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @property
    def actions(self) -> list[str]:
        return list(self.raw["actions"])

    @property
    def window(self) -> int:
        return int(self.raw["observation"]["window"])

    def prices(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, held-out) prices from the dataset gym-anytrading bundles: no download at run time."""
        from gym_anytrading import datasets

        frame = getattr(datasets, self.raw["data"]["dataset"])
        prices = frame[self.raw["data"]["price"]].to_numpy(dtype=np.float64)
        split = int(len(prices) * float(self.raw["data"]["train_fraction"]))
        return prices[:split], prices[split - self.window :]  # held-out keeps one window of history


__all__ = ["DEFAULT_FEATURES", "Spec"]
