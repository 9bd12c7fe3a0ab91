"""Router decision latency, embedding included, with 10k, 100k and 1M past queries;
the neighbour search alone, approximate against exact; feedback update time.

    python -m benchmarks.router_latency [--data DIR] [--sizes 10000 100000 1000000]

Past queries are dcrouter's training questions (embedded by the service's
query embedder, MiniLM int8 ONNX from the model store, cached under
var/cache/embeddings), repeated with small perturbations up to each size, with
the pairwise outcomes of their recorded scores, over dcrouter's 9 priced
models. The real questions are learnt through the public EagleRouter.seed;
the perturbed copies are added in bulk through export_state / import_state
(the snapshot path), because seed updates the shared posterior at about 2 ms
a row (half an hour for 1M) and that cost does not grow with the memory's
size. The copies repeat their original's labels and games.

Each timed decision routes one distinct test question (so the embedder's
memory never answers) through EagleRouter.route, exactly as a request does.
The same run times the embedding alone (int8 ONNX, and float32 torch MiniLM
for reference), the fixed default router, and at each size the router's own
neighbour search (approximate past QueryIndex's exact limit) beside an exact
search over the same rows, with the approximate search's recall, so the
figures come with same-run ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router import Candidate, DefaultModelRouter, EagleRouter, FeedbackEvent, RouteRequest
from router.embeddings import QueryIndex, embed_texts, normalise_rows
from router.query_embedder import (
    Embedder,
    OnnxQueryEmbedder,
    SentenceEmbedder,
    use_one_blas_thread,
)
from router.routing_data import load_routing_data
from serving.settings import load_settings
from tests.datasets import DCROUTER

DEFAULT_DATA = DCROUTER
# Neighbours per search when timing the index alone: the evidence's default depth,
# the deepest search a decision makes.
SEARCH_DEPTH = 50
# In EagleRouter.export_state's arrays: the past queries' embeddings, and the games
# as offsets into one flat list (every other array of one entry a row is repeated).
ROWS_KEY = "evidence_index_rows"
GAMES_KEYS = ("games_offsets", "games_games")


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_embedding(embedder: Embedder, questions: list[str]) -> list[float]:
    for text in questions[:20]:  # warm up the model's first calls
        embedder.embed(text + " warm-up")
    seconds = []
    for text in questions:
        started = time.perf_counter()
        embedder.embed(text)
        seconds.append(time.perf_counter() - started)
    return seconds


def perturbed_copies(vectors: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """Rows len(vectors) .. size-1: each a copy of vectors[i % len] plus small noise,
    normalised as the index stores it."""
    rng = np.random.default_rng(0)
    count = max(0, size - len(vectors))
    copies = np.empty((count, vectors.shape[1]), dtype=np.float32)
    for start in range(0, count, 100_000):  # bounded temporaries at 1M rows
        end = min(count, start + 100_000)
        source = vectors[(np.arange(start, end) + len(vectors)) % len(vectors)]
        noise = rng.standard_normal((end - start, vectors.shape[1]), dtype=np.float32)
        copies[start:end] = normalise_rows(source + np.float32(0.02) * noise)
    return copies


def scaled_state(
    arrays: dict[str, npt.NDArray[Any]], copies: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[Any]]:
    """The snapshot of ``arrays`` (a router seeded with n real queries) grown by
    ``copies``: copy i repeats real query i % n's per-row arrays and games."""
    if ROWS_KEY not in arrays or not all(k in arrays for k in GAMES_KEYS):
        raise RuntimeError(f"EagleRouter.export_state no longer has {ROWS_KEY} / {GAMES_KEYS}")
    real = len(arrays[ROWS_KEY])
    size = real + len(copies)
    source = np.arange(size) % real
    scaled = {
        key: value[source] if value.ndim and len(value) == real else value
        for key, value in arrays.items()
        if key not in GAMES_KEYS
    }
    scaled[ROWS_KEY] = np.concatenate([arrays[ROWS_KEY], copies])
    offsets, games = (arrays[key] for key in GAMES_KEYS)
    lengths = np.diff(offsets)[source]
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Each new row's games are its source's slice of the flat game list.
    gather = np.repeat(offsets[source] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    scaled[GAMES_KEYS[0]], scaled[GAMES_KEYS[1]] = new_offsets, games[gather]
    return scaled


def time_searches(
    index: QueryIndex, queries: npt.NDArray[np.float32], depth: int
) -> tuple[list[float], npt.NDArray[np.int64]]:
    seconds, found = [], []
    for query in queries:
        started = time.perf_counter()
        ids, _ = index.search(query, depth)
        seconds.append(time.perf_counter() - started)
        found.append(ids[0])
    return seconds, np.array(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()

    use_one_blas_thread()  # as the service does
    data = load_routing_data(args.data)
    prices = data.cost / data.cost.max()
    candidates = [
        Candidate(m, cost_per_million_tokens=float(p), chat=True)
        for m, p in zip(data.models, prices, strict=True)
    ]
    # Nothing remembered: every timed text is embedded for real.
    embedder = OnnxQueryEmbedder.load(load_settings().storage.model_store_dir, remembered=0)
    train_vectors = embed_texts(data.train_questions, embedder)
    # The real questions once, through the public path; every size grows from them.
    seeded = EagleRouter(data.models, embedder)
    for vector, row in zip(train_vectors, data.train_scores, strict=True):
        seeded.seed(vector, dict(zip(data.models, row, strict=True)))
    real_state, last_feedback_id = seeded.export_state()
    del seeded
    scaled_state(real_state, train_vectors[:0])  # fails now, not after the timings, if stale

    questions = data.test_questions[: args.queries]
    query_vectors = embed_texts(questions, embedder)
    embed_times = time_embedding(embedder, questions)
    # The float32 torch model, for the ratio.
    reference_times = time_embedding(SentenceEmbedder.load(remembered=0), questions)
    default = DefaultModelRouter()
    default_times = []
    for text in questions:
        request = RouteRequest(user_id="u", prompt_text=text, prompt_tokens=64, max_tokens=256)
        started = time.perf_counter()
        default.route(request, candidates)
        default_times.append(time.perf_counter() - started)
    embed_p50, embed_p99 = percentiles(embed_times)
    float_p50, float_p99 = percentiles(reference_times)
    default_p50, _ = percentiles(default_times)
    print(
        f"MiniLM int8 ONNX embedding alone: p50 {embed_p50:.2f} ms, p99 {embed_p99:.2f} ms; "
        f"float32 torch: p50 {float_p50:.2f} ms, p99 {float_p99:.2f} ms "
        f"({float_p50 / embed_p50:.1f}x slower)"
    )
    print(f"fixed default router (no embedding): p50 {default_p50 * 1000:.1f} us")

    for size in sorted(args.sizes):
        started = time.perf_counter()
        router = EagleRouter(data.models, embedder)
        state = scaled_state(real_state, perturbed_copies(train_vectors, size))
        router.import_state(state, last_feedback_id)
        del state
        index = router.estimator.evidence.index
        if len(index) != max(size, len(train_vectors)):
            raise RuntimeError(f"filled {len(index)} past queries, wanted {size}")
        fill_seconds = time.perf_counter() - started

        times = []
        for i, text in enumerate(questions):
            request = RouteRequest(
                user_id=f"user-{i % 10}", prompt_text=text, prompt_tokens=64, max_tokens=256
            )
            started = time.perf_counter()
            router.route(request, candidates)
            times.append(time.perf_counter() - started)
        p50, p99 = percentiles(times)

        # The router's own index beside an exact one over the same rows.
        search_times, found = time_searches(index, query_vectors, SEARCH_DEPTH)
        exact = QueryIndex.from_state(index.dimensions, {"rows": index.vectors}, exact_limit=size)
        exact_times, truth = time_searches(exact, query_vectors, SEARCH_DEPTH)
        del exact
        recall = np.mean(
            [len(np.intersect1d(a, b)) / SEARCH_DEPTH for a, b in zip(found, truth, strict=True)]
        )
        s50, s99 = percentiles(search_times)
        x50, x99 = percentiles(exact_times)
        started = time.perf_counter()
        restored = QueryIndex.from_state(index.dimensions, index.state())
        restore_seconds = time.perf_counter() - started
        if not np.array_equal(time_searches(restored, query_vectors, SEARCH_DEPTH)[1], found):
            raise RuntimeError("the index restored from its state answers differently")
        del restored

        updates = []
        for i in range(1000):
            event = FeedbackEvent(
                feedback_id=last_feedback_id + i + 1,
                user_id=f"user-{i % 10}",
                model=data.models[i % 9],
                other_model=data.models[(i + 1) % 9],
                vector=train_vectors[i],
                response_id=f"r{i}",
            )
            started = time.perf_counter()
            router.apply_feedback(event)
            updates.append(time.perf_counter() - started)
        u50, u99 = percentiles(updates)
        mode = "approximate (faiss IVF)" if index.approximate else "exact (below the limit)"
        print(
            f"{size:>9,} past queries: decision p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({p50 / embed_p50:.2f}x the embedding alone); "
            f"feedback update p50 {u50 * 1000:.1f} us, p99 {u99 * 1000:.1f} us\n"
            f"          neighbour search (k={SEARCH_DEPTH}), {mode}: p50 {s50:.3f} ms, "
            f"p99 {s99:.3f} ms; exact: p50 {x50:.3f} ms, p99 {x99:.3f} ms; "
            f"recall@{SEARCH_DEPTH} {recall:.3f}\n"
            f"          filled in {fill_seconds:.1f} s; index restored from state() in "
            f"{restore_seconds:.2f} s, same answers",
            flush=True,
        )
        del router, index


if __name__ == "__main__":
    main()
