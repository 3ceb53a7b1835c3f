"""Each framework's training loop with and without its trainguard integration, same seeds, one run
(issue 14). So far: PyTorch Lightning.

    .venv/bin/python benchmarks/bench_frameworks.py [--rounds 5] [--epochs 5]

Lightning: an MLP trained for ``--epochs`` epochs of 64 steps, ``ModelCheckpoint(save_top_k=1)`` every
epoch. Plain: Lightning's own checkpointing (``torch.save`` to a directory). Guarded: ``GuardCallback`` (a
``tick()`` per step, an episode per epoch) and ``StoreCheckpointIO`` (every checkpoint committed through
the fenced store: staging, hashes, fsyncs, SQLite registry). Rounds alternate which side goes first; the
report is each side's median time in ``trainer.fit`` and the ratio; the Guard's own open and close (once
per run: registry, lease, monitor thread) is reported beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: examples/
from examples.lightning.train import Regressor
from trainguard import Guard
from trainguard.integrations.lightning import GuardCallback, StoreCheckpointIO

warnings.filterwarnings("ignore")
SETUP: list[float] = []  # seconds to open and close the Guard (registry, lease, monitor): once per run


def lightning_round(epochs: int, guarded: bool, every: int = 1) -> float:
    torch.manual_seed(0)
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=64)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoints = ModelCheckpoint(
            dirpath=str(Path(scratch) / "ckpt"), monitor="train_loss", save_top_k=1, every_n_epochs=every
        )
        options: dict[str, Any] = {
            "max_epochs": epochs,
            "default_root_dir": scratch,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "accelerator": "cpu",
        }
        if not guarded:
            trainer = L.Trainer(callbacks=[checkpoints], **options)
            started = time.perf_counter()
            trainer.fit(Regressor(inputs=64, hidden=256), data)
            return time.perf_counter() - started
        opened = time.perf_counter()
        with Guard(run="bench", store=str(Path(scratch) / "store"), install_signal_handlers=False) as guard:
            trainer = L.Trainer(
                callbacks=[GuardCallback(guard), checkpoints], plugins=[StoreCheckpointIO(guard)], **options
            )
            started = time.perf_counter()
            trainer.fit(Regressor(inputs=64, hidden=256), data)
            fitted = time.perf_counter()
        SETUP.append((started - opened) + (time.perf_counter() - fitted))  # the Guard's open and close
        return fitted - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=1, help="a checkpoint every N epochs")
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    lightning_round(1, False)  # warm-up: imports, first-call costs
    for index in range(args.rounds):
        for guarded in (False, True) if index % 2 else (True, False):
            times[guarded].append(lightning_round(args.epochs, guarded, args.every))
    plain, with_guard = statistics.median(times[False]), statistics.median(times[True])
    print(f"lightning, {args.epochs} epochs x 64 steps, a checkpoint every {args.every}, median (best):")
    print(f"  plain:   {plain:.3f} s ({min(times[False]):.3f})")
    print(f"  guarded: {with_guard:.3f} s ({min(times[True]):.3f})  ratio {with_guard / plain:.3f}")
    print(f"  the Guard's open + close, once per run, not in the above: {statistics.median(SETUP):.3f} s")


if __name__ == "__main__":
    main()
