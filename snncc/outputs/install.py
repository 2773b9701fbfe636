"""Moving a finished output into place, and back when a later one fails.

A file goes to a temporary sibling ``.NAME.snncc-PID-XXXX`` and is renamed into place only when
the writer finished (so a failure or Ctrl-C leaves no half-written output, and concurrent writers
to one path leave one complete file). A directory is written into a temporary sibling; then, if
the destination does not exist, the whole directory is renamed into place, otherwise each file is
renamed into it and the files that the previous marker listed and the new output no longer has
are removed. Modes follow the umask (0666/0777 masked), not the 0600/0700 of temporary files.

Each install is one ``os.replace``, so a concurrent writer or reader sees the old file or the new
one, and nothing that is not a plain file is ever moved aside (a directory that appeared at a file
output's path since the check makes the rename fail, and stays). Each replaced file is kept as a
hard link beside it until the end, for an undo (:class:`_Installed`; a replaced symlink is kept
as the link itself). A directory output is never written through a symlinked subfolder (nothing
behind a link is snncc's: SNN-E364). An install into a folder under its lock removes a killed
install's leftovers and adopts the files that install's intent record names.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator, Sequence

from snncc.errors import OutputPathError
from snncc.outputs.locks import _locked_here
from snncc.outputs.names import (MARKER, _backup_name, _marker_files, _pending_names,
                                 _temp_prefix, leftovers)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_tree(path: Path) -> None:
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for p in path.rglob("*"):
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OS error while writing ``path`` (a full disk, a read-only or special file system
    that the up-front check could not see) into SNN-E369 instead of an internal error."""
    try:
        yield
    except OSError as exc:
        raise OutputPathError(f"writing '{_shown(path)}' failed: {exc.strerror or exc}",
                              code="SNN-E369",
                              hint="choose a path in a writable directory with free space"
                              ) from exc


def _shown(path: str | os.PathLike) -> Path:
    """``path`` as the user named it: a file inside one of this process's temporaries (a
    backend writing into the staging folder of ``out.onnx``) is shown as the output it becomes
    (the error had named '.out.onnx.snncc-PID-TID-XXXX/out.onnx')."""
    parts = Path(path).parts
    tag = f".snncc-{os.getpid()}-"
    for i, part in enumerate(parts):
        if part.startswith(".") and tag in part:
            name = part[1:part.index(tag)]
            rest = parts[i + 1:]
            if len(rest) == 1 and rest[0].startswith(name):   # a file output's staging
                name, rest = rest[0], ()                        # folder holds the file itself
            return Path(*parts[:i], name, *rest)
    return Path(path)


def _remove_temps(path: Path) -> None:
    """Remove every temporary this process made beside ``path`` (by its PID-tagged prefix), also
    one whose creation an interrupt cut short before anyone held its name."""
    prefix = _temp_prefix(path)
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if entry.name.startswith(prefix):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def _make_parents(path: Path) -> list[Path]:
    """Create the missing directories above ``path``; returns them, deepest first."""
    missing = []
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(dirs: Sequence[Path]) -> None:
    for d in dirs:  # deepest first
        with contextlib.suppress(OSError):
            d.rmdir()


class _Installed:
    """Undo information of one install: ``path`` now holds the new file (inode ``ino``); the
    file it replaced (if any) is kept at ``backup``; a whole new directory goes back to
    ``staging``."""

    def __init__(self, path: Path, backup: Path | None, *, staging: Path | None = None,
                 ino: tuple[int, int] | None = None):
        self.path, self.backup, self.staging, self.ino = path, backup, staging, ino

    def rollback(self) -> None:
        if self.staging is not None:  # a whole new directory: move it back out
            os.rename(self.path, self.staging)
            return
        if self.ino is not None and _inode(self.path) != self.ino:
            return  # another writer's file is there now: not ours to undo
        if self.backup is not None:
            os.replace(self.backup, self.path)
        else:
            os.unlink(self.path)

    def finish(self) -> None:
        if self.backup is not None:
            with contextlib.suppress(FileNotFoundError):
                self.backup.unlink()


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _install_file(tmp: Path, path: Path) -> _Installed:
    """Rename ``tmp`` onto ``path`` in one step (``os.replace``: a concurrent writer sees the old
    file or the new one), keeping a hard link to the file or symlink it replaces for an undo.
    Nothing else is ever moved aside: ``os.replace`` refuses a directory that appeared at
    ``path`` since the check, which then stays as it is. Across file systems (a directory
    output that is a mount point) the file is copied beside ``path`` first."""
    backup = None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        backup = _backup_name(path)
        try:
            os.link(path, backup, follow_symlinks=False)
        except FileNotFoundError:  # another writer moved it meanwhile: nothing to keep
            backup = None
        except OSError:  # no hard links here: keep a copy (of the link itself, if one)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(path), backup)
            else:
                shutil.copy2(path, backup)
    try:
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            near = _backup_name(path)  # a temporary on path's own file system
            try:
                shutil.copy2(tmp, near)
                os.replace(near, path)
            except BaseException:   # a full disk: no half-copied file left beside path
                with contextlib.suppress(OSError):
                    near.unlink()
                raise
            os.unlink(tmp)
    except BaseException:
        if backup is not None:
            with contextlib.suppress(OSError):
                backup.unlink()
        raise
    return _Installed(path, backup, ino=_inode(path))


