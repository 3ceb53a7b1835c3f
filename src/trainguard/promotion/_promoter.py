"""Assessing checkpoints against the gates and moving the live pointer (promote, rollback, auto-promote).

"Latest" is not "live" (docs/design.md, "Promotion"): the pointer moves only to a checkpoint whose every
gate passed, and every move is an event carrying the verdicts.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard import fingerprint as fp
from trainguard.checkpoints import CheckpointStore, LoadedCheckpoint
from trainguard.config import BestMetric, Gates, TrainguardConfig
from trainguard.errors import ConfigError, CorruptCheckpoint
from trainguard.promotion import gates
from trainguard.registry import CheckpointRecord, CheckpointState, EventKind

log = logging.getLogger("trainguard")

# An evaluator gets the loaded checkpoint and returns {"metrics": {...}, "actions": {...}} from held-out data.
Evaluator = Callable[[LoadedCheckpoint], Mapping[str, Any]]


def load_evaluator(spec: str | None) -> Evaluator | None:
    if not spec:
        return None
    module_name, _, function = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in function.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError("gates.evaluator", spec, f"cannot be imported: {error}") from None
    if not callable(target):
        raise ConfigError("gates.evaluator", spec, "is not callable")
    return target  # type: ignore[no-any-return]


@dataclass
class Assessment:
    record: CheckpointRecord
    verdicts: list[gates.Verdict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # recorded, overridden by the evaluator's
    actions: dict[str, int] | None = None

    @property
    def passed(self) -> bool:
        return bool(self.verdicts) and all(v.passed for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.record.name,
            "episode": self.record.episode,
            "passed": self.passed,
            "verdicts": [v.as_dict() for v in self.verdicts],
            "metrics": self.metrics,
            "actions": self.actions,
        }


class Promoter:
    """Judges a run's checkpoints by the gates and moves its live pointer."""

    def __init__(
        self,
        store: CheckpointStore,
        settings: Gates,
        *,
        best_metric: BestMetric | None = None,
        live_features: fp.Fingerprint | None = None,
        live_declared: bool | None = None,
    ) -> None:
        self.store = store
        self.registry = store.registry
        self.run = store.run
        self.settings = settings
        self.best_metric = best_metric
        self.live_features = live_features
        self.live_declared = live_features is not None if live_declared is None else live_declared
        self.evaluator = load_evaluator(settings.evaluator)
        commits = self.registry.events(self.run, kinds=[EventKind.CHECKPOINT_COMMITTED])
        # Every commit decision was taken under the run lock with the then-current token; the event is the
        # witness that this row came from that path (and not, say, an edited database).
        self._committed = {(e.checkpoint, e.token) for e in commits}

    @classmethod
    def from_config(
        cls,
        store: CheckpointStore,
        config: TrainguardConfig | None,
        *,
        live_features: fp.Fingerprint | None = None,
    ) -> Promoter:
        """The config's gates and best metric; the live side's features are ``live_features`` if given,
        else the config's own feature files."""
        if live_features is None and config is not None and config.features:
            live_features = fp.compute(config.features, base=config.source.parent if config.source else None)
        return cls(
            store,
            config.gates if config else Gates(),
            best_metric=config.checkpoints.best_metric if config else None,
            live_features=live_features,
        )

    def _live_metrics(self) -> dict[str, Any] | None:
        live = self.registry.live_pointer(self.run)
        if live is None:
            return None
        record = self.registry.find_checkpoint(self.run, live)
        return dict(record.metrics) if record is not None else None

    def assess(self, record: CheckpointRecord, *, decisions: bool = True) -> Assessment:
        """Every gate's verdict (``decisions=False``: integrity and features only, as for a rollback)."""
        assessment = Assessment(record, metrics=dict(record.metrics))
        problems = []
        if record.state is not CheckpointState.EVICTED:
            problems = [f"{p.file}: {p.reason}" for p in self.store.verify(record.name).problems]
        assessment.verdicts.append(
            gates.integrity(record.state, problems, (record.name, record.token) in self._committed)
        )
        if not assessment.verdicts[0].passed:
            return assessment
        manifest = self.store.manifest(record.name)
        differences = fp.differences(
            manifest.features, self.live_features.content if self.live_features else None
        )
        assessment.verdicts.append(
            gates.features(
                manifest.fingerprint,
                self.live_features.digest if self.live_features else None,
                differences,
                live_declared=self.live_declared,
            )
        )
        if not decisions or not assessment.verdicts[-1].passed:
            return assessment
        recorded = record.metrics.get("actions")
        assessment.actions = dict(recorded) if isinstance(recorded, Mapping) else None
        if self.evaluator is not None:
            try:
                result = self.evaluator(self.store.load(record.name))
            except CorruptCheckpoint as error:
                assessment.verdicts.append(gates.Verdict("evaluator", False, str(error)))
                return assessment
            assessment.metrics.update(dict(result.get("metrics") or {}))
            if result.get("actions") is not None:
                assessment.actions = {str(k): int(v) for k, v in dict(result["actions"]).items()}
        s = self.settings
        assessment.verdicts.append(
            gates.decision_health(
                assessment.actions,
                max_action_share=s.max_action_share,
                min_action_entropy=s.min_action_entropy,
                min_decisions=s.min_decisions,
            )
        )
        assessment.verdicts.append(gates.metrics(assessment.metrics, s.metrics))
        modes = {self.best_metric.name: self.best_metric.mode} if self.best_metric else {}
        assessment.verdicts.append(
            gates.no_worse_than_live(assessment.metrics, self._live_metrics(), s.no_worse_than_live, modes)
        )
        return assessment

    def assess_all(self, names: list[str] | None = None) -> list[Assessment]:
        records = self.store.checkpoints() if names is None else [self.store.record(n) for n in names]
        return [self.assess(r) for r in records]

    def choose(self, assessments: list[Assessment]) -> Assessment | None:
        """The best passing candidate by the configured metric (ties and no metric: the newest)."""
        passing = [a for a in assessments if a.passed]
        if not passing:
            return None
        metric = self.best_metric
        if metric is None:
            return max(passing, key=lambda a: (a.record.episode, a.record.id or 0))

        def score(a: Assessment) -> tuple[float, int, int]:
            value = a.metrics.get(metric.name)
            number = float(value) if isinstance(value, int | float) else float("-inf")
            number = number if metric.mode == "max" else -number
            return (number, a.record.episode, a.record.id or 0)

        return max(passing, key=score)

    def move_live(self, assessment: Assessment, *, reason: str, kind: str = "promote") -> None:
        self.registry.set_live_pointer(
            self.run,
            assessment.record.name,
            reason=f"{kind}: {reason}",
            detail={
                "verdicts": [v.as_dict() for v in assessment.verdicts],
                "metrics": assessment.metrics,
                "actions": assessment.actions,
            },
        )
        self.store.publish_live(assessment.record.name)

    def rollback(self, name: str, *, reason: str) -> Assessment:
        """Move the live pointer back to ``name`` if it passes integrity and features (decision health is not
        asked of the escape hatch); the assessment says whether it did."""
        assessment = self.assess(self.store.record(name), decisions=False)
        if assessment.passed:
            self.move_live(assessment, reason=reason, kind="rollback")
        return assessment


def auto_promote(
    store: CheckpointStore,
    config: TrainguardConfig,
    features: fp.Fingerprint | None,
    record: CheckpointRecord,
) -> Assessment | None:
    """With ``gates.auto_promote``: move the live pointer to ``record`` if it passes every gate (the Guard
    calls this after each committed save). None when auto-promotion is off."""
    if not config.gates.auto_promote:
        return None
    promoter = Promoter.from_config(store, config, live_features=features)
    assessment = promoter.assess(record)
    if assessment.passed:
        promoter.move_live(
            assessment,
            reason=f"passed every gate after the save of episode {record.episode}",
            kind="auto-promote",
        )
    else:
        failed = "; ".join(f"{v.gate}: {v.reason}" for v in assessment.verdicts if not v.passed)
        log.info("trainguard: %s not promoted: %s", record.name, failed)
    return assessment


__all__ = ["Assessment", "Evaluator", "Promoter", "auto_promote", "load_evaluator"]
