"""The crash-consistency check of an s3:// store (issue 15), after each SIGKILL of its writer
(``crash_consistency.run_campaign(store="s3://...")``).

1. A reader, before anyone recovers: every committed checkpoint verifies and loads with its own data
   (one decided but not indexed yet is found where it was staged), and the newest committed one is at
   least as new as the last save its writer saw return.
2. A writer's open (which recovers): every committed checkpoint has its index, and no staging prefix is
   left that the registry did not decide - a dead writer's undecided objects went to ``.quarantine/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainguard import CheckpointStore, Registry
from trainguard.checkpoints.layout import StagingName
from trainguard.registry import CheckpointState


def _client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"})
    )


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [entry["Key"] for entry in page.get("Contents", [])]
    return keys


def check_bucket(url: str, registry: str, run: str, report: Path, result: Any) -> None:
    lines = report.read_text().splitlines() if report.exists() else []
    acknowledged = int(lines[-1].split()[0]) if lines else 0
    with Registry.open(registry) as opened:
        if opened.run_info(run) is None:
            return  # killed before its first open created the run: nothing to check yet
    with CheckpointStore.open_existing(url, run=run, registry=registry, read_only=True) as reader:
        committed = reader.checkpoints()
        for record in committed:
            verified = reader.verify(record.name)
            if not verified.ok:
                result.failures.append(f"kill {result.kills}: {record.name}: {verified.problems}")
                continue
            if int(reader.load(record.name).state["w"][0]) != record.episode:
                result.failures.append(f"kill {result.kills}: {record.name} holds the wrong data")
            result.checkpoints_verified += 1
        newest = committed[-1].episode if committed else 0
        if newest < acknowledged:
            lost = f"newest committed {newest} < acknowledged {acknowledged}"
            result.failures.append(f"kill {result.kills}: {lost}")
        result.newest_episode = newest
    with CheckpointStore(url, run=run, registry=registry) as store:
        result.recovered_staging += len(store.recovery.removed_staging)
        result.rolled_forward += len(store.recovery.rolled_forward)
        if store.recovery.failed:
            result.failures.append(f"kill {result.kills}: recovery failed: {store.recovery.failed}")
        rows = {r.name: r for r in store.checkpoints(states=None)}
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    keys = _keys(_client(), bucket, f"{prefix}/")
    stagings = {k[len(prefix) + 1 :].split("/")[1] for k in keys if k.startswith(f"{prefix}/.staging/")}
    for staging in stagings:
        name = StagingName.parse(staging)
        row = rows.get(name.name) if name else None
        decided = (CheckpointState.COMMITTED, CheckpointState.QUARANTINED)
        if name is None or row is None or row.token != name.token or row.state not in decided:
            result.failures.append(f"kill {result.kills}: undecided staging left after recovery: {staging}")
    for row in rows.values():
        if row.state is CheckpointState.COMMITTED and f"{prefix}/{row.name}/MANIFEST.json" not in keys:
            result.failures.append(f"kill {result.kills}: {row.name} is committed but not indexed")


__all__ = ["check_bucket"]
