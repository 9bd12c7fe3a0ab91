"""``tailor router eval --online``: a routing data set replayed as live traffic.

The offline evaluation (router/offline_eval.py) gives the estimate every model's score on
every train query. Live, the router only ever hears about the answer it chose: a rating of
the routed model's answer, now and then a preference against a second answer. This module
replays a data set's train split in its recorded order through the live ``EagleRouter``
(exploration on, feedback only on what it routed) and scores the test split after every
tenth of the stream with the same lambda sweep as the offline evaluation, beside the
offline full-information router and the best single model. Then it probes the properties
issue 16 asks for: one user's feedback stays contextual, an adversarial user cannot move
other users' routes, a lone user's consistent preference does move their own, and a user's
significant specialist keeps them on its base when two bases are close.

Invariants: the module reads nothing and writes nothing but what it is given (data,
vectors, an output callable); the router is driven only through its public API; every draw
is seeded, so two runs on the same data give the same numbers. A scenario that must not
disturb another works on a copy of the router (``export_state`` / ``import_state``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.config import RouterConfig
from router.decision import Candidate, ExpertEvidence, RouteRequest, RoutingDecision
from router.eagle_router import EagleRouter
from router.embeddings import FloatMatrix, normalise_rows
from router.feedback_outcomes import FeedbackEvent
from router.lambda_sweep import (
    DEFAULT_LAMBDAS,
    evaluate_router,
    route,
    single_model_result,
    strong_weak_pair,
)
from router.quality_cost import FloatArray
from router.routing_data import EXPECTED_INPUT_TOKENS, EXPECTED_OUTPUT_TOKENS, RoutingData

CHECKPOINTS = 10
DEFAULT_PREFERENCE_FRACTION = 0.1
SEED = 0
ADVERSARY_VOTES = 50
PROBES = 500
# A lone user's preference is tried at this many anchor queries, with at most this many
# votes each (the aim is a change within 20).
LONE_ANCHORS = 10
LONE_MAX_VOTES = 40
LONE_AIM = 20
# "The two best bases are close": their P(good) within this of each other.
EXPERT_TIE = 0.05
USERS_SHARING = 200


class LookupEmbedder:
    """An embedder over precomputed vectors (the service's own, cached by
    router/embeddings.py), so a replay routes exactly what the live router would see
    without running the embedding model again."""

    def __init__(self, texts: Sequence[str], vectors: FloatMatrix, name: str) -> None:
        if len(texts) != len(vectors):
            raise ValueError("one vector per text")
        self.name = name
        self.dimensions = int(vectors.shape[1])
        self._vectors: dict[str, npt.NDArray[np.float32]] = {
            text: vector for text, vector in zip(texts, vectors, strict=True)
        }

    def embed(self, text: str) -> npt.NDArray[np.float32]:
        try:
            return self._vectors[text]
        except KeyError:
            raise KeyError(f"no precomputed vector for the text {text[:60]!r}") from None


@dataclass(frozen=True)
class ReplayData:
    """A routing data set with its query vectors, as the replay needs it."""

    data: RoutingData
    train_vectors: FloatMatrix
    test_vectors: FloatMatrix
    embedder_name: str = "lookup"

    def __post_init__(self) -> None:
        if len(self.train_vectors) != len(self.data.train_questions):
            raise ValueError("one train vector per train question")
        if len(self.test_vectors) != len(self.data.test_questions):
            raise ValueError("one test vector per test question")

    @property
    def models(self) -> list[str]:
        return self.data.models

    def candidates(self) -> list[Candidate]:
        # The data set costs every call at the same expected size, so a price per million
        # tokens is the per-query cost spread over that many tokens.
        tokens = EXPECTED_INPUT_TOKENS + EXPECTED_OUTPUT_TOKENS
        return [
            Candidate(model, cost_per_million_tokens=float(c) * 1e6 / tokens, chat=True)
            for model, c in zip(self.models, self.data.cost, strict=True)
        ]

    def embedder(self) -> LookupEmbedder:
        texts = [*self.data.train_questions, *self.data.test_questions]
        vectors = np.vstack([self.train_vectors, self.test_vectors])
        return LookupEmbedder(texts, vectors, self.embedder_name)


def new_router(replay: ReplayData, config: RouterConfig | None = None) -> EagleRouter:
    return EagleRouter(replay.models, replay.embedder(), config=config)


def clone(router: EagleRouter) -> EagleRouter:
    """A router with the same learnt state that learns on without touching ``router``."""
    copy = EagleRouter(router.models, router.embedder, config=router.config)
    arrays, last_id = router.export_state()
    copy.import_state(arrays, last_id)
    return copy


def _request(user_id: str, text: str, *, explore: bool, **extra: object) -> RouteRequest:
    return RouteRequest(
        user_id=user_id,
        prompt_text=text,
        prompt_tokens=EXPECTED_INPUT_TOKENS,
        max_tokens=EXPECTED_OUTPUT_TOKENS,
        explore=explore,
        **extra,  # type: ignore[arg-type]
    )


def _feed(
    router: EagleRouter, user_id: str, vector: npt.NDArray[np.float32], **kind: object
) -> None:
    event = FeedbackEvent(
        feedback_id=router.last_feedback_id + 1,
        user_id=user_id,
        vector=vector,
        **kind,  # type: ignore[arg-type]
    )
    router.apply_feedback(event)


def _rating(score: float) -> int:
    return 1 if score >= 0.5 else -1


# ---- scoring test ----------------------------------------------------------------------


@dataclass(frozen=True)
class TestFigures:
    aiq: float
    accuracy: float  # at lambda = 0
    served_accuracy: float  # at the router's cost weight
    served_cost_per_1k: float  # dollars per 1,000 queries at the router's cost weight


def score_test(replay: ReplayData, quality: FloatArray, cost_weight: float) -> TestFigures:
    """Test figures of a (queries, models) quality matrix, swept over lambda exactly as
    the offline evaluation sweeps its routers."""
    data = replay.data
    truth = data.test_scores
    result = evaluate_router(
        "online",
        quality,
        truth,
        data.cost,
        DEFAULT_LAMBDAS,
        pair=strong_weak_pair(data),
        oracle_accuracy=float(truth.max(axis=1).mean()),
    )
    picks = route(quality, data.cost, cost_weight)
    rows = np.arange(len(truth))
    return TestFigures(
        aiq=result.aiq,
        accuracy=result.accuracy,
        served_accuracy=float(truth[rows, picks].mean()),
        served_cost_per_1k=float(data.cost[picks].mean() * 1000),
    )


def shared_view(router: EagleRouter, replay: ReplayData) -> FloatArray:
    """P(good) on test for a user with no feedback of their own."""
    quality, _ = router.estimator.predict_many(replay.test_vectors)
    return quality


def _qualities(decision: RoutingDecision, models: Sequence[str]) -> list[float]:
    candidates = decision.details["candidates"]
    return [float(candidates[m]["quality"]) for m in models]


def user_view(router: EagleRouter, replay: ReplayData, user_id: str) -> FloatArray:
    """P(good) on test as ``user_id``'s own routing sees it (their feedback included)."""
    rows = [
        _qualities(
            router.route(_request(user_id, text, explore=False), replay.candidates()), replay.models
        )
        for text in replay.data.test_questions
    ]
    return np.array(rows)


