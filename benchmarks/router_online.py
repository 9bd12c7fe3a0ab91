"""dcrouter replayed as live traffic with partial feedback (issue 16, item 5).

    python -m benchmarks.router_online [--data DIR] [--preference-fraction F]

The same figures as ``tailor router eval --online --data DIR``: the train split routed in
order by the live router with exploration on, only the routed answer rated (and on a
fraction F of queries a preference against a random second answer), test scored after every
tenth beside the offline full-information router; then one user giving all the feedback, an
adversarial user, a lone user's preference and a user's specialist
(router/online_replay.py). Query vectors come from the service's embedder through the same
cache as benchmarks/router_eval.py (the first run embeds, later runs read the cache); about
a minute on two cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.embeddings import embed_texts
from router.online_replay import DEFAULT_PREFERENCE_FRACTION, replay_data, run_online_eval
from router.query_embedder import OnnxQueryEmbedder, use_one_blas_thread
from router.routing_data import load_routing_data
from serving.settings import load_settings
from tests.datasets import DCROUTER, require


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DCROUTER)
    parser.add_argument(
        "--preference-fraction",
        type=float,
        default=DEFAULT_PREFERENCE_FRACTION,
        help="share of queries that also get a preference against a second answer",
    )
    args = parser.parse_args()
    use_one_blas_thread()  # as the service does
    embedder = OnnxQueryEmbedder.load(load_settings().storage.model_store_dir)
    data = load_routing_data(require(args.data))
    replay = replay_data(
        data,
        embed_texts(data.train_questions, embedder),
        embed_texts(data.test_questions, embedder),
        embedder.name,
    )
    run_online_eval(replay, preference_fraction=args.preference_fraction)


if __name__ == "__main__":
    main()
