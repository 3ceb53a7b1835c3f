"""What signed manifests cost: a store that signs every manifest at commit and checks the signature on every
load, vs the same store without signing - save + load of a 1 GiB fp32 state dict, same process, same data,
same filesystem, interleaved round by round (signed, unsigned, signed, ...). Also the signature's own cost,
timed directly (sign at commit + verify at load, on a real manifest), as a share of the round trip: the
ratio of medians is within the machine's noise, the direct share is what signing adds.

    .venv/bin/python benchmarks/bench_signing.py [--gib 1] [--rounds 7] [--dir benchmarks/_scratch_signing]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

import trainguard as tg
from trainguard.checkpoints import Signing, generate_key
from trainguard.checkpoints.manifest import MANIFEST_FILE
from trainguard.checkpoints.signing import check_signature, signature_bytes


def state_dict(gib: float) -> dict[str, np.ndarray]:
    # Model-shaped, as in bench_store.py: a few large matrices and many small tensors, fp32.
    total = int(gib * (1 << 30)) // 4
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.bias": rng.standard_normal(1024, dtype=np.float32) for i in range(64)}
    big = (total - 64 * 1024) // 16
    tensors.update({f"layers.{i}.weight": rng.standard_normal(big, dtype=np.float32) for i in range(16)})
    return tensors


def round_trip(
    store: tg.CheckpointStore, state: dict[str, np.ndarray], lease: tg.Lease, episode: int
) -> float:
    store.prune(policy=tg.retention.keep_last(0))  # each round writes into an empty store
    os.sync()  # the previous round's writeback must not land in this round's time (it made rounds bimodal)
    started = time.perf_counter()
    record = store.save(state, episode=episode, lease=lease)
    store.load(record.name)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default="benchmarks/_scratch_signing")
    args = parser.parse_args()
    scratch = Path(args.dir)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    key, public = generate_key(scratch / "keys" / "sign.key")
    signing = Signing.from_paths(key, public, required=True)
    state = state_dict(args.gib)
    size = sum(a.nbytes for a in state.values())
    signed = tg.CheckpointStore(scratch / "signed", run="bench", signing=signing)
    plain = tg.CheckpointStore(scratch / "plain", run="bench", signing=Signing())
    signed_lease = signed.registry.acquire("bench", ttl=3600)
    plain_lease = plain.registry.acquire("bench", ttl=3600)
    with_signing, without = [], []
    for episode in range(args.rounds):
        with_signing.append(round_trip(signed, state, signed_lease, episode))
        without.append(round_trip(plain, state, plain_lease, episode))
        print(f"round {episode}: signed {with_signing[-1]:.3f}s, unsigned {without[-1]:.3f}s", flush=True)

    # The signature's own cost, on the manifest the last signed save wrote.
    latest = signed.latest()
    assert latest is not None
    directory = signed.root / latest.name
    manifest = (directory / MANIFEST_FILE).read_bytes()
    assert signing.key is not None
    repeats = 200
    started = time.perf_counter()
    for _ in range(repeats):
        signature_bytes(signing.key, manifest)
        check_signature(latest.name, directory, manifest, signing)
    direct = (time.perf_counter() - started) / repeats

    a, b = statistics.median(with_signing), statistics.median(without)
    gib, best = size / (1 << 30), min(with_signing) / min(without)
    print(f"\n{gib:.2f} GiB fp32, {len(state)} tensors, median of {args.rounds} interleaved rounds\n")
    print("| round trip (save + load) | signed (median) | unsigned (median) | ratio of medians | of best |")
    print("|---|---|---|---|---|")
    print(f"| {gib:.0f} GiB, warm page cache | {a:.3f} s | {b:.3f} s | {a / b:.3f} | {best:.3f} |")
    print(
        f"\nsign + verify of the {len(manifest)}-byte manifest: {direct * 1e6:.0f} µs per round trip = "
        f"{100 * direct / b:.4f} % of the unsigned round trip (target < 2 %)"
    )
    signed.close()
    plain.close()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
