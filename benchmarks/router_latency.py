"""Router decision latency, embedding included, with 10k and 100k past queries;
feedback update time.

    python -m benchmarks.router_latency [--data DIR] [--sizes 10000 100000]

Past queries are dcrouter's training questions (embedded by the service's
query embedder, MiniLM int8 ONNX from the model store, cached under
var/cache/embeddings), repeated with small perturbations up to each size, with
the pairwise outcomes of their recorded scores, over dcrouter's 9 priced
models. Each timed decision routes one distinct test question (so the
embedder's memory never answers) through EagleRouter.route, exactly as a
request does. The same run times the embedding alone (int8 ONNX, and float32
torch MiniLM for reference) and the fixed default router, so the figures come
with same-run ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from router import Candidate, DefaultModelRouter, EagleRouter, FeedbackEvent, RouteRequest
from router.embeddings import embed_texts
from router.offline_eval import load_routing_data
from router.query_embedder import (
    Embedder,
    OnnxQueryEmbedder,
    SentenceEmbedder,
    use_one_blas_thread,
)
from storage.settings import load_settings
from tests.datasets import DCROUTER

DEFAULT_DATA = DCROUTER


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


def fill(router: EagleRouter, vectors: np.ndarray, scores: np.ndarray, size: int) -> None:
    """``size`` past queries: the real ones first, then perturbed copies."""
    rng = np.random.default_rng(0)
    rows = [dict(zip(router.models, row, strict=True)) for row in scores]
    for i in range(size):
        j = i % len(vectors)
        vector = vectors[j]
        if i >= len(vectors):
            vector = vector + rng.normal(scale=0.02, size=vector.shape).astype(np.float32)
        router.seed(vector, rows[j])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
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
    embedder = OnnxQueryEmbedder.load(load_settings().model_store_dir, remembered=0)
    train_vectors = embed_texts(data.train_questions, embedder)
    questions = data.test_questions[: args.queries]
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

    for size in args.sizes:
        router = EagleRouter(data.models, embedder)
        fill(router, train_vectors, data.train_scores, size)
        times = []
        for i, text in enumerate(questions):
            request = RouteRequest(
                user_id=f"user-{i % 10}", prompt_text=text, prompt_tokens=64, max_tokens=256
            )
            started = time.perf_counter()
            router.route(request, candidates)
            times.append(time.perf_counter() - started)
        p50, p99 = percentiles(times)
        updates = []
        for i in range(1000):
            event = FeedbackEvent(
                feedback_id=i + 1,
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
        print(
            f"{size:>7,} past queries: decision p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({p50 / embed_p50:.2f}x the embedding alone); "
            f"feedback update p50 {u50 * 1000:.1f} us, p99 {u99 * 1000:.1f} us"
        )


if __name__ == "__main__":
    main()
