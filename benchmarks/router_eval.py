"""Router figures on dcrouter: Eagle, the quality model, k-NN, random, each model, the oracle.

    python -m benchmarks.router_eval [--data DIR]

The first run embeds the 6,108 questions one by one with the service's query
embedder (MiniLM int8 ONNX from the model store, TAILOR_MODEL_STORE or
var/models; about half a minute) and caches them under var/cache/embeddings;
later runs take ~15 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from router.offline_eval import run_offline_eval
from router.query_embedder import OnnxQueryEmbedder, use_one_blas_thread
from storage.settings import load_settings
from tests.datasets import DCROUTER

DEFAULT_DATA = DCROUTER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    use_one_blas_thread()  # as the service does
    run_offline_eval(args.data, OnnxQueryEmbedder.load(load_settings().model_store_dir))


if __name__ == "__main__":
    main()
