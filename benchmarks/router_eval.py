"""Router figures on dcrouter: the served estimate, Eagle, the old quality model, k-NN, random,
each model, the oracle, and the served estimate's reliability diagram.

    python -m benchmarks.router_eval [--data DIR] [--calibration-out PATH]

The first run embeds the 6,108 questions one by one with the service's query
embedder (MiniLM int8 ONNX from the model store, TAILOR_MODEL_STORE or
var/models; about half a minute) and caches them under var/cache/embeddings;
later runs take about two minutes on two cores, most of it choosing the served
estimate's settings on validation.

The served estimate's reliability on test at the served lambda is written as JSON to
``--calibration-out``, by default where the admin dashboard's Router page reads it
(``<TAILOR_DATA_DIR>/router/calibration-offline.json``, var/router/ unless set).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from router.offline_eval import run_offline_eval
from router.offline_eval_report import calibration_record
from router.query_embedder import OnnxQueryEmbedder, use_one_blas_thread
from serving.settings import load_settings
from tests.datasets import DCROUTER

DEFAULT_DATA = DCROUTER
# Under the data dir, as serving/routes/admin_router.py reads it.
CALIBRATION_FILE = Path("router") / "calibration-offline.json"


def main() -> None:
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--calibration-out",
        type=Path,
        default=settings.storage.data_dir / CALIBRATION_FILE,
        help="where to write the served estimate's reliability on test (JSON)",
    )
    args = parser.parse_args()
    use_one_blas_thread()  # as the service does
    report = run_offline_eval(args.data, OnnxQueryEmbedder.load(settings.storage.model_store_dir))
    args.calibration_out.parent.mkdir(parents=True, exist_ok=True)
    args.calibration_out.write_text(json.dumps(calibration_record(report), indent=2) + "\n")
    print(f"calibration written to {args.calibration_out}")


if __name__ == "__main__":
    main()
