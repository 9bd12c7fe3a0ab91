"""``tailor router eval --data DIR``: Eagle against baselines on a routing data set
(dcrouter format: train.json / test.json with per-model ``scores`` in [0, 1], almost
all 0 or 1 with a few partial credits, and llm_candidates.json with prices).

Every router yields a score per (query, model); a sweep over lambda picks
argmax(score - lambda * normalised cost) and traces a quality-cost curve.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.elo import EagleRatings, pairwise_outcomes, win_probability_vs_field
from router.embeddings import DEFAULT_CACHE_DIR, FloatMatrix, QueryIndex, embed_texts
from router.quality_cost import (
    FloatArray,
    IntArray,
    aiq,
    apgr,
    cpt,
    entropy_bits,
    strong_weak_curve,
)

# dcrouter records no token counts, so every call is costed at the same expected
# size and a model's cost per query is proportional to its price.
EXPECTED_INPUT_TOKENS = 256
EXPECTED_OUTPUT_TOKENS = 256
KNN_NEIGHBOURS = 20
VALIDATION_FRACTION = 0.2
ONLINE_FRACTIONS = (0.70, 0.85, 1.00)
SEED = 0
# From "never mind cost" to "cheapest model for everyone" on a [0, 1] score scale.
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *(float(x) for x in np.geomspace(1e-3, 1e2, 51)))


# ---- data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingData:
    models: list[str]
    cost: FloatArray  # dollars per query, per model
    train_questions: list[str]
    train_scores: FloatArray  # (queries, models), in [0, 1]
    test_questions: list[str]
    test_scores: FloatArray


def load_routing_data(
    data_dir: Path, *, train_limit: int | None = None, test_limit: int | None = None
) -> RoutingData:
    train = json.loads((data_dir / "train.json").read_text())[:train_limit]
    test = json.loads((data_dir / "test.json").read_text())[:test_limit]
    prices = json.loads((data_dir / "llm_candidates.json").read_text())
    models = sorted(train[0]["scores"])
    missing = [m for m in models if m not in prices]
    if missing:
        raise ValueError(f"no price in llm_candidates.json for {missing}")
    cost = np.array(
        [
            (
                EXPECTED_INPUT_TOKENS * prices[m]["input_price"]
                + EXPECTED_OUTPUT_TOKENS * prices[m]["output_price"]
            )
            / 1e6
            for m in models
        ]
    )

    def matrix(records: list[dict[str, object]]) -> FloatArray:
        return np.array([[float(r["scores"][m]) for m in models] for r in records])  # type: ignore[index]

    return RoutingData(
        models=models,
        cost=cost,
        train_questions=[str(r["question"]) for r in train],
        train_scores=matrix(train),
        test_questions=[str(r["question"]) for r in test],
        test_scores=matrix(test),
    )


# ---- routers and the sweep -------------------------------------------------------------


def route(scores: FloatArray, cost: FloatArray, lam: float) -> IntArray:
    """argmax of score - lam * cost/max(cost); ties go to the cheaper model."""
    norm = cost / cost.max()
    utility = scores - lam * norm - 1e-9 * norm
    picks: IntArray = np.argmax(utility, axis=1).astype(np.int64)
    return picks


def knn_scores(
    train_vectors: FloatMatrix, train_scores: FloatArray, queries: FloatMatrix, k: int
) -> FloatArray:
    index = QueryIndex(train_vectors.shape[1])
    index.add(train_vectors)
    ids, _ = index.search(queries, k)
    means: FloatArray = train_scores[ids].mean(axis=1)
    return means


@dataclass(frozen=True)
class EagleConfig:
    draws: bool = False
    global_weight: float = 0.5
    neighbours: int = 20
    k: float = 32.0

    def label(self) -> str:
        ties = "draws" if self.draws else "skip ties"
        return f"P={self.global_weight} N={self.neighbours} K={self.k:g} {ties}"


def fit_eagle(
    config: EagleConfig, models: list[str], vectors: FloatMatrix, scores: FloatArray
) -> EagleRatings:
    eagle = EagleRatings(
        models,
        vectors.shape[1],
        global_weight=config.global_weight,
        neighbours=config.neighbours,
        k=config.k,
    )
    observe_all(eagle, config, vectors, scores)
    return eagle


def observe_all(
    eagle: EagleRatings, config: EagleConfig, vectors: FloatMatrix, scores: FloatArray
) -> None:
    for vector, row in zip(vectors, scores, strict=True):
        outcomes = pairwise_outcomes(dict(zip(eagle.models, row, strict=True)), draws=config.draws)
        eagle.observe(vector, outcomes)


def eagle_scores(eagle: EagleRatings, queries: FloatMatrix) -> FloatArray:
    rows = []
    for vector in queries:
        blended, _ = eagle.scores(vector)
        quality = win_probability_vs_field(blended)
        rows.append([quality[m] for m in eagle.models])
    return np.array(rows)


@dataclass(frozen=True)
class RouterResult:
    name: str
    aiq: float
    accuracy: float  # at lambda = 0, the highest-quality setting
    cost: float  # dollars per query at lambda = 0
    apgr: float
    cpt50: float
    regret: float  # oracle accuracy minus this accuracy, both at lambda = 0
    entropy_bits: float  # of the models picked at lambda = 0
    curve: tuple[tuple[float, float, float], ...]  # (lambda, cost, quality)


def evaluate_router(
    name: str,
    scores: FloatArray,
    truth: FloatArray,
    cost: FloatArray,
    lambdas: Sequence[float],
    *,
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> RouterResult:
    rows = np.arange(len(truth))
    curve = []
    for lam in lambdas:
        picks = route(scores, cost, lam)
        curve.append((float(lam), float(cost[picks].mean()), float(truth[rows, picks].mean())))
    picks0 = route(scores, cost, 0.0)
    accuracy = float(truth[rows, picks0].mean())
    strong, weak = pair
    apgr_value = cpt50 = math.nan
    # On a small slice the pair can tie: then there is no gap and neither figure exists.
    if truth[:, strong].mean() != truth[:, weak].mean():
        fractions, recovered = strong_weak_curve(
            scores[:, strong] - scores[:, weak], truth[:, strong], truth[:, weak]
        )
        apgr_value, cpt50 = apgr(fractions, recovered), cpt(fractions, recovered)
    return RouterResult(
        name=name,
        aiq=aiq([(c, q) for _, c, q in curve], (float(cost.min()), float(cost.max()))),
        accuracy=accuracy,
        cost=float(cost[picks0].mean()),
        apgr=apgr_value,
        cpt50=cpt50,
        regret=oracle_accuracy - accuracy,
        entropy_bits=entropy_bits(picks0, len(cost)),
        curve=tuple(curve),
    )


def single_model_result(
    name: str, column: int, truth: FloatArray, cost: FloatArray, oracle_accuracy: float
) -> RouterResult:
    accuracy = float(truth[:, column].mean())
    point = (0.0, float(cost[column]), accuracy)
    return RouterResult(
        name=name,
        aiq=accuracy,  # one point: the curve is flat at its quality
        accuracy=accuracy,
        cost=float(cost[column]),
        apgr=math.nan,
        cpt50=math.nan,
        regret=oracle_accuracy - accuracy,
        entropy_bits=0.0,
        curve=(point,),
    )


# ---- the whole run ---------------------------------------------------------------------


@dataclass(frozen=True)
class OnlineStep:
    fraction: float
    queries: int
    added: int
    update_seconds: float
    aiq: float
    accuracy: float


@dataclass(frozen=True)
class EvalReport:
    models: list[str]
    strong: str
    weak: str
    eagle_config: EagleConfig
    validation: dict[str, tuple[float, float]]  # config label -> (AIQ, accuracy)
    results: list[RouterResult]
    online: list[OnlineStep]
    seconds: float

    def result(self, name: str) -> RouterResult:
        return next(r for r in self.results if r.name == name)


PAPER_CONFIG = EagleConfig()
# The paper's setting, the same with draws, and smaller P / larger N: local ratings
# replayed from ~20 queries spread far less than a global rating fed every game, so
# at P=0.5 the global term dominates and most queries get the same model.
VALIDATION_GRID = (
    PAPER_CONFIG,
    EagleConfig(draws=True),
    *(EagleConfig(global_weight=p, neighbours=n) for p in (0.0, 0.1, 0.25) for n in (20, 50)),
)


def choose_eagle_config(
    data: RoutingData, train_vectors: FloatMatrix, lambdas: Sequence[float], pair: tuple[int, int]
) -> tuple[EagleConfig, dict[str, tuple[float, float]]]:
    """Pick among VALIDATION_GRID on a held-out slice of train; test is never looked at."""
    n = len(data.train_questions)
    perm = np.random.default_rng(SEED).permutation(n)
    cut = n - max(1, int(n * VALIDATION_FRACTION))
    fit_rows, val_rows = np.sort(perm[:cut]), np.sort(perm[cut:])
    truth = data.train_scores[val_rows]
    oracle = float(truth.max(axis=1).mean())
    found: dict[str, tuple[float, float]] = {}
    best: tuple[tuple[float, float], EagleConfig] | None = None
    for config in VALIDATION_GRID:
        eagle = fit_eagle(config, data.models, train_vectors[fit_rows], data.train_scores[fit_rows])
        scores = eagle_scores(eagle, train_vectors[val_rows])
        result = evaluate_router(
            "val", scores, truth, data.cost, lambdas, pair=pair, oracle_accuracy=oracle
        )
        found[config.label()] = (result.aiq, result.accuracy)
        key = (result.aiq, result.accuracy)
        if best is None or key > best[0]:
            best = (key, config)
    assert best is not None
    return best[1], found


def strong_weak_pair(data: RoutingData) -> tuple[int, int]:
    """Strong: best on train. Weak: the cheapest, best on train among equals."""
    train_accuracy = data.train_scores.mean(axis=0)
    strong = int(np.argmax(train_accuracy))
    cheapest = np.flatnonzero(data.cost == data.cost.min())
    weak = int(cheapest[np.argmax(train_accuracy[cheapest])])
    return strong, weak


def run_online_protocol(
    data: RoutingData,
    config: EagleConfig,
    train_vectors: FloatMatrix,
    test_vectors: FloatMatrix,
    lambdas: Sequence[float],
    pair: tuple[int, int],
    oracle_accuracy: float,
) -> list[OnlineStep]:
    """Eagle's protocol: ratings from the first 70% of train (in its recorded order),
    then 15% more at a time, timing each update and scoring test after each."""
    n = len(data.train_questions)
    eagle = EagleRatings(
        data.models,
        train_vectors.shape[1],
        global_weight=config.global_weight,
        neighbours=config.neighbours,
        k=config.k,
    )
    steps: list[OnlineStep] = []
    done = 0
    for fraction in ONLINE_FRACTIONS:
        upto = round(n * fraction)
        started = time.perf_counter()
        observe_all(eagle, config, train_vectors[done:upto], data.train_scores[done:upto])
        seconds = time.perf_counter() - started
        scores = eagle_scores(eagle, test_vectors)
        result = evaluate_router(
            "eagle",
            scores,
            data.test_scores,
            data.cost,
            lambdas,
            pair=pair,
            oracle_accuracy=oracle_accuracy,
        )
        steps.append(OnlineStep(fraction, upto, upto - done, seconds, result.aiq, result.accuracy))
        done = upto
    return steps


def run_offline_eval(
    data_dir: Path,
    *,
    lambdas: Sequence[float] | None = None,
    output: Callable[[str], None] = print,
    train_limit: int | None = None,
    test_limit: int | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
) -> EvalReport:
    started = time.perf_counter()
    sweep = list(DEFAULT_LAMBDAS if lambdas is None else lambdas)
    data = load_routing_data(data_dir, train_limit=train_limit, test_limit=test_limit)
    train_vectors = embed_texts(data.train_questions, cache_dir=cache_dir)
    test_vectors = embed_texts(data.test_questions, cache_dir=cache_dir)
    pair = strong_weak_pair(data)
    truth, cost = data.test_scores, data.cost
    oracle_accuracy = float(truth.max(axis=1).mean())

    config, validation = choose_eagle_config(data, train_vectors, sweep, pair)
    eagle = fit_eagle(config, data.models, train_vectors, data.train_scores)
    paper = eagle if config == PAPER_CONFIG else None
    if paper is None:
        paper = fit_eagle(PAPER_CONFIG, data.models, train_vectors, data.train_scores)
    scored = {
        "eagle": eagle_scores(eagle, test_vectors),
        "eagle (paper: P=0.5 N=20 K=32)": eagle_scores(paper, test_vectors),
        f"knn (k={KNN_NEIGHBOURS})": knn_scores(
            train_vectors, data.train_scores, test_vectors, KNN_NEIGHBOURS
        ),
        "random": np.random.default_rng(SEED).random(truth.shape),
        "oracle": truth,
    }
    results = [
        evaluate_router(
            name, scores, truth, cost, sweep, pair=pair, oracle_accuracy=oracle_accuracy
        )
        for name, scores in scored.items()
    ]
    results += [
        single_model_result(model, i, truth, cost, oracle_accuracy)
        for i, model in enumerate(data.models)
    ]
    online = run_online_protocol(
        data, config, train_vectors, test_vectors, sweep, pair, oracle_accuracy
    )
    report = EvalReport(
        models=data.models,
        strong=data.models[pair[0]],
        weak=data.models[pair[1]],
        eagle_config=config,
        validation=validation,
        results=results,
        online=online,
        seconds=time.perf_counter() - started,
    )
    for line in format_report(report, len(data.train_questions), len(data.test_questions)):
        output(line)
    return report


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def format_report(report: EvalReport, n_train: int, n_test: int) -> list[str]:
    lines = [
        f"router eval: {n_train} train / {n_test} test queries, {len(report.models)} models; "
        f"cost assumes {EXPECTED_INPUT_TOKENS}+{EXPECTED_OUTPUT_TOKENS} tokens per call",
        "validation (20% of train) AIQ / accuracy per Eagle setting:",
        *(f"  {label:<36} {a:.3f} / {b:.3f}" for label, (a, b) in report.validation.items()),
        f"eagle uses: {report.eagle_config.label()}",
        f"APGR / CPT(50%) pair: strong {report.strong}, weak {report.weak}",
        "",
        f"{'router':<34} {'AIQ':>6} {'acc':>6} {'$/1k q':>7} {'APGR':>6} {'CPT50':>6} "
        f"{'regret':>7} {'H bits':>6}",
    ]
    for r in report.results:
        lines.append(
            f"{r.name:<34} {r.aiq:>6.3f} {r.accuracy:>6.3f} {1000 * r.cost:>7.4f} "
            f"{_fmt(r.apgr):>6} {_fmt(r.cpt50):>6} {r.regret:>7.3f} {r.entropy_bits:>6.2f}"
        )
    for name in ("eagle", f"knn (k={KNN_NEIGHBOURS})"):
        curve = report.result(name).curve
        lines += ["", f"quality-cost curve, {name} (lambda: $/1k queries -> quality):"]
        seen: set[tuple[float, float]] = set()
        for lam, c, q in curve:
            if (c, q) not in seen:
                seen.add((c, q))
                lines.append(f"  lambda {lam:9.4f}: {1000 * c:.4f} -> {q:.3f}")
    lines += ["", "online protocol (eagle): train used, added, update time, AIQ, accuracy"]
    for s in report.online:
        per = 1e6 * s.update_seconds / max(1, s.added)
        lines.append(
            f"  {s.fraction:4.0%} {s.queries:6d} +{s.added:<6d} {s.update_seconds:7.3f} s "
            f"({per:.0f} us/query)  AIQ {s.aiq:.3f}  acc {s.accuracy:.3f}"
        )
    lines.append(f"total {report.seconds:.1f} s")
    return lines
