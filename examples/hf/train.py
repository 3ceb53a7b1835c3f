"""A Hugging Face Trainer under trainguard: every checkpoint through the fenced store, the run's step budget.

    python -m examples.hf.train [--store DIR] [--max-steps N]

A tiny GPT-2 built from a config (nothing is downloaded) learns a random token corpus. Run it twice: the
second run resumes from the store's newest verified checkpoint (not from HF's highest-numbered directory),
and the step budget is the run's. SIGTERM (or Ctrl-C) stops it after the current step with a checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from trainguard import BudgetExhausted, Guard
from trainguard.integrations.hf import GuardCallback, resume


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """``rows`` random sequences of ``length`` tokens, each its own label (a language-model objective)."""

    def __init__(self, rows: int = 256, length: int = 16, vocab: int = 64) -> None:
        self.ids = torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def tiny_gpt2(width: int = 32, layers: int = 2) -> GPT2LMHeadModel:
    """A GPT-2 for ``Tokens`` (64 tokens, 16 positions), seeded: the same weights every time."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=width, n_layer=layers, n_head=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", default="hf-store")
    parser.add_argument("--max-steps", type=int, default=60, help="the run's step budget (all restarts)")
    args = parser.parse_args()
    try:
        train(args.store, args.max_steps)
    except BudgetExhausted as spent:  # a run whose budget is spent does not take one more step
        print(f"trainguard: {spent}", file=sys.stderr)
        raise SystemExit(spent.exit_code) from None


def train(store: str, max_steps: int) -> None:
    with Guard(run="hf-example", store=store, max_steps=max_steps, keep_last=3) as guard:
        training = TrainingArguments(
            output_dir=tempfile.mkdtemp(prefix="hf-"),  # HF's own copies are removed once committed
            max_steps=10_000,  # HF alone would run on: the Guard's budget ends it
            per_device_train_batch_size=16,
            save_strategy="steps",
            save_steps=20,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=tiny_gpt2(), args=training, train_dataset=Tokens(), callbacks=[GuardCallback(guard)]
        )
        trainer.train(resume_from_checkpoint=resume(trainer, guard))
        print(f"stopped at step {trainer.state.global_step}: {guard.stop}")
        print("checkpoints:", ", ".join(r.name for r in guard.store.checkpoints()))


if __name__ == "__main__":
    main()
