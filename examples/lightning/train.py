"""A Lightning model under trainguard: checkpoints through the fenced store, budgets across restarts.

    python -m examples.lightning.train [--store DIR] [--max-steps N]

Run it twice: the second run resumes from the store's newest checkpoint, and the step budget is the run's,
not the process's. SIGTERM (or Ctrl-C) ends it after the current batch with a checkpoint.
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from trainguard import Guard
from trainguard.integrations.lightning import GuardCallback, StoreCheckpointIO, resume_path


class Regressor(L.LightningModule):
    """An MLP regressor (``inputs`` -> ``hidden`` -> 1) with Adam; logs ``train_loss`` per epoch."""

    def __init__(self, inputs: int = 16, hidden: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(
            torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="lightning-store")
    parser.add_argument("--max-steps", type=int, default=400, help="the run's step budget (all restarts)")
    args = parser.parse_args()
    x = torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=32)
    with Guard(run="lightning-example", store=args.store, max_steps=args.max_steps, keep_last=3) as guard:
        trainer = L.Trainer(
            max_epochs=1000,  # Lightning alone would run on: the Guard's budget ends it
            callbacks=[GuardCallback(guard), ModelCheckpoint(monitor="train_loss", save_top_k=2)],
            plugins=[StoreCheckpointIO(guard)],
            logger=False,
            enable_progress_bar=False,
        )
        trainer.fit(Regressor(), data, ckpt_path=resume_path(guard))
        print(f"stopped at step {trainer.global_step}: {guard.stop}")
        print("checkpoints:", ", ".join(r.name for r in guard.store.checkpoints()))


if __name__ == "__main__":
    main()
