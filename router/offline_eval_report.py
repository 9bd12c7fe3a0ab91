"""What an offline evaluation (router/offline_eval.py) found, and the text it prints.

``EvalReport`` is the record ``run_offline_eval`` returns (tests and the benchmark read
it); ``format_report`` turns it into the lines ``tailor router eval`` and
``python -m benchmarks.router_eval`` print; ``calibration_record`` is the part the
admin dashboard reads. The rows' names are defined here, since the run, the report and
its readers all look rows up by them.

Invariants: the report is plain frozen data; the text is a pure function of the report
and the split sizes, so a report prints the same lines wherever it is formatted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from router.config import RouterConfig
from router.evaluated_routers import KNN_NEIGHBOURS, EagleConfig
from router.lambda_sweep import CalibrationFigures, RouterResult
from router.quality_estimate import EstimatorConfig
from router.quality_model import QualityModelConfig
from router.routing_data import (
    EXPECTED_INPUT_TOKENS,
    EXPECTED_OUTPUT_TOKENS,
    VALIDATION_FRACTION,
)
from router.validation_tuning import CLEAR_GAIN, NOISE_GAIN, SAFE_PRIOR_VARIANCE

QUALITY_NAME = "quality model"
QUALITY_NO_MEMORY = "quality model, no memory"
QUALITY_RATINGS = "quality, 1 rating/query"
QUALITY_PREFERENCES = "quality, 1 preference/query"
SERVED_NAME = "served (calibrated estimate)"
SERVED_RATINGS = "served, 1 rating/query"
SERVED_PREFERENCES = "served, 1 preference/query"
# The live router's lambda unless an admin changes it: what the dashboard's diagram shows.
SERVED_LAMBDA = RouterConfig().cost_weight
CALIBRATION_LAMBDAS = (0.0, SERVED_LAMBDA)
CALIBRATION_SOURCE = "dcrouter test"


@dataclass(frozen=True)
class OnlineStep:
    fraction: float
    queries: int
    added: int
    update_seconds: float
    aiq: float
    accuracy: float


@dataclass(frozen=True)
class ScoringTime:
    """Seconds to score one query (9 models), the embedding already made."""

    predict_p50: float  # QualityModel.predict: neighbour search, ridge and correction
    predict_p99: float
    search_p50: float  # the neighbour search alone


@dataclass(frozen=True)
class ModelLevel:
    """A router's mean predicted P(good) of one model over the test queries, beside the
    model's real accuracy: preference-only feedback must not push these apart."""

    router: str
    model: str
    mean_predicted: float
    train_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class SubsetFigures:
    """A router's (AIQ, accuracy) on the test queries whose exact text is also in
    train, and on the others: a repeat's own recorded scores are in the memory."""

    name: str
    repeated: tuple[float, float]
    new: tuple[float, float]


@dataclass(frozen=True)
class EvalReport:
    models: list[str]
    strong: str
    weak: str
    eagle_config: EagleConfig
    validation: dict[str, tuple[float, float]]  # config label -> (AIQ, accuracy)
    results: list[RouterResult]
    online: list[OnlineStep]  # Eagle's
    seconds: float
    quality_config: QualityModelConfig
    quality_validation: dict[QualityModelConfig, tuple[float, float]]
    quality_online: list[OnlineStep]
    estimator_config: EstimatorConfig
    estimator_validation: dict[EstimatorConfig, tuple[float, float]]
    calibration: list[CalibrationFigures]
    levels: list[ModelLevel]
    estimator_seed_seconds: float  # per train query, 9 models' scores
    estimator_predict_seconds: float  # per test query, in a batch of test
    scoring: ScoringTime
    repeated_queries: int  # test queries whose exact text is in train
    subsets: list[SubsetFigures]  # empty when no test query, or every one, is repeated

    def result(self, name: str) -> RouterResult:
        return next(r for r in self.results if r.name == name)

    def calibration_of(self, name: str, lam: float) -> CalibrationFigures:
        return next(c for c in self.calibration if c.name == name and c.lam == lam)


def calibration_record(report: EvalReport) -> dict[str, object]:
    """The served estimate's reliability at the served lambda, as the dashboard reads it
    (``GET /admin/router/calibration``'s ``offline``)."""
    figures = report.calibration_of(SERVED_NAME, SERVED_LAMBDA)
    return {
        "source": CALIBRATION_SOURCE,
        "router": SERVED_NAME,
        "lambda": SERVED_LAMBDA,
        **figures.reliability,
    }


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _quality_validation_lines(report: EvalReport) -> list[str]:
    penalties = sorted({c.penalty for c in report.quality_validation})
    corrections = list(dict.fromkeys(c.correction for c in report.quality_validation))
    lines = [
        f"validation ({VALIDATION_FRACTION:.0%} of train) AIQ / accuracy of the quality model "
        "(rows: neighbour memory; columns: ridge penalty):",
        f"  {'memory':<26}" + "".join(f"{p:>13g}" for p in penalties),
    ]
    for correction in corrections:
        label = "none" if correction is None else correction.label()
        cells = []
        for penalty in penalties:
            found = report.quality_validation.get(QualityModelConfig(penalty, correction))
            cells.append("-" if found is None else f"{found[0]:.3f}/{found[1]:.3f}")
        lines.append(f"  {label:<26}" + "".join(f"{c:>13}" for c in cells))
    lines.append(f"quality model uses: {report.quality_config.label()}")
    return lines


