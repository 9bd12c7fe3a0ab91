"""A content-addressed store for adapter weights: a blob's name is its sha256.

Every read re-hashes the bytes, so a file damaged on disk (or edited by
hand) is refused instead of being loaded into a model.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from storage.errors import BlobCorrupted, BlobNotFound

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        # Also what keeps a crafted name from escaping the store directory.
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class DirectoryBlobStore:
    """Blobs as files under ``root/ab/abcdef...`` (two-level fan-out)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, sha256: str) -> Path:
        name = _check_name(sha256)
        return self.root / name[:2] / name

    def put(self, data: bytes) -> str:
        """Store bytes and return their sha256; storing the same bytes again is free."""
        digest = sha256_of(data)
        path = self._path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside, flush to disk, then rename: readers never see a torn
        # file, and a crash leaves at worst a stray temporary file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, verified against its name."""
        path = self._path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None
        actual = sha256_of(data)
        if actual != sha256:
            raise BlobCorrupted(
                f"blob {sha256} is corrupted on disk (its content hashes to {actual})"
            )
        return data

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {sha256} not found") from None

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)
