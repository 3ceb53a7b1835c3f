"""Each framework's training loop with and without its trainguard integration, same seeds, one run
(issue 14): PyTorch Lightning and the Hugging Face Trainer (Ray Train: benchmarks/bench_ray.py).

    .venv/bin/python benchmarks/bench_frameworks.py [--framework lightning|hf] [--rounds 5] [--every N]

Lightning: an MLP trained for ``--epochs`` epochs of 64 steps, ``ModelCheckpoint(save_top_k=1)`` every
epoch. Plain: Lightning's own checkpointing (``torch.save`` to a directory). Guarded: ``GuardCallback`` (a
``tick()`` per step, an episode per epoch) and ``StoreCheckpointIO`` (every checkpoint committed through
the fenced store: staging, hashes, fsyncs, SQLite registry).

Hugging Face: a config-built GPT-2 (2 layers, 64 wide) trained ``--steps`` steps, HF saving every
``--every`` steps. Plain: HF's own checkpoint directories. Guarded: ``GuardCallback`` (a ``tick()`` per
step; every save HF makes is committed from memory, then HF's directory removed).

Rounds alternate which side goes first; the report is each side's median wall time in ``fit``/``train``
(and CPU time of the process, which a noisy VM's steal time does not inflate), the ratio of the medians and
the median of the per-round ratios; the Guard's own open and close (once per run: registry, lease, monitor
thread) is reported beside it.
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
from trainguard.integrations import hf
from trainguard.integrations.lightning import GuardCallback, StoreCheckpointIO

warnings.filterwarnings("ignore")
SETUP: list[float] = []  # seconds to open and close the Guard (registry, lease, monitor): once per run


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def _clock() -> Timing:
    return time.perf_counter(), time.process_time()


def _since(start: Timing) -> Timing:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def lightning_round(epochs: int, guarded: bool, every: int = 1) -> Timing:
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
            begun = _clock()
            trainer.fit(Regressor(inputs=64, hidden=256), data)
            return _since(begun)
        opened = time.perf_counter()
        with Guard(run="bench", store=str(Path(scratch) / "store"), install_signal_handlers=False) as guard:
            trainer = L.Trainer(
                callbacks=[GuardCallback(guard), checkpoints], plugins=[StoreCheckpointIO(guard)], **options
            )
            begun = _clock()
            trainer.fit(Regressor(inputs=64, hidden=256), data)
            fitted = _since(begun)
        SETUP.append(time.perf_counter() - opened - fitted[0])  # the Guard's open and close
        return fitted


def hf_round(steps: int, guarded: bool, every: int) -> Timing:
    from transformers import Trainer, TrainingArguments

    from examples.hf.train import Tokens, tiny_gpt2

    model = tiny_gpt2(width=64, layers=2)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=str(Path(scratch) / "hf"),
            max_steps=steps,
            per_device_train_batch_size=16,
            save_strategy="steps",
            save_steps=every,
            save_total_limit=1,
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
            logging_strategy="no",
        )
        if not guarded:
            trainer = Trainer(model=model, args=args, train_dataset=Tokens(rows=1024))
            begun = _clock()
            trainer.train()
            return _since(begun)
        opened = time.perf_counter()
        with Guard(run="bench", store=str(Path(scratch) / "store"), install_signal_handlers=False) as guard:
            trainer = Trainer(
                model=model, args=args, train_dataset=Tokens(rows=1024), callbacks=[hf.GuardCallback(guard)]
            )
            begun = _clock()
            trainer.train()
            trained = _since(begun)
        SETUP.append(time.perf_counter() - opened - trained[0])
        return trained


def report(title: str, times: dict[bool, list[Timing]]) -> None:
    plain, guarded = times[False], times[True]
    wall = [statistics.median(t[0] for t in side) for side in (plain, guarded)]
    cpu = [statistics.median(t[1] for t in side) for side in (plain, guarded)]
    pairs = statistics.median(g[0] / p[0] for p, g in zip(plain, guarded, strict=True))
    print(title)
    print(f"  plain:   wall {wall[0]:.3f} s (best {min(t[0] for t in plain):.3f}), cpu {cpu[0]:.3f} s")
    print(f"  guarded: wall {wall[1]:.3f} s (best {min(t[0] for t in guarded):.3f}), cpu {cpu[1]:.3f} s")
    print(
        f"  ratio of medians: wall {wall[1] / wall[0]:.3f}, cpu {cpu[1] / cpu[0]:.3f};"
        f" median of per-round wall ratios {pairs:.3f}"
    )
    print(f"  the Guard's open + close, once per run, not in the above: {statistics.median(SETUP):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--framework", choices=["lightning", "hf"], default="lightning")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="lightning: epochs of 64 steps")
    parser.add_argument("--steps", type=int, default=200, help="hf: optimizer steps")
    parser.add_argument(
        "--every", type=int, default=1, help="a checkpoint every N epochs (lightning), steps (hf)"
    )
    args = parser.parse_args()
    times: dict[bool, list[Timing]] = {False: [], True: []}

    def run(guarded: bool) -> Timing:
        if args.framework == "lightning":
            return lightning_round(args.epochs, guarded, args.every)
        return hf_round(args.steps, guarded, args.every)

    if args.framework == "lightning":
        title = f"lightning, {args.epochs} epochs x 64 steps, a checkpoint every {args.every} epochs:"
    else:
        title = f"hugging face, {args.steps} steps, a checkpoint every {args.every} steps:"
    run(False)  # warm-up: imports, first-call costs
    for index in range(args.rounds):
        for guarded in (False, True) if index % 2 else (True, False):
            times[guarded].append(run(guarded))
    report(title, times)


if __name__ == "__main__":
    main()
