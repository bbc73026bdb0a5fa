"""Uploaded files, kept where every process that indexes or shows them can read them (RAG_STORAGE_URL).

A file is stored once under its key, `<sha256 of its bytes><extension>`; files derived from it (the OCR word
boxes of a scanned PDF) are kept beside it as `<key>.<suffix>`. Where they live:

- empty (the default): `RAG_DATA_DIR/uploads`, private to the user running the app;
- a path: any folder, e.g. a volume every app and worker container mounts (NFS, a compose volume);
- `s3://bucket/prefix`: an S3-compatible object store through fsspec's s3fs, with the credentials and endpoint
  of the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_ENDPOINT_URL` variables. Readers need a
  local file, so a process reading a stored file keeps a copy in `RAG_DATA_DIR/cache/uploads` (the key names
  its bytes: a cached copy is never stale).

Writing is two steps so that a file appears under its key only together with what refers to it: `stage`
writes the bytes under a temporary name while hashing them, and `publish` moves them under their key, which
callers do inside the database transaction that records the job (see `rag.jobs`). Blocking: call from threads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from rag.config import Settings, private_dir
from rag.errors import ConfigError

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Staged:
    """Bytes written under a temporary name, not yet under their key."""

    temp: str
    key: str
    content_hash: str
    size: int


def storage_key(content_hash: str, name: str) -> str:
    """The key of a file's bytes: their SHA-256 and the file name's extension (as `rag.readers` reads it)."""
    return f"{content_hash}{Path(name).suffix.lower()[:16]}"


class Storage:
    """The stored uploads of one RAG_STORAGE_URL: a local folder, or an fsspec filesystem (S3)."""

    def __init__(self, settings: Settings) -> None:
        url = settings.storage_url
        self.url = url or str(Path(settings.data_dir) / "uploads")
        self._cache = Path(settings.data_dir) / "cache" / "uploads"
        self.remote = url.startswith("s3://")
        self._fs: Any = None
        if self.remote:
            try:
                import s3fs  # noqa: F401 - registers the s3 protocol with fsspec
                from fsspec import filesystem
            except ImportError as exc:
                raise ConfigError(
                    "s3fs is not installed",
                    user_message="RAG_STORAGE_URL names S3, which needs the s3fs package (pip install s3fs).",
                ) from exc
            self._fs = filesystem("s3")
            self.root = url.removeprefix("s3://").rstrip("/")
        else:
            folder = Path(url.removeprefix("file://")) if url else Path(settings.data_dir) / "uploads"
            self.root = str(folder)
            self._folder = folder

    def describe(self) -> str:
        """Where files are kept, for people."""
        return self.url

    # -- writing ----------------------------------------------------------------------------------
    def stage(self, data: BinaryIO, name: str) -> Staged:
        """Write a stream under a temporary name while hashing it (one pass, one copy)."""
        token = f".staging.{os.getpid()}.{os.urandom(6).hex()}.tmp"
        digest = hashlib.sha256()
        size = 0
        if self.remote:
            temp = f"{self.root}/{token}"
            with self._fs.open(temp, "wb") as out:
                for block in iter(lambda: data.read(_BLOCK), b""):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
        else:
            private_dir(self._folder)
            temp = str(self._folder / token)
            try:
                with open(temp, "wb") as out:
                    for block in iter(lambda: data.read(_BLOCK), b""):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        content_hash = digest.hexdigest()
        return Staged(temp, storage_key(content_hash, name), content_hash, size)

    def publish(self, staged: Staged) -> None:
        """Move staged bytes under their key (the same bytes already there: the temporary copy goes)."""
        if self.remote:
            target = f"{self.root}/{staged.key}"
            if self._fs.exists(target):
                self._fs.rm(staged.temp)
            else:
                self._fs.mv(staged.temp, target)
            return
        target = self._folder / staged.key
        if target.exists():
            Path(staged.temp).unlink(missing_ok=True)
        else:
            os.replace(staged.temp, target)

    def discard(self, staged: Staged) -> None:
        """Forget staged bytes that will not be published."""
        try:
            if self.remote:
                self._fs.rm(staged.temp)
            else:
                Path(staged.temp).unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def save_derived(self, key: str, local: Path) -> None:
        """Keep a file made beside a stored file's local copy (`<key>.<suffix>`) in the store too."""
        if self.remote:
            self._fs.put(str(local), f"{self.root}/{local.name}")

    # -- reading ----------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        """Whether the bytes of a key are stored."""
        if _is_path(key):
            return Path(key).exists()
        if self.remote:
            return bool(self._fs.exists(f"{self.root}/{key}"))
        return (self._folder / key).exists()

    def local_path(self, key: str) -> Path:
        """A local file with the bytes of a key (and its derived files): the stored file itself, or a cached copy
        of a remote one. FileNotFoundError when the key is not stored."""
        if _is_path(key):  # a row from before keys: an absolute path
            return Path(key)
        if not self.remote:
            return self._folder / key
        local = self._cache / key
        if not local.exists():
            private_dir(self._cache)
            partial = local.with_name(f".{local.name}.{os.getpid()}.{os.urandom(4).hex()}.part")
            try:
                self._fs.get(f"{self.root}/{key}", str(partial))
                os.replace(partial, local)
            finally:
                partial.unlink(missing_ok=True)
        for derived in self._fs.glob(f"{self.root}/{_glob_escape(key)}.*"):
            copy = self._cache / derived.rsplit("/", 1)[-1]
            if not copy.exists():
                self._fs.get(derived, str(copy))
        return local

    def read_bytes(self, key: str) -> bytes:
        """The stored bytes of a key."""
        return self.local_path(key).read_bytes()

    def list_keys(self) -> list[str]:
        """Every stored key (derived files and staging leftovers not included)."""
        if self.remote:
            names = (
                [p.rsplit("/", 1)[-1] for p in self._fs.ls(self.root, detail=False)]
                if self._fs.exists(self.root)
                else []
            )
        else:
            names = [p.name for p in self._folder.iterdir()] if self._folder.exists() else []
        return sorted(n for n in names if _is_key(n))

    # -- removing ---------------------------------------------------------------------------------
    def remove(self, key: str) -> None:
        """Remove the bytes of a key and every file derived from them (and a cached copy)."""
        if _is_path(key):
            path = Path(key)
            path.unlink(missing_ok=True)
            for derived in path.parent.glob(f"{_glob_escape(path.name)}.*"):
                derived.unlink(missing_ok=True)
            return
        if self.remote:
            for path in [f"{self.root}/{key}", *self._fs.glob(f"{self.root}/{_glob_escape(key)}.*")]:
                try:
                    self._fs.rm(path)
                except FileNotFoundError:
                    pass
            if self._cache.exists():
                for cached in [self._cache / key, *self._cache.glob(f"{_glob_escape(key)}.*")]:
                    cached.unlink(missing_ok=True)
            return
        (self._folder / key).unlink(missing_ok=True)
        for derived in self._folder.glob(f"{_glob_escape(key)}.*"):
            derived.unlink(missing_ok=True)

    def clear_cache(self) -> None:
        """Drop local copies of remote files (they are fetched again when needed)."""
        shutil.rmtree(self._cache, ignore_errors=True)


def _is_path(key: str) -> bool:
    return os.path.isabs(key)


def _is_key(name: str) -> bool:
    stem = name.split(".", 1)[0]
    return len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) and name.count(".") <= 1


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