def offline_full_information(replay: ReplayData, config: RouterConfig | None = None) -> TestFigures:
    """A fresh router seeded with every model's score on every train query: the ceiling the
    replay's partial feedback is compared with."""
    router = new_router(replay, config)
    for vector, row in zip(replay.train_vectors, replay.data.train_scores, strict=True):
        router.seed(vector, dict(zip(replay.models, (float(s) for s in row), strict=True)))
    return score_test(replay, shared_view(router, replay), router.config.cost_weight)


def best_single_model(replay: ReplayData) -> tuple[str, float]:
    """The model with the highest AIQ on test (a flat curve: its accuracy)."""
    data = replay.data
    oracle = float(data.test_scores.max(axis=1).mean())
    results = [
        single_model_result(m, j, data.test_scores, data.cost, oracle)
        for j, m in enumerate(data.models)
    ]
    best = max(results, key=lambda r: (r.aiq, r.name))
    return best.name, best.aiq


# ---- the stream --------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    fraction: float
    queries: int
    shared: TestFigures  # what a user without feedback is routed by
    user: TestFigures | None  # the given user's own view, when one was asked for
    explored: float  # share of this tenth's decisions that explored
    stream_accuracy: float  # share of this tenth's routed answers that were good
    stream_cost_per_1k: float


