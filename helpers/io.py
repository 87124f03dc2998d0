"""Files written whole or not at all, and the checksums that say a file is the one we expect.

Every writer in the course goes through here, so an interrupted run never leaves half a file
or half a folder that a later command would take for finished.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


class ChecksumError(ValueError):
    """A file differs from the one the course was built and measured with."""


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of a folder: its files' relative paths and contents, in order."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            digest.update(bytes.fromhex(sha256_of(file)))
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def writing(path: str | Path, mode: str = "w"):
    """Yield a temporary file beside `path`, open for writing; when the block ends without an
    error the file replaces `path`, otherwise it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    with writing(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | Path, value) -> Path:
    return write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False))


def read_json(path: str | Path, default=None):
    """The JSON in `path`, `default` when there is no such file; a broken file names itself."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it or restore it") from None


def scratch_for(target: str | Path, *, clear: bool = True) -> Path:
    """The folder beside `target` (`TARGET.partial`) to build its next version in; emptied
    first unless `clear` is False (other processes of a distributed run only write into it)."""
    target = Path(target)
    scratch = target.with_name(target.name + ".partial")
    if clear:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    return scratch


def _previous(target: Path) -> Path:
    return target.with_name(target.name + ".old")


def swap_in(scratch: Path, target: str | Path) -> None:
    """Replace `target` by the finished `scratch` folder. Until the last rename the previous
    version survives as `TARGET.old` (see `latest_complete`)."""
    target = Path(target)
    old = _previous(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    scratch.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def latest_complete(target: str | Path) -> list[Path]:
    """Where the last complete version of `target` can be: itself, or `TARGET.old` when a swap
    was cut short between its two renames."""
    return [Path(target), _previous(Path(target))]


@contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on `path` (a hidden `.NAME.lock` beside it) for the block, so that
    two processes (two notebooks, a notebook and a command) do not interleave their updates.
    Without fcntl (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def building(target: str | Path):
    """Yield a scratch folder; when the block ends without an error, it replaces `target`.

    An interrupted build leaves only the scratch folder, which the next build clears, never a
    `target` that looks complete. A second process building the same target waits its turn.
    """
    with locked(target):
        scratch = scratch_for(target)
        yield scratch
        swap_in(scratch, target)


_INTACT: set[tuple] = set()  # (path, size, mtime, sha256) of files already checked in this process


def record_files(folder: str | Path, marker: str, **facts) -> Path:
    """Write `marker` into `folder`: the size and sha256 of every other file there, and `facts`.
    Written last, it says the folder is complete; `files_intact` checks it later."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != marker}
    return write_json(folder / marker, dict(facts, files=files))


def files_intact(folder: str | Path, marker: str) -> bool:
    """Whether `folder` holds exactly the files its marker recorded, byte for byte: sizes always,
    sha256 once per process for each unchanged file (a damaged cache is rebuilt, not trusted)."""
    folder = Path(folder)
    try:
        recorded = read_json(folder / marker, {}).get("files")
    except ValueError:  # a damaged marker
        return False
    if not recorded:
        return False
    for name, facts in recorded.items():
        path = folder / name
        if not path.is_file():
            return False
        stat = path.stat()
        if stat.st_size != facts["size"]:
            return False
        key = (str(path), stat.st_size, stat.st_mtime_ns, facts["sha256"])
        if key not in _INTACT:
            if sha256_of(path) != facts["sha256"]:
                return False
            _INTACT.add(key)
    return True
