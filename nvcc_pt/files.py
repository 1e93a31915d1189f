"""Crash-safe writes: every file and directory nvcc_pt writes appears whole or not at all.

A file is written to a temporary sibling `.<name>.tmp-<pid>-<random>`, flushed to disk and renamed over the
target (`os.replace` is atomic on POSIX and Windows), so the path holds the old complete file or the new one,
never a mix. A directory (a plan, an OVT bank) is written to `.<name>.tmp-...` and swapped in by two renames:
the old directory to a backup `.<name>.old-<pid>-<random>`, the new one to the path; then the backup is
deleted. A crash between the renames leaves the backup, which `recover_directory` (run by the next write and
by loaders) renames back. Leftovers of a writer that no longer runs are deleted by the next write to the
same path; those of a writer that still runs (its pid is alive) are left alone.

Any `OSError` (a full disk, a read-only folder) becomes `FileWriteError` and leaves the old file as it was.
A target path that is a symbolic link is refused: replacing it would replace the link, not the file it
points to, so the caller names the real path.

    >>> write_bytes("report.json", b"{}")
    >>> with directory_writer("plan") as tmp:
    ...     (tmp / "plan.json").write_text("{}")
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from nvcc_pt.errors import FileWriteError

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def leftovers(path: Path, kinds: tuple[str, ...] = ("tmp", "old")) -> list[Path]:
    """Temporaries and backups that interrupted writes to `path` left beside it (their writers are gone)."""
    path = Path(path)
    try:
        siblings = list(path.parent.iterdir())
    except OSError:  # a missing or unreadable folder has no leftovers we could remove
        return []
    out = []
    for p in siblings:
        m = _LEFTOVER.match(p.name)
        if m and m["name"] == path.name and m["kind"] in kinds and not _alive(int(m["pid"])):
            out.append(p)
    return sorted(out, key=lambda p: p.lstat().st_mtime if p.exists() else 0.0)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def check_target(path: Path, what: str = "file") -> Path:
    """Refuse a target that is a symbolic link; create a missing parent folder."""
    path = Path(path)
    if path.is_symlink():
        raise FileWriteError(f"cannot write the {what} {path}: it is a symbolic link to {os.path.realpath(path)}; "
                             "replacing it would replace the link, not its target. Write to the real path or "
                             "remove the link")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileWriteError(f"cannot create the folder {path.parent} to write {path}: {e.strerror or e}; "
                             "choose a writable location") from e
    return path


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, e: OSError) -> FileWriteError:
    return FileWriteError(f"cannot write {path}: {e.strerror or e} (errno {e.errno}); the previous contents are "
                          "unchanged. Free disk space or choose another location")


def write_with(path: str | os.PathLike, write: Callable[[Path], None], what: str = "file") -> Path:
    """Write a file by calling `write(tmp_path)`, then swap it in atomically; returns `path`."""
    path = check_target(Path(path), what)
    if path.is_dir():
        raise FileWriteError(f"cannot write the {what} {path}: it is a directory; give a file path")
    for p in leftovers(path, ("tmp",)):
        _remove(p)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise _write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Atomically replace `path` with `data`."""
    return write_with(path, lambda tmp: tmp.write_bytes(data), what)


def write_text(path: str | os.PathLike, text: str, what: str = "file") -> Path:
    """Atomically replace `path` with `text`, UTF-8 encoded."""
    return write_bytes(path, text.encode("utf-8"), what)


def recover_directory(path: str | os.PathLike) -> None:
    """Finish what an interrupted directory swap left: restore a backup when the path is gone, drop stale parts."""
    path = Path(path)
    backups = leftovers(path, ("old",))
    if backups and not path.exists() and not path.is_symlink():
        try:
            os.replace(backups[-1], path)  # the newest backup is the last directory that was complete at `path`
            backups = backups[:-1]
        except OSError:
            return  # a read-only folder: the loader then reports the plan as missing, the backup stays
    for p in backups:
        _remove(p)


@contextlib.contextmanager
def directory_writer(path: str | os.PathLike, what: str = "directory",
                     replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory; when the block ends without error, it replaces `path`.

    `replaceable(path)` decides whether an existing `path` may be replaced (default: never).
    """
    path = check_target(Path(path), what)
    if path.exists() and not (path.is_dir() and replaceable is not None and replaceable(path)):
        raise FileWriteError(f"{path} exists and is not a {what}; choose a new path (nothing was written)")
    recover_directory(path)
    for p in leftovers(path, ("tmp",)):
        _remove(p)
    tmp = _sibling(path, "tmp")
    try:
        tmp.mkdir()
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        backup = None
        if path.exists():
            backup = _sibling(path, "old")
            os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            if backup is not None:
                os.replace(backup, path)
            raise
        _fsync_dir(path.parent)
    except OSError as e:
        _remove(tmp)
        raise _write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise
    if backup is not None:
        _remove(backup)


@contextlib.contextmanager
def scratch_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `path` (same file system, so its files can be renamed over `path`),
    removed when the block ends; one left by a killed writer is removed by the next. An `OSError` in the
    block becomes `FileWriteError`."""
    path = check_target(Path(path))
    for p in leftovers(path, ("tmp",)):
        _remove(p)
    tmp = _sibling(path, "tmp")
    try:
        tmp.mkdir()
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
    except FileWriteError:
        raise
    except OSError as e:  # writing the parts inside the block failed
        raise _write_error(path, e) from e
    finally:
        _remove(tmp)


def move_into_place(source: Path, path: str | os.PathLike, what: str = "file") -> Path:
    """Atomically replace `path` by the finished file `source` (on the same file system)."""
    return write_with(path, lambda tmp: os.replace(source, tmp), what)
