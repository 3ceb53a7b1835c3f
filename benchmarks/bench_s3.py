"""Save and verified load of a 1 GiB state on an s3:// store vs boto3's upload_file / download_file of the
same bytes (no hashing, no fencing, no registry), on a SeaweedFS server this benchmark starts on loopback.

    .venv/bin/python benchmarks/bench_s3.py --rounds 5

Each round: the store saves the state (stage, multipart upload hashed on the way, manifest, SQLite registry
decision, index) and loads it back (parallel ranged GETs, size + hash verified, decoded); the baseline
uploads the safetensors file the save wrote locally to the same server with ``upload_file`` and downloads it
with ``download_file`` (boto3's TransferManager, default concurrency). Sides interleave; ratios of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "stress"))
from s3_server import seaweed_s3

from trainguard import CheckpointStore, Registry

GIB = 1 << 30


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # 16 x 64 MiB tensors: a 1 GiB state dict of a ~270M-parameter model in fp32.
    return {f"layer{i}.w": rng.standard_normal(16 << 20, dtype=np.float32) for i in range(16)}


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = _state()
    size = sum(a.nbytes for a in state.values())
    with tempfile.TemporaryDirectory(prefix="trainguard-bench-s3-") as tmp:
        scratch = Path(tmp)
        with seaweed_s3(scratch / "seaweed") as server:
            os.environ.update({**server.env(), "XDG_CACHE_HOME": str(scratch / "cache")})
            client = server.client()
            client.create_bucket(Bucket="bench")
            registry = f"sqlite:///{scratch / 'registry.db'}"
            with Registry.open(registry) as reg:
                reg.ensure_run("bench")
            from safetensors.numpy import save_file

            local = scratch / "state.safetensors"
            save_file(state, str(local))  # the same tensors as one file, for the baseline
            times: dict[str, list[float]] = {"save": [], "load": [], "upload": [], "download": []}
            with CheckpointStore("s3://bench/store", run="bench", registry=registry) as store:
                lease = store.registry.acquire("bench", ttl=3600)  # no Guard here renews it
                for round_ in range(args.rounds):
                    started = time.perf_counter()
                    record = store.save(state, episode=round_, lease=lease)
                    times["save"].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    loaded = store.load(record.name).state
                    times["load"].append(time.perf_counter() - started)
                    assert np.array_equal(loaded["layer15.w"], state["layer15.w"])
                    del loaded
                    started = time.perf_counter()
                    client.upload_file(str(local), "bench", f"baseline/{round_}.safetensors")
                    times["upload"].append(time.perf_counter() - started)
                    target = scratch / "downloaded.safetensors"
                    started = time.perf_counter()
                    client.download_file("bench", f"baseline/{round_}.safetensors", str(target))
                    times["download"].append(time.perf_counter() - started)
                    target.unlink()
                    print(
                        f"round {round_}: save {times['save'][-1]:.2f}s "
                        f"upload_file {times['upload'][-1]:.2f}s load {times['load'][-1]:.2f}s "
                        f"download_file {times['download'][-1]:.2f}s",
                        flush=True,
                    )
                costs = store.bucket.costs.as_dict()  # type: ignore[attr-defined]
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{size / GIB:.2f} GiB, {args.rounds} rounds, medians (best):")
    for ours, theirs in (("save", "upload"), ("load", "download")):
        print(
            f"  {ours:5s} {med[ours]:.2f}s ({size / med[ours] / 1e9:.2f} GB/s) vs {theirs}_file "
            f"{med[theirs]:.2f}s: ratio {med[ours] / med[theirs]:.3f} (best {best[ours] / best[theirs]:.3f})"
        )
    print(f"  store costs over all rounds: {costs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
