from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage.blobs import DirectoryBlobStore
from storage.errors import BlobCorrupted, BlobNotFound, NotFound


def test_put_returns_the_sha256_and_get_returns_the_bytes(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    data = b"\x00lora weights\xff" * 1000
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get(digest) == data
    assert store.exists(digest)
    assert store.size(digest) == len(data)
    assert store.put(data) == digest  # idempotent


def test_a_corrupted_blob_is_refused(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"original")
    path = tmp_path / digest[:2] / digest
    path.write_bytes(b"tampered")
    with pytest.raises(BlobCorrupted):
        store.get(digest)


def test_a_missing_blob_is_not_found(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(BlobNotFound):
        store.get(missing)
    with pytest.raises(NotFound):  # one tree: callers may catch the general kind
        store.size(missing)
    assert not store.exists(missing)


@pytest.mark.parametrize("name", ["../../etc/passwd", "ABC", "g" * 64, ""])
def test_names_that_are_not_sha256_are_refused(tmp_path: Path, name: str) -> None:
    store = DirectoryBlobStore(tmp_path)
    with pytest.raises(ValueError):
        store.get(name)


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"x" * 10)
    assert [p.name for p in (tmp_path / digest[:2]).iterdir()] == [digest]


def test_delete_removes_the_blob(tmp_path: Path) -> None:
    store = DirectoryBlobStore(tmp_path)
    digest = store.put(b"gone soon")
    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)  # deleting twice is fine
