"""Latest is not live: promotion gates, the promoter that moves the live pointer only through them,
recovery after an incident, and the loader serving code uses (see docs/design.md, "Promotion")."""

from __future__ import annotations

from trainguard.promotion import gates, live
from trainguard.promotion._promoter import Assessment, Evaluator, Promoter, auto_promote, load_evaluator
from trainguard.promotion._recover import RecoveryOutcome, checkpoint_files, recover_run
from trainguard.promotion.gates import Verdict
from trainguard.promotion.live import LiveModel

__all__ = [
    "Assessment",
    "Evaluator",
    "LiveModel",
    "Promoter",
    "RecoveryOutcome",
    "Verdict",
    "auto_promote",
    "checkpoint_files",
    "gates",
    "live",
    "load_evaluator",
    "recover_run",
]
