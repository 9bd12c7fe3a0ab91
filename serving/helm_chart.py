"""Writes the Helm chart's copy of the fixed part of the Ray Serve config.

The chart (``helm/tailor``) cannot run Python when it is installed, so it
embeds ``files/serve-config.yaml``: ``serving.ray_serve.fixed_serve_config()``
as YAML. Its templates add what ``serve_config`` adds (the port, the
environment, a deployment per base model) from the chart's values.

    python -m serving.helm_chart           # write the file after changing ray_serve
    python -m serving.helm_chart --check   # exit 1 if the committed copy is stale

``tests/test_helm_chart.py`` runs the check, and also renders the chart and
compares its ``serveConfigV2`` with ``serve_config`` for the same settings,
so neither side can drift from the other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from serving.ray_serve import fixed_serve_config

CHART_DIR = Path(__file__).resolve().parent.parent / "helm" / "tailor"
SERVE_CONFIG_FILE = CHART_DIR / "files" / "serve-config.yaml"

_HEADER = """\
# Written by `python -m serving.helm_chart` from serving/ray_serve.py
# (fixed_serve_config); do not edit. templates/_helpers.tpl (tailor.serveConfig) adds the port,
# the environment and one deployment per base model, as serve_config does.
"""


def chart_serve_config_text() -> str:
    """What ``files/serve-config.yaml`` must hold for the code as it is now."""
    body: str = yaml.safe_dump(fixed_serve_config(), sort_keys=False)
    return _HEADER + body


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    expected = chart_serve_config_text()
    if args == ["--check"]:
        current = SERVE_CONFIG_FILE.read_text() if SERVE_CONFIG_FILE.is_file() else ""
        if current != expected:
            print(
                f"{SERVE_CONFIG_FILE} is stale: run `python -m serving.helm_chart`",
                file=sys.stderr,
            )
            return 1
        return 0
    if args:
        print("usage: python -m serving.helm_chart [--check]", file=sys.stderr)
        return 2
    SERVE_CONFIG_FILE.parent.mkdir(parents=True, exist_ok=True)
    SERVE_CONFIG_FILE.write_text(expected)
    print(f"wrote {SERVE_CONFIG_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
