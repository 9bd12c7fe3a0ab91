"""The packages only filling the model store needs: Tailor's ``prepare`` extra.

A server whose store is already prepared (an image built with its models, a
cluster sharing one volume) runs without them, so they are not requirements of
``tailor`` itself; a preparation without them fails with the command to fix it.
"""

from __future__ import annotations

from importlib.util import find_spec

from models.errors import ModelStoreError


def require_prepare_extra(item: str, modules: tuple[str, ...]) -> None:
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        raise ModelStoreError(
            f"{item}: preparing it needs {', '.join(missing)}: pip install 'tailor[prepare]'"
        )
