"""A routing data set in dcrouter's format, and the validation split of its train part.

dcrouter: train.json / test.json with per-model ``scores`` in [0, 1] (almost all 0 or
1, a few partial credits) and llm_candidates.json with prices. Records may carry a
``cluster_id``: it is never read, since the live service has nothing like it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.quality_cost import FloatArray, IntArray

# dcrouter records no token counts, so every call is costed at the same expected
# size and a model's cost per query is proportional to its price.
EXPECTED_INPUT_TOKENS = 256
EXPECTED_OUTPUT_TOKENS = 256
VALIDATION_FRACTION = 0.2
SEED = 0


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


def validation_split(n: int) -> tuple[IntArray, IntArray]:
    """Seeded (fit rows, validation rows) of n train queries, each sorted so that the
    fit keeps the recorded order; every router's settings are chosen on the same split."""
    perm = np.random.default_rng(SEED).permutation(n)
    cut = n - max(1, int(n * VALIDATION_FRACTION))
    fit_rows: IntArray = np.sort(perm[:cut]).astype(np.int64)
    val_rows: IntArray = np.sort(perm[cut:]).astype(np.int64)
    return fit_rows, val_rows