def _real_dirs_below(root: Path, rel: str) -> bool:
    """Every existing directory between ``root`` and ``root/rel`` is a real one (no symlink, no
    file): writing there stays inside ``root``."""
    cur = root
    for part in Path(rel).parts[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return True  # created by snncc below here
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _install_dir(tmp: Path, path: Path, files: Sequence[str],
                 adopt: Sequence[str]) -> list[_Installed]:
    """Install the filled temporary directory ``tmp`` at ``path`` (module doc); returns the undo
    list."""
    if not os.path.lexists(path):
        try:
            os.rename(tmp, path)
            return [_Installed(path, None, staging=tmp)]
        except OSError:  # another process created it meanwhile: merge below
            pass
    locked = _locked_here(path)
    adopted = _pending_names(path) if locked else set()
    # a killed install may have put files the old marker does not list: those its intent
    # record names are snncc's (the folder had been stuck: E364, with --force too)
    old = {f for f in (_marker_files(path) or set()) | set(adopt) | adopted
           if not Path(f).is_absolute() and ".." not in Path(f).parts}
    foreign = sorted(f for f in files if f not in old and os.path.lexists(path / f))
    foreign += sorted(f for f in set(files) | old if not _real_dirs_below(path, f))
    if foreign:  # --force into a foreign folder: never replace a file snncc did not write
        raise OutputPathError(
            f"refusing to write into '{path}': it holds files of the same names that snncc "
            f"did not write ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''})",
            code="SNN-E364", hint="move those files away, or name a new directory")
    done: list[_Installed] = []
    # the intent record: what this install puts into the folder and what it adopted, for the
    # next one to adopt if this one is killed half-way (a leftover name: readers refuse the
    # folder meanwhile); written before a killed install's leftovers go, so that a kill in
    # between still leaves a record
    intent = path / (_temp_prefix(path / MARKER) + "pending")
    try:
        intent.write_text(json.dumps({"files": sorted(set(files) | adopted)}))
        if locked:   # under the exclusive lock: a killed install's leftovers, replaced now
            for stale in leftovers(path):
                if stale != intent:
                    with contextlib.suppress(OSError):
                        shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() \
                            else stale.unlink()
        for rel in files:
            dest = path / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            done.append(_install_file(tmp / rel, dest))
        for rel in sorted(old - set(files)):  # stale files of the previous output: set aside
            stale = path / rel
            if stale.is_file() or stale.is_symlink():
                backup = _backup_name(stale)
                try:
                    os.rename(stale, backup)
                except FileNotFoundError:  # gone meanwhile
                    continue
                done.append(_Installed(stale, backup))  # undo: moved back
        done.append(_install_file(tmp / MARKER, path / MARKER))
    except BaseException:
        _undo(done)
        if adopted:   # a killed install's leftovers are gone: its record must stay, in ours
            raise
        with contextlib.suppress(OSError):
            intent.unlink()
        raise
    with contextlib.suppress(OSError):
        intent.unlink()
    # its files moved out: the emptied staging folder goes now (the cleanup's scan of the parent
    # cannot find it where the parent is not readable: one had stayed per recompile)
    shutil.rmtree(tmp, ignore_errors=True)
    return done


def _undo(done: Sequence[_Installed]) -> None:
    for item in reversed(done):
        with contextlib.suppress(OSError):
            item.rollback()
