"""Identifiers of stored objects.

Public ids are random and prefixed by kind (``usr_``, ``key_``, ...): they
say what they name when they show up in a log, and they reveal neither how
many objects exist nor anything guessable about another user's objects.
"""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """A fresh id such as ``usr_5kq2m9x0c7v3b8n1``; 80 random bits."""
    return f"{prefix}_{secrets.token_hex(10)}"