@dataclass(frozen=True)
class StreamResult:
    points: list[CurvePoint]
    seconds: float
    route_ms: float  # mean time of one route() call


def replay_stream(
    router: EagleRouter,
    replay: ReplayData,
    user_of: Callable[[int], str],
    *,
    preference_fraction: float = DEFAULT_PREFERENCE_FRACTION,
    seed: int = SEED,
    view_user: str | None = None,
) -> StreamResult:
    """Route the train split in order as live traffic, query i from ``user_of(i)``, exploring;
    rate only the routed answer (+1 if its score >= 0.5, else -1) and, on
    ``preference_fraction`` of queries, prefer the better of it and a random second answer
    (skipped when they tie). Score test after every tenth."""
    if not 0.0 <= preference_fraction <= 1.0:
        raise ValueError("preference_fraction must lie in [0, 1]")
    data = replay.data
    candidates = replay.candidates()
    column = {m: j for j, m in enumerate(replay.models)}
    rng = np.random.default_rng(seed)
    n = len(data.train_questions)
    bounds = [round(n * (k + 1) / CHECKPOINTS) for k in range(CHECKPOINTS)]
    points: list[CurvePoint] = []
    started = time.perf_counter()
    routing = 0.0
    start = 0
    for stop in bounds:
        explored = good = 0
        spent = 0.0
        for i in range(start, stop):
            user = user_of(i)
            vector = replay.train_vectors[i]
            scores = data.train_scores[i]
            t = time.perf_counter()
            decision = router.route(
                _request(user, data.train_questions[i], explore=True), candidates
            )
            routing += time.perf_counter() - t
            chosen = column[decision.model]
            explored += bool(decision.details["explored"])
            good += scores[chosen] >= 0.5
            spent += float(data.cost[chosen])
            _feed(router, user, vector, model=decision.model, rating=_rating(scores[chosen]))
            # Both draws every query, so the stream's randomness does not depend on routing.
            wants_preference = rng.random() < preference_fraction
            other = int(rng.choice([j for j in range(len(replay.models)) if j != chosen]))
            if wants_preference and scores[chosen] != scores[other]:
                winner, loser = (
                    (chosen, other) if scores[chosen] > scores[other] else (other, chosen)
                )
                _feed(
                    router,
                    user,
                    vector,
                    model=replay.models[winner],
                    other_model=replay.models[loser],
                )
        size = max(1, stop - start)
        cost_weight = router.config.cost_weight
        points.append(
            CurvePoint(
                fraction=stop / n,
                queries=stop,
                shared=score_test(replay, shared_view(router, replay), cost_weight),
                user=None
                if view_user is None
                else score_test(replay, user_view(router, replay, view_user), cost_weight),
                explored=explored / size,
                stream_accuracy=good / size,
                stream_cost_per_1k=spent / size * 1000,
            )
        )
        start = stop
    return StreamResult(points, time.perf_counter() - started, routing / max(1, n) * 1000)


# ---- contextual routing ---------------------------------------------------------------


