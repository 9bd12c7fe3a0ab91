"""Where the evaluation data sets live inside this repository (``data/``).

Tests and benchmarks name them through here, so that a missing or moved file
fails with its path instead of being skipped (see data/README.md for their
sources and licences).
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# Per-query correctness of 9 LLMs and their prices (LLMRouter's dcrouter, MIT).
DCROUTER = DATA_DIR / "routing" / "dcrouter"

# Articles by 10 Reuters journalists, one user each (UCI Reuter_50_50, CC BY 4.0).
REUTERS_C50 = DATA_DIR / "personal" / "reuters_c50"


def require(path: Path) -> Path:
    """The path itself, or FileNotFoundError naming it: data is never optional."""
    if not path.exists():
        raise FileNotFoundError(f"evaluation data missing: {path} (see data/README.md)")
    return path
