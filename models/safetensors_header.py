"""The one reader of safetensors headers, for untrusted uploads and our own files alike.

A safetensors file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON
(tensor name -> dtype, shape, data offsets, plus an optional ``__metadata__`` object of
strings), then the data region. Adapter validation (``adapters.validation``, uploads from
anyone) and the model store (counting a converted model's parameters) both read headers
here; it lives in ``models``, the layer of model files, which the model store is part of
and ``adapters`` sits above, so that both may import it.

Invariants, whoever calls:

- nothing is ever unpickled: a ``torch.save`` zip or a raw pickle is recognised from its
  first bytes and refused with a message saying so;
- the header length is checked before a header byte is read or allocated: at least 2,
  at most ``MAX_HEADER_BYTES`` (the format's own 100 MB cap) and at most what follows the
  length, and the header must start with ``{``;
- the header must be UTF-8 JSON whose top level is an object, with no duplicate keys (a
  repeated tensor name would let the last entry hide the first), no NaN/Infinity, and
  deep nesting refused rather than crashing the parser;
- no tensor value is read: what the entries claim is the caller's to check.

Every refusal is ``NotSafetensors`` (a ``ValueError``), whose message names the file by
the caller's label.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The 8-byte header length, then the header.
LENGTH_BYTES = 8
# The safetensors format caps its own header at 100 MB.
MAX_HEADER_BYTES = 100_000_000

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
_DEFAULT_ADVICE = "write it with the safetensors library"


class NotSafetensors(ValueError):
    """The bytes are not a well-formed safetensors header; the message says why."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed header: its JSON object as found (``__metadata__`` included) and length."""

    entries: dict[str, Any]
    length: int

    @property
    def data_start(self) -> int:
        """The offset of the data region in the file."""
        return LENGTH_BYTES + self.length


def parse_header(data: bytes, *, label: str, advice: str = _DEFAULT_ADVICE) -> SafetensorsHeader:
    """The header of the safetensors file held in ``data``.

    ``label`` names the file in messages; ``advice`` ends the message for a pickle.
    """
    length = _header_length(data[: LENGTH_BYTES + 1], len(data), label, advice)
    raw = data[LENGTH_BYTES : LENGTH_BYTES + length]
    return SafetensorsHeader(_parse_json(label, raw), length)


def read_header(
    path: Path, *, label: str | None = None, advice: str = _DEFAULT_ADVICE
) -> SafetensorsHeader:
    """The header of the safetensors file at ``path``; reads the header bytes only."""
    name = path.name if label is None else label
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        length = _header_length(file.read(LENGTH_BYTES + 1), size, name, advice)
        file.seek(LENGTH_BYTES)
        raw = file.read(length)
    if len(raw) != length:
        raise NotSafetensors(f"{name} is truncated: it shrank while its header was read")
    return SafetensorsHeader(_parse_json(name, raw), length)


def _header_length(first: bytes, size: int, label: str, advice: str) -> int:
    """The header length from the file's first 9 bytes (``first``) and its ``size``."""
    if size < LENGTH_BYTES:
        raise NotSafetensors(
            f"{label} is truncated or empty: {size} bytes, too short for a safetensors header"
        )
    length = int.from_bytes(first[:LENGTH_BYTES], "little")
    sane = (
        2 <= length <= min(size - LENGTH_BYTES, MAX_HEADER_BYTES)
        and first[LENGTH_BYTES : LENGTH_BYTES + 1] == b"{"
    )
    if not sane:
        # Only the message depends on which kind of non-safetensors file it is;
        # a legitimate header length can start with the pickle bytes, so these
        # tests come after the sanity test, not before.
        raise NotSafetensors(_not_safetensors(label, first, size, length, advice))
    return length


def _not_safetensors(label: str, first: bytes, size: int, length: int, advice: str) -> str:
    if first.startswith(_ZIP_MAGIC):
        return (
            f"{label} is a zip archive (a torch.save checkpoint, which holds a pickle); "
            f"pickle files are not accepted: {advice}"
        )
    if first[0] == _PICKLE_PROTO and 2 <= first[1] <= 5:
        return f"{label} is a Python pickle; pickle files are not accepted: {advice}"
    if length > size - LENGTH_BYTES:
        return (
            f"{label} is truncated or not a safetensors file: its first 8 bytes give a header "
            f"length of {length} bytes, but only {size - LENGTH_BYTES} bytes follow"
        )
    if length > MAX_HEADER_BYTES:
        return f"{label} is not a safetensors file: header length {length} is over 100 MB"
    return f"{label} is not a safetensors file: no JSON header object after the 8-byte length"


def _parse_json(label: str, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotSafetensors(f"{label}: safetensors header is not valid UTF-8 ({error})") from None
    # Deep nesting raises RecursionError, not ValueError.
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise NotSafetensors(f"{label}: safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise NotSafetensors(f"{label}: safetensors header is not a JSON object")
    return header


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated tensor name would let the last entry silently hide the first.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
