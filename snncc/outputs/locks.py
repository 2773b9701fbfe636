"""Who may touch an output folder when: ``flock``, shared for readers, exclusive for installs.

The installs take an exclusive ``flock`` on each parent directory and on each existing output
folder (by inode, in one order: :func:`_parents_locked`), so that concurrent commands writing the
same outputs install them one after the other, and a reader of an output folder
(:func:`reading`, shared) sees it whole; a command that must wait says so. Leftovers of an install
that was killed make a reader refuse the folder (SNN-E373). One thread never waits for a lock it
holds itself; another thread waits like another process.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

from snncc.errors import OutputPathError
from snncc.outputs.names import leftovers
from snncc.outputs.paths import _resolve


class _HeldLocks(threading.local):
    """(device, inode) of the folders this thread holds a shared lock on (:func:`reading`) and
    the exclusive ones it holds while installing: the same thread takes no second lock there
    (flock tells open files apart, so it would wait for itself); another thread opens its own
    and waits like another process."""

    def __init__(self) -> None:
        self.read: dict[tuple[int, int], int] = {}
        self.write: set[tuple[int, int]] = set()


_held = _HeldLocks()


def _open_dir(path: Path) -> int | None:
    try:
        return os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


@contextlib.contextmanager
def reading(directory: str | os.PathLike) -> Iterator[None]:
    """Read an snncc output folder under a shared ``flock`` on it (on its parent where the
    folder cannot be opened), the locks an install into it holds exclusively
    (:func:`_parents_locked`): a reader sees the folder before or after a concurrent compile
    replaces it, never half of each (a run during a Loihi recompile had read the new
    netlist.json with the old netlist.npz). Where the lock is held, a killed install's leftovers
    are SNN-E373 (:func:`leftovers`); where it cannot be taken (no ``fcntl``, a file system
    without flock), nothing is checked. Nothing may be installed inside the block: snncc's own
    reader (``netlist.load``) only reads."""
    try:
        import fcntl
    except ImportError:   # not POSIX
        yield
        return
    directory = Path(os.path.expanduser(os.fspath(directory)))
    key = None
    fd = _open_dir(directory)
    if fd is None:
        fd = _open_dir(_resolve(directory).parent)
    try:
        if fd is not None:
            try:
                st = os.fstat(fd)
                key = (st.st_dev, st.st_ino)
                if key not in _held.read and key not in _held.write:
                    _flock_saying(fd, fcntl.LOCK_SH, directory)
                _held.read[key] = _held.read.get(key, 0) + 1
            except OSError:
                key = None
        stale = leftovers(directory) if key is not None else []
        if stale:
            raise OutputPathError(
                f"'{directory}' holds the leftovers of an snncc install that was cut short "
                f"({', '.join(p.name for p in stale[:2])}{' ...' if len(stale) > 2 else ''}): "
                "its files may come from two compiles", code="SNN-E373",
                hint="compile it again (the leftovers are removed then)")
        yield
    finally:
        if key is not None:
            _held.read[key] -= 1
            if not _held.read[key]:
                del _held.read[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)   # closing the last descriptor releases the lock


def _locked_here(folder: Path) -> bool:
    """Whether this process holds the exclusive install lock on ``folder``."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _held.write


@contextlib.contextmanager
def _parents_locked(paths: Sequence[Path]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on each output's parent directory and on each existing
    directory output itself (each directory once, in (device, inode) order) while the outputs
    are installed, so that commands writing the same outputs at once install them one after the
    other (the model and its manifest come from the same command) and a reader of an output
    folder sees it whole. A folder that appeared while the locks were taken (another compile's
    new output) is locked too: all locks are let go and taken again in order. Nothing is created
    for it; where a lock is not possible the install goes on without it."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fds: dict[tuple[int, int], int] = {}  # (device, inode) -> its descriptor
    got: list[tuple[int, int]] = []        # the locks obtained

    def wanted() -> set[str]:
        return {str(p.parent) for p in paths} | {str(p) for p in paths if p.is_dir()}

    def release() -> None:
        for key in got:
            _held.write.discard(key)
        got.clear()
        for fd in fds.values():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        fds.clear()

    try:
        for _ in range(8):   # a folder appears at most once per output; bounded all the same
            names = wanted()
            for name in names:
                fd = _open_dir(Path(name))
                if fd is None:
                    continue
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in fds:  # one directory by two names: one lock
                    os.close(fd)
                else:
                    fds[(st.st_dev, st.st_ino)] = fd
            for key in sorted(fds):  # one global order: no two commands wait on each other
                if key in _held.read or key in _held.write:   # this thread holds it already
                    continue
                with contextlib.suppress(OSError):
                    _flock_saying(fds[key], fcntl.LOCK_EX, None)
                    got.append(key)
                    _held.write.add(key)
            if wanted() <= names:
                break
            release()
        else:
            raise OutputPathError("output folders keep appearing and disappearing while snncc "
                                  "waits to install its outputs", code="SNN-E369",
                                  hint="another program is writing there: run again when it "
                                  "is done")
        yield
    finally:
        release()


def _flock_saying(fd: int, mode: int, what: Path | None) -> None:
    """``flock(fd, mode)``; when another process holds it, say so once before waiting (a
    stopped reader would otherwise hold every install in that folder without a word)."""
    import fcntl
    import logging

    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    logging.getLogger("snncc").warning(
        "waiting for another snncc command that %s", f"writes '{what}'" if what is not None
        else "reads or writes outputs in the same folder")
    fcntl.flock(fd, mode)
