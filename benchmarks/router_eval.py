"""Router figures on dcrouter: Eagle, the quality model, k-NN, random, each model, the oracle.

    python -m benchmarks.router_eval [--data DIR]

The first run embeds the 6,108 questions with MiniLM (a few minutes on two
cores) and caches them under var/cache/embeddings; later runs take ~15 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.offline_eval import run_offline_eval

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routing" / "dcrouter"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    run_offline_eval(args.data)


if __name__ == "__main__":
    main()
