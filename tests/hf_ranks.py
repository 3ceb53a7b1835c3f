"""One rank of a torchrun job for tests/test_hf.py (not a test module itself): the Hugging Face Trainer on
two processes (DDP, gloo, CPU), the Guard on rank 0 only.

    torchrun --standalone --nproc-per-node 2 tests/hf_ranks.py STORE OUT MAX_STEPS

Every rank writes OUT/rank-R.json: the step it started from, the step it stopped at, what it raised.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from examples.hf.train import Tokens, tiny_gpt2
from trainguard import Guard
from trainguard.integrations.hf import GuardCallback, resume


class _Started(TrainerCallback):
    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step = state.global_step


def main() -> None:
    store, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rank = int(os.environ["RANK"])
    args = TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=1000,  # HF alone would run on: the run's budget ends it
        per_device_train_batch_size=8,
        save_strategy="steps",
        save_steps=4,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        logging_strategy="no",
    )  # built first: under torchrun it sets up the process group (gloo)
    holder: AbstractContextManager[Guard | None] = (
        Guard(run="hf-ranks", store=str(store), max_steps=budget, install_signal_handlers=False)
        if rank == 0
        else nullcontext()
    )
    seen: dict[str, Any] = {"rank": rank}
    with holder as guard:
        model = tiny_gpt2(width=16, layers=1)
        started = _Started()
        trainer = Trainer(
            model=model, args=args, train_dataset=Tokens(rows=128), callbacks=[GuardCallback(guard), started]
        )
        try:
            trainer.train(resume_from_checkpoint=resume(trainer, guard))
        except Exception as error:
            seen["error"] = f"{type(error).__name__}: {error}"
        seen |= {"started": started.step, "stopped": trainer.state.global_step}
        assert trainer.model is not None
        seen["weights"] = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
