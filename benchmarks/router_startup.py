"""How long the router takes to get its state back at start-up: a full replay of every
stored feedback event against loading a snapshot and replaying only what came after it.

Run: ``python -m benchmarks.router_startup [--events 1000000]``.

Applying feedback costs O(d^2) per model it names (the posterior's rank-one updates), so a
full replay of 1M events is timed on ``--replayed`` real events and scaled. The snapshot
for ``--events`` is built by learning ``--replayed`` real events and then filling the memory
up to ``--events`` rows with synthetic ones (random unit vectors, a rating or a preference
each, 5,000 users): the load time depends on the arrays' sizes, not on how they were learnt.
The timed start-up is what ``ModelRuntime`` does: a fresh router, ``load_snapshot``, then
``--after`` new events applied one by one. Embedding is excluded (events carry vectors).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router import EagleRouter, FeedbackEvent
from router.snapshot import load_snapshot, save_snapshot

MODELS = [f"model-{i}" for i in range(9)]
DIMENSIONS = 384
USERS = 5000


class _NoEmbedder:
    name = "none"
    dimensions = DIMENSIONS

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        raise AssertionError("the start-up benchmark never embeds")


def _unit_rows(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    rows = rng.standard_normal((n, DIMENSIONS)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _events(rng: np.random.Generator, n: int, first_id: int) -> list[FeedbackEvent]:
    vectors = _unit_rows(rng, n)
    events = []
    for i in range(n):
        a, b = rng.choice(len(MODELS), size=2, replace=False)
        preference = rng.random() < 0.3
        events.append(
            FeedbackEvent(
                feedback_id=first_id + i,
                user_id=f"user-{rng.integers(USERS)}",
                model=MODELS[a],
                rating=None if preference else int(rng.choice([-1, 0, 1])),
                other_model=MODELS[b] if preference else None,
                vector=vectors[i],
                response_id=f"resp-{first_id + i}",
            )
        )
    return events


def _grow(router: EagleRouter, rng: np.random.Generator, rows: int) -> EagleRouter:
    """A router whose memory holds ``rows`` rows: the learnt ones plus synthetic ones."""
    arrays, last_id = router.export_state()
    have = len(arrays["evidence_weight"])
    extra = rows - have
    n_models = len(MODELS)
    labels = np.full((extra, n_models), np.nan)
    rated = rng.integers(n_models, size=extra)
    labels[np.arange(extra), rated] = rng.choice([0.0, 0.5, 1.0], size=extra)
    grown = dict(arrays)
    grown["evidence_index_rows"] = np.vstack(
        [arrays["evidence_index_rows"], _unit_rows(rng, extra)]
    )
    for key in ("evidence_index_centroids", "evidence_index_lists"):
        grown.pop(key, None)  # retrained on import for the synthetic rows
    grown["evidence_labels"] = np.vstack([arrays["evidence_labels"], labels])
    grown["evidence_winner"] = np.concatenate([arrays["evidence_winner"], np.full(extra, -1)])
    grown["evidence_loser"] = np.concatenate([arrays["evidence_loser"], np.full(extra, -1)])
    grown["evidence_weight"] = np.concatenate([arrays["evidence_weight"], np.full(extra, 0.5)])
    users = len(arrays["evidence_user_ids"])
    grown["evidence_user"] = np.concatenate(
        [arrays["evidence_user"], rng.integers(max(users, 1), size=extra)]
    )
    offsets = arrays["games_offsets"]
    one_game = np.array([[0, 1, 0]], dtype=np.int64)
    grown["games_games"] = np.vstack([arrays["games_games"], np.repeat(one_game, extra, axis=0)])
    grown["games_offsets"] = np.concatenate([offsets, offsets[-1] + 1 + np.arange(extra)])
    grown["sources"] = np.concatenate(
        [arrays["sources"], np.array([f"resp-x{i}" for i in range(extra)], dtype=np.str_)]
    )
    bigger = EagleRouter(MODELS, _NoEmbedder())
    bigger.import_state(grown, last_id)
    return bigger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--replayed", type=int, default=20_000)
    parser.add_argument("--after", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    router = EagleRouter(MODELS, _NoEmbedder())
    events = _events(rng, args.replayed, first_id=1)
    started = time.perf_counter()
    for event in events:
        router.apply_feedback(event)
    replay_seconds = time.perf_counter() - started
    per_event = replay_seconds / args.replayed
    print(
        f"full replay: {args.replayed:,} events in {replay_seconds:.1f} s "
        f"({per_event * 1e6:.0f} us each) -> {args.events:,} events ~ "
        f"{per_event * args.events:.0f} s (SQL reads excluded)"
    )

    started = time.perf_counter()
    big = _grow(router, rng, args.events) if args.events > args.replayed else router
    print(f"built a {args.events:,}-row state in {time.perf_counter() - started:.0f} s (not timed)")
    later = _events(rng, args.after, first_id=big.last_feedback_id + 1)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "state.npz"
        started = time.perf_counter()
        save_snapshot(big, path, reset_epoch=None)
        print(
            f"snapshot written in {time.perf_counter() - started:.1f} s, "
            f"{path.stat().st_size / 2**20:,.0f} MiB"
        )
        loads, catch_ups = [], []
        for _ in range(args.repeats):
            fresh = EagleRouter(MODELS, _NoEmbedder())
            started = time.perf_counter()
            assert load_snapshot(fresh, path, reset_epoch=None)
            loads.append(time.perf_counter() - started)
            started = time.perf_counter()
            for event in later:
                fresh.apply_feedback(event)
            catch_ups.append(time.perf_counter() - started)
            del fresh
    load, catch_up = statistics.median(loads), statistics.median(catch_ups)
    total = load + catch_up
    print(
        f"start-up from the snapshot: load {load:.2f} s + {args.after:,} newer events "
        f"{catch_up:.2f} s = {total:.2f} s (median of {args.repeats}); "
        f"full replay estimate / snapshot start-up = {per_event * args.events / total:.0f}x"
    )


if __name__ == "__main__":
    main()
