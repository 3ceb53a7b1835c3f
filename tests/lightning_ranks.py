"""One rank of a torchrun job for tests/test_lightning.py (not a test module itself): Lightning DDP on two CPU
processes, the Guard on rank 0 only.

    torchrun --standalone --nproc-per-node 2 tests/lightning_ranks.py STORE OUT MAX_STEPS [SIGTERM_AT]

Every rank writes OUT/rank-R.json: the step it started from and the one it stopped at, what it raised.
SIGTERM_AT: rank 1 (without the Guard) sends itself SIGTERM at that step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from examples.lightning.train import Regressor
from trainguard import Guard
from trainguard.config import parse_config
from trainguard.integrations.lightning import GuardCallback, StoreCheckpointIO, resume_path

warnings.filterwarnings("ignore")


class _Seen(Callback):
    def __init__(self, sigterm_at: int | None) -> None:
        self.started: int | None = None
        self.sigterm_at = sigterm_at

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.sigterm_at and trainer.global_rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    store, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    sigterm_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    rank = int(os.environ["RANK"])
    config, _ = parse_config(
        {"run": "pl-ranks", "store": str(store), "limits": {"max_steps": budget}}, strict=True
    )
    holder: AbstractContextManager[Guard | None] = (
        Guard(config, install_signal_handlers=False) if rank == 0 else nullcontext()
    )
    seen: dict[str, Any] = {"rank": rank}
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=16)
    with holder as guard:
        observer = _Seen(sigterm_at)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_epochs=100,  # Lightning alone would run on: the run's budget ends it
            callbacks=[GuardCallback(guard), ModelCheckpoint(every_n_train_steps=4, save_top_k=-1), observer],
            plugins=[StoreCheckpointIO(guard)],
            default_root_dir=str(out / "pl"),
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        torch.manual_seed(0)
        try:
            trainer.fit(Regressor(), data, ckpt_path=resume_path(guard or config))
        except Exception as error:
            seen["error"] = f"{type(error).__name__}: {error}"
        seen |= {"started": observer.started, "stopped": trainer.global_step}
        module = trainer.lightning_module
        if module is not None:
            seen["weights"] = float(sum(p.detach().double().sum() for p in module.parameters()))
        if guard is not None:
            seen["stop"] = str(guard.stop)
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