@dataclass(frozen=True)
class QuintileShares:
    strong_model: str
    hardest: float  # share of routes to the strong model on the hardest test fifth
    easiest: float


def quintile_shares(router: EagleRouter, replay: ReplayData, user_id: str) -> QuintileShares:
    """The strong model's share of ``user_id``'s routes (no exploration) on the hardest and
    the easiest fifth of test, by mean score over models."""
    data = replay.data
    strong = data.models[strong_weak_pair(data)[0]]
    order = np.argsort(data.test_scores.mean(axis=1), kind="stable")
    fifth = max(1, len(order) // 5)

    def share(rows: npt.NDArray[np.int64]) -> float:
        picked = [
            router.route(
                _request(user_id, data.test_questions[r], explore=False), replay.candidates()
            ).model
            for r in rows
        ]
        return sum(m == strong for m in picked) / len(picked)

    return QuintileShares(strong, share(order[:fifth]), share(order[-fifth:]))


# ---- an adversarial user, a lone user ----------------------------------------------------


def probe_decisions(router: EagleRouter, replay: ReplayData, count: int = PROBES) -> list[str]:
    """Decisions of ``count`` users who never gave feedback, one test query each."""
    candidates = replay.candidates()
    texts = replay.data.test_questions
    return [
        router.route(_request(f"probe-{k}", texts[k % len(texts)], explore=False), candidates).model
        for k in range(count)
    ]


@dataclass(frozen=True)
class AdversaryResult:
    target: str  # the model the adversary pushes
    victim: str  # the model it runs down
    votes: int
    probes: int
    changed: int  # probes decided differently after the votes
    to_target_before: int
    to_target_after: int
    shared_weight: float  # the adversary's total weight in the shared estimate


def adversarial_user(
    router: EagleRouter, replay: ReplayData, *, votes: int = ADVERSARY_VOTES, probes: int = PROBES
) -> AdversaryResult:
    """One new user gives ``votes`` contradicting votes for the cheapest model (the target)
    against the strongest (the victim), on the train queries where the truth is the
    opposite and that lie closest to the probes (the worst case for the probes): in turn a
    preference of the target's bad answer over the victim's good one, +1 on the target's
    bad answer, -1 on the victim's good one. Counts the probes decided differently."""
    data = replay.data
    strong, weak = strong_weak_pair(data)
    target, victim = data.models[weak], data.models[strong]
    before = probe_decisions(router, replay, probes)
    wrong = np.flatnonzero(
        (data.train_scores[:, strong] >= 0.5) & (data.train_scores[:, weak] < 0.5)
    )
    closeness = (replay.train_vectors[wrong] @ replay.test_vectors.T).max(axis=1)
    chosen = wrong[np.argsort(-closeness, kind="stable")]
    adversary = "adversary"
    for k in range(votes):
        vector = replay.train_vectors[chosen[k % len(chosen)]]
        if k % 3 == 0:
            _feed(router, adversary, vector, model=target, other_model=victim)
        elif k % 3 == 1:
            _feed(router, adversary, vector, model=target, rating=1)
        else:
            _feed(router, adversary, vector, model=victim, rating=-1)
    after = probe_decisions(router, replay, probes)
    return AdversaryResult(
        target=target,
        victim=victim,
        votes=votes,
        probes=probes,
        changed=sum(a != b for a, b in zip(before, after, strict=True)),
        to_target_before=before.count(target),
        to_target_after=after.count(target),
        shared_weight=router.estimator.influence.shared_weight(adversary),
    )


@dataclass(frozen=True)
class LoneResult:
    mode: str  # which model the user prefers: "runner-up" or "worst" at the anchor
    anchors: int
    votes_needed: list[int | None]  # per anchor; None: no change within LONE_MAX_VOTES
    others_changed: int  # anchors where a user without feedback is then routed differently

    @property
    def within_aim(self) -> int:
        return sum(v is not None and v <= LONE_AIM for v in self.votes_needed)


def lone_preference(
    router: EagleRouter, replay: ReplayData, mode: str, *, anchors: int = LONE_ANCHORS
) -> LoneResult:
    """At each anchor test query, a new user prefers model X over the model Y they are
    routed to, voting on the train queries nearest the anchor (nearest first); after how
    many votes is the user's own route at the anchor X? ``mode`` picks X: the runner-up
    (second highest utility) or the worst (lowest P(good)) at the anchor. Each anchor runs
    on its own copy of ``router``."""
    if mode not in ("runner-up", "worst"):
        raise ValueError("mode is 'runner-up' or 'worst'")
    data = replay.data
    candidates = replay.candidates()
    rows = np.linspace(0, len(data.test_questions) - 1, anchors).round().astype(int)
    needed: list[int | None] = []
    others_changed = 0
    for a, row in enumerate(rows):
        text = data.test_questions[row]
        copy = clone(router)
        user = f"lone-{mode}-{a}"
        first = copy.route(_request(user, text, explore=False), candidates)
        utilities = first.scores
        y = first.model
        if mode == "runner-up":
            x = max((m for m in utilities if m != y), key=lambda m: (utilities[m], m))
        else:
            quality = first.details["candidates"]
            x = min((m for m in quality if m != y), key=lambda m: (quality[m]["quality"], m))
        other_before = copy.route(_request("bystander", text, explore=False), candidates).model
        nearest = np.argsort(-(replay.train_vectors @ replay.test_vectors[row]), kind="stable")
        found: int | None = None
        for vote in range(1, LONE_MAX_VOTES + 1):
            _feed(copy, user, replay.train_vectors[nearest[vote - 1]], model=x, other_model=y)
            if copy.route(_request(user, text, explore=False), candidates).model == x:
                found = vote
                break
        needed.append(found)
        other_after = copy.route(_request("bystander", text, explore=False), candidates).model
        others_changed += other_after != other_before
    return LoneResult(mode, len(rows), needed, others_changed)


# ---- experts -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertResult:
    queries: int  # test queries whose two best bases are within EXPERT_TIE
    decisions: int  # one per query and base of the two (the expert on each in turn)
    to_expert_exploring: float  # share routed to the expert's base, exploration on
    to_expert_strict: float  # the same without exploration


def expert_share(router: EagleRouter, replay: ReplayData) -> ExpertResult:
    """A user with a significant specialist on base M, on the test queries where the two
    bases with the highest P(good) are within ``EXPERT_TIE`` and M is one of them."""
    candidates = replay.candidates()
    queries = 0
    hits = {True: 0, False: 0}
    decisions = 0
    for k, text in enumerate(replay.data.test_questions):
        user = f"expert-{k}"
        plain = router.route(_request(user, text, explore=False), candidates)
        quality = {m: float(v["quality"]) for m, v in plain.details["candidates"].items()}
        first, second = sorted(quality, key=lambda m: (-quality[m], m))[:2]
        if quality[first] - quality[second] > EXPERT_TIE:
            continue
        queries += 1
        for base in (first, second):
            experts = (ExpertEvidence(model=base, specialist_version_id="v", significant=True),)
            decisions += 1
            for explore in (True, False):
                decision = router.route(
                    _request(user, text, explore=explore, experts=experts), candidates
                )
                hits[explore] += decision.model == base
    share = 1.0 / decisions if decisions else float("nan")
    return ExpertResult(queries, decisions, hits[True] * share, hits[False] * share)


# ---- the whole evaluation ----------------------------------------------------------------


@dataclass(frozen=True)
class SharedScenario:
    name: str
    stream: StreamResult
    adversary: AdversaryResult
    lone: list[LoneResult]
    experts: ExpertResult


@dataclass(frozen=True)
class OnlineReport:
    preference_fraction: float
    offline: TestFigures
    best_single: tuple[str, float]
    shared: list[SharedScenario]
    solo: StreamResult
    solo_quintiles: QuintileShares
    fresh_quintiles: QuintileShares  # a user without feedback, after the solo stream
    seconds: float


def run_shared_scenario(
    replay: ReplayData,
    name: str,
    user_of: Callable[[int], str],
    *,
    preference_fraction: float,
    config: RouterConfig | None = None,
) -> SharedScenario:
    router = new_router(replay, config)
    stream = replay_stream(router, replay, user_of, preference_fraction=preference_fraction)
    return SharedScenario(
        name=name,
        stream=stream,
        experts=expert_share(router, replay),
        adversary=adversarial_user(clone(router), replay),
        lone=[lone_preference(router, replay, mode) for mode in ("runner-up", "worst")],
    )


def run_online_eval(
    replay: ReplayData,
    *,
    preference_fraction: float = DEFAULT_PREFERENCE_FRACTION,
    config: RouterConfig | None = None,
    output: Callable[[str], None] = print,
) -> OnlineReport:
    started = time.perf_counter()
    shared = [
        run_shared_scenario(
            replay,
            f"{USERS_SHARING} users (user = i % {USERS_SHARING})",
            lambda i: f"user-{i % USERS_SHARING}",
            preference_fraction=preference_fraction,
            config=config,
        ),
        run_shared_scenario(
            replay,
            "a new user per query (user = i)",
            lambda i: f"user-{i}",
            preference_fraction=preference_fraction,
            config=config,
        ),
    ]
    solo_router = new_router(replay, config)
    solo = replay_stream(
        solo_router,
        replay,
        lambda i: "solo",
        preference_fraction=preference_fraction,
        view_user="solo",
    )
    report = OnlineReport(
        preference_fraction=preference_fraction,
        offline=offline_full_information(replay, config),
        best_single=best_single_model(replay),
        shared=shared,
        solo=solo,
        solo_quintiles=quintile_shares(solo_router, replay, "solo"),
        fresh_quintiles=quintile_shares(solo_router, replay, "fresh"),
        seconds=time.perf_counter() - started,
    )
    for line in format_report(report, replay):
        output(line)
    return report


# ---- the report -------------------------------------------------------------------------


def _f(value: float) -> str:
    return f"{value:.3f}"


def _curve_lines(stream: StreamResult, *, with_user: bool) -> list[str]:
    head = "  stream  queries  AIQ    acc@0  acc@l  $/1k@l  explored  live acc  live $/1k"
    if with_user:
        head += "  | own AIQ  own acc@l  own $/1k@l"
    lines = [head]
    for p in stream.points:
        line = (
            f"  {p.fraction:5.0%}  {p.queries:7d}  {_f(p.shared.aiq)}  {_f(p.shared.accuracy)}  "
            f"{_f(p.shared.served_accuracy)}  {p.shared.served_cost_per_1k:6.3f}  "
            f"{p.explored:8.1%}  {_f(p.stream_accuracy):>8}  {p.stream_cost_per_1k:9.3f}"
        )
        if with_user and p.user is not None:
            line += (
                f"  | {_f(p.user.aiq):>7}  {_f(p.user.served_accuracy):>9}  "
                f"{p.user.served_cost_per_1k:10.3f}"
            )
        lines.append(line)
    lines.append(f"  {stream.seconds:.1f} s, route() {stream.route_ms:.2f} ms a call")
    return lines


def _first_above(stream: StreamResult, level: float) -> str:
    for p in stream.points:
        if p.shared.aiq > level:
            return f"{p.fraction:.0%}"
    return "never"


def format_report(report: OnlineReport, replay: ReplayData) -> list[str]:
    data = replay.data
    best_name, best_aiq = report.best_single
    offline = report.offline
    lines = [
        f"online replay: {len(data.train_questions)} train queries as a stream, "
        f"{len(data.test_questions)} test, {len(data.models)} models, preference fraction "
        f"{report.preference_fraction:g}",
        "AIQ: lambda sweep as offline; acc@0: accuracy at lambda 0; acc@l / $/1k@l: at the "
        "router's cost weight; live: the stream's routed answers in that tenth",
        f"offline full information (every train score seeded): AIQ {_f(offline.aiq)}, "
        f"acc@0 {_f(offline.accuracy)}, acc@l {_f(offline.served_accuracy)}, "
        f"$/1k@l {offline.served_cost_per_1k:.3f}",
        f"best single model on test: {best_name}, AIQ {_f(best_aiq)}",
    ]
    for number, scenario in enumerate(report.shared, start=1):
        final = scenario.stream.points[-1].shared.aiq
        lines += [
            "",
            f"1{'ab'[number - 1]}. many users sharing one stream: {scenario.name}",
            *_curve_lines(scenario.stream, with_user=False),
            f"  final AIQ {_f(final)} vs offline {_f(offline.aiq)}: gap {final - offline.aiq:+.3f} "
            f"(aim within 0.02); first above the best single model at "
            f"{_first_above(scenario.stream, best_aiq)} (aim 20%)",
        ]
    solo_final = report.solo.points[-1]
    q, fresh = report.solo_quintiles, report.fresh_quintiles
    lines += [
        "",
        "2. one user giving all the feedback (own: that user's routing, feedback included)",
        *_curve_lines(report.solo, with_user=True),
        f"  final shared AIQ {_f(solo_final.shared.aiq)}, own AIQ "
        f"{_f(solo_final.user.aiq if solo_final.user else float('nan'))}",
        f"  strong model ({q.strong_model}) share of routes, hardest / easiest test fifth: "
        f"the user {q.hardest:.0%} / {q.easiest:.0%}; a user without feedback "
        f"{fresh.hardest:.0%} / {fresh.easiest:.0%}",
    ]
    for number, scenario in enumerate(report.shared, start=1):
        adv = scenario.adversary
        lines += [
            "",
            f"3{'ab'[number - 1]}. adversarial and lone users, after stream 1{'ab'[number - 1]}",
            f"  adversary: {adv.votes} votes for {adv.target} against {adv.victim}; "
            f"{adv.changed} of {adv.probes} other users' decisions changed (aim 0); "
            f"to {adv.target} {adv.to_target_before} -> {adv.to_target_after}; "
            f"the adversary's weight in the shared estimate {adv.shared_weight:.2f}",
            "  lone user preferring X over their routed model Y near an anchor query:",
            "  X          anchors  changed within 20  votes needed (per anchor, - = >40)  "
            "bystanders changed",
        ]
        for lone in scenario.lone:
            votes = " ".join("-" if v is None else str(v) for v in lone.votes_needed)
            lines.append(
                f"  {lone.mode:<9}  {lone.anchors:7d}  {lone.within_aim:17d}  {votes:<34}  "
                f"{lone.others_changed:18d}"
            )
        ex = scenario.experts
        lines += [
            f"4{'ab'[number - 1]}. experts, after stream 1{'ab'[number - 1]}: {ex.queries} test "
            f"queries with the two best bases within {EXPERT_TIE}; {ex.decisions} decisions "
            f"(a significant specialist on each of the two in turn): routed to the expert's "
            f"base {ex.to_expert_exploring:.1%} exploring, {ex.to_expert_strict:.1%} without "
            f"(aim >= 95%)",
        ]
    lines.append(f"\ntotal {report.seconds:.0f} s")
    return lines


def replay_data(
    data: RoutingData, train_vectors: FloatMatrix, test_vectors: FloatMatrix, name: str
) -> ReplayData:
    """The replay's view of a data set with its (normalised) vectors."""
    return ReplayData(data, normalise_rows(train_vectors), normalise_rows(test_vectors), name)