def _online_lines(name: str, steps: list[OnlineStep]) -> list[str]:
    lines = [f"online protocol ({name}): train used, added, update time, AIQ, accuracy"]
    for s in steps:
        per = 1e6 * s.update_seconds / max(1, s.added)
        lines.append(
            f"  {s.fraction:4.0%} {s.queries:6d} +{s.added:<6d} {s.update_seconds:7.3f} s "
            f"({per:.0f} us/query)  AIQ {s.aiq:.3f}  acc {s.accuracy:.3f}"
        )
    return lines


def _estimator_label(config: EstimatorConfig) -> str:
    e = config.evidence
    return (
        f"wv={config.weight_variance:g} iv={config.intercept_variance:g} "
        f"N={e.neighbours} bw={e.bandwidth:g} m={e.prior_weight:g}"
    )


def _estimator_validation_lines(report: EvalReport) -> list[str]:
    found = report.estimator_validation
    chosen = report.estimator_config
    best = max(found, key=found.__getitem__)
    lines = [
        "validation AIQ / accuracy of the served estimate (weight / intercept prior variance, "
        "evidence neighbours / bandwidth / prior weight), in the order searched:",
        *(
            f"  {_estimator_label(c):<36} {a:.4f} / {b:.4f}" + (" <- chosen" if c == chosen else "")
            for c, (a, b) in found.items()
        ),
        f"served estimate uses: {_estimator_label(chosen)} "
        f"({'the' if chosen == EstimatorConfig() else 'NOT the'} code defaults); "
        f"validation's best {_estimator_label(best)} is "
        f"{found[best][0] - found[chosen][0]:+.4f} AIQ from it (a default moves only for "
        f"> {NOISE_GAIN:g}, a prior variance above {SAFE_PRIOR_VARIANCE:g} only for > "
        f"{CLEAR_GAIN:g})",
    ]
    return lines


def _calibration_lines(report: EvalReport) -> list[str]:
    lines = [
        "",
        "reliability on test of P(good) of the model picked at lambda (predicted vs its score):",
    ]
    for figures in report.calibration:
        r = figures.reliability
        lines.append(
            f"  {figures.name} at lambda {figures.lam:g}: n {r['count']}, "
            f"ECE {_fmt(_or_nan(r['ece']))}, Brier {_fmt(_or_nan(r['brier']))}"
        )
        if figures.name in (SERVED_NAME, QUALITY_NAME):
            lines.append(f"    {'bin':<11} {'count':>5} {'predicted':>9} {'observed':>8}")
            lines += [
                f"    [{b['lower']:.1f}, {b['upper']:.1f}) {b['count']:>5} "
                f"{_fmt(_or_nan(b['mean_predicted'])):>9} {_fmt(_or_nan(b['observed_rate'])):>8}"
                for b in r["bins"]
                if b["count"]
            ]
    lines.append("mean predicted P(good) over test vs real accuracy (train / test):")
    lines += [
        f"  {level.router:<30} {level.model:<28} {level.mean_predicted:.3f}  "
        f"({level.train_accuracy:.3f} / {level.test_accuracy:.3f})"
        for level in report.levels
    ]
    return lines


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def format_report(report: EvalReport, n_train: int, n_test: int) -> list[str]:
    lines = [
        f"router eval: {n_train} train / {n_test} test queries, {len(report.models)} models; "
        f"cost assumes {EXPECTED_INPUT_TOKENS}+{EXPECTED_OUTPUT_TOKENS} tokens per call",
        f"validation ({VALIDATION_FRACTION:.0%} of train) AIQ / accuracy per Eagle setting:",
        *(f"  {label:<36} {a:.3f} / {b:.3f}" for label, (a, b) in report.validation.items()),
        f"eagle uses: {report.eagle_config.label()}",
        *_quality_validation_lines(report),
        *_estimator_validation_lines(report),
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
    if report.subsets:
        lines += [
            "",
            f"test queries whose exact text is in train: {report.repeated_queries} of {n_test}; "
            "AIQ / accuracy on those, and on the rest:",
            *(
                f"  {s.name:<32} {s.repeated[0]:.3f} / {s.repeated[1]:.3f}   "
                f"{s.new[0]:.3f} / {s.new[1]:.3f}"
                for s in report.subsets
            ),
        ]
    for name in ("eagle", f"knn (k={KNN_NEIGHBOURS})", QUALITY_NAME, SERVED_NAME):
        curve = report.result(name).curve
        lines += ["", f"quality-cost curve, {name} (lambda: $/1k queries -> quality):"]
        seen: set[tuple[float, float]] = set()
        for lam, c, q in curve:
            if (c, q) not in seen:
                seen.add((c, q))
                lines.append(f"  lambda {lam:9.4f}: {1000 * c:.4f} -> {q:.3f}")
    lines += _calibration_lines(report)
    lines += ["", *_online_lines("eagle", report.online)]
    lines += _online_lines(QUALITY_NAME, report.quality_online)
    t = report.scoring
    lines += [
        f"scoring one query ({QUALITY_NAME}, {len(report.models)} models, embedding excluded): "
        f"p50 {1e3 * t.predict_p50:.3f} ms, p99 {1e3 * t.predict_p99:.3f} ms, "
        f"of which neighbour search p50 {1e3 * t.search_p50:.3f} ms",
        f"served estimate: seeding {1e6 * report.estimator_seed_seconds:.0f} us per train "
        f"query ({len(report.models)} models' scores), scoring "
        f"{1e3 * report.estimator_predict_seconds:.3f} ms per test query in a batch",
        f"total {report.seconds:.1f} s",
    ]
    return lines
