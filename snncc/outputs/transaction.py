"""All outputs of one command or none.

Inside :func:`transaction` the writers (:func:`atomic_file`, :func:`atomic_dir`) only stage their
temporaries; when the block ends without an error every output is installed, with SIGINT and
SIGTERM held back until the last rename (a signal that came meanwhile is delivered after it). An
install that fails (a file made immutable, a full disk) undoes those before it: each replaced file
is moved back (only while the path still holds what this command installed: a concurrent
writer's file is left alone). An error or interrupt before the end removes the temporaries,
including one created just as the interrupt came (they carry the PID and thread). Folders made for
an output are removed again when the command fails. Transactions are per thread; a nested one
joins the outer one, so its writes are installed or dropped with the outer block, even if the
nested block's error was caught. :func:`installed` lists what this thread has installed, so an
interrupt can say what was written.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from snncc import __version__
from snncc.errors import OutputPathError
from snncc.outputs import install
from snncc.outputs.install import (_chmod_tree, _Installed, _make_parents, _remove_if_empty,
                                   _remove_temps, _undo, write_errors)
from snncc.outputs.locks import _parents_locked
from snncc.outputs.names import MARKER, _dir_contents, _temp_prefix
from snncc.outputs.paths import _resolve


class _ThreadState(threading.local):
    """Per thread (a compile in another thread has its own): the open transaction (nested ones
    join it), every output installed, in order, and the scratch() depth."""

    def __init__(self) -> None:
        self.open: list["_Transaction"] = []
        self.installed: list[Path] = []
        self.scratch: list[bool] = []


_state = _ThreadState()


def installed() -> list[Path]:
    """The outputs this process has installed so far (for an honest message on interrupt)."""
    return list(_state.installed)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private temporary directory (in ``$TMPDIR``) for a command's intermediate files,
    removed at the end with signals held back (a second Ctrl-C during the removal of a
    ``TemporaryDirectory`` had left it, with its models, in ``$TMPDIR``). A write that fails
    there is SNN-E369 naming the scratch space and ``TMPDIR``, not the user's output."""
    try:
        path = Path(tempfile.mkdtemp(prefix=f"snncc-{os.getpid()}-"))
    except OSError as exc:   # no writable TMPDIR, /tmp or /var/tmp (an internal error before)
        raise OutputPathError(f"snncc found no scratch space: {exc}", code="SNN-E369",
                              hint="point TMPDIR at a writable folder with room (the output "
                              "path is fine)") from None
    pending: list[int] = []
    try:
        try:
            yield path
        except OutputPathError as exc:
            if exc.code != "SNN-E369" or str(path) not in exc.message:
                raise
            raise OutputPathError(
                f"snncc's scratch space failed: {exc.message.replace(str(path), '<scratch>')}",
                code="SNN-E369", hint=f"free space in {path.parent}, or point TMPDIR at a "
                "folder with room (the output path is fine)") from exc
    finally:
        with _signals_held(pending):
            shutil.rmtree(path, ignore_errors=True)
        if pending:
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def scratch() -> Iterator[None]:
    """Writes inside the block go to a command's own scratch space (the report's compiles into
    a temporary directory): they are not listed by :func:`installed`."""
    try:
        _state.scratch.append(True)
        yield
    finally:
        if _state.scratch:
            _state.scratch.pop()


#: the exception classes of signals the CLI's handlers raised and no handler has yet taken
#: (:func:`note_signal`): one raised inside a ``__del__`` (a progress bar's) is printed and
#: dropped by Python, and the command had gone on to write its outputs and exit 0
_signalled: list[type] = []


#: how many CLI commands (main() in the main thread, its handlers installed) are running
_armed = [0]


@contextlib.contextmanager
def signals_recorded() -> Iterator[None]:
    """A CLI command's span in the main thread: signals its handlers record stop a transaction
    (:func:`note_signal`); the record is cleared when the outermost one ends."""
    _armed[0] += 1
    try:
        yield
    finally:
        _armed[0] -= 1
        if not _armed[0]:
            _signalled.clear()


def note_signal(kind: type) -> None:
    """Record that a signal's exception ``kind`` is being raised (the CLI's handlers)."""
    if _armed[0]:
        _signalled.append(kind)


def take_signal() -> type | None:
    """The first recorded signal no one has handled, and forget them all (the CLI in the main
    thread, once it has reported the interrupt or finished a command); None elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return None
    kind = _signalled[0] if _signalled else None
    _signalled.clear()
    return kind


class _Transaction:
    def __init__(self) -> None:
        self.steps: list[tuple[Callable[[], list[_Installed]], Path]] = []
        self.places: list[Path] = []   # outputs whose PID-tagged temporaries to clean up
        self.created: list[Path] = []  # directories made for the outputs (removed on failure)
        self.committed = False

    def commit(self, pending: list[int]) -> None:
        """Install every staged output; signals that come meanwhile go to ``pending``. A
        signal whose exception was lost on the way (:data:`_signalled`) stops it first."""
        if _armed[0] and _signalled and threading.current_thread() is threading.main_thread():
            raise _signalled[0]()
        done: list[_Installed] = []
        with _parents_locked([path for _, path in self.steps]), _signals_held(pending):
            try:
                for step, path in self.steps:
                    with write_errors(path):
                        done += step()
            except BaseException:
                _undo(done)
                raise
            for item in done:
                with contextlib.suppress(OSError):
                    item.finish()
            if not _state.scratch:
                _state.installed.extend(path for _, path in self.steps if not _in_staging(path))
            self.committed = True

    def cleanup(self) -> None:
        for path in self.places:
            _remove_temps(path)
        if not self.committed:
            _remove_if_empty(sorted(set(self.created), key=lambda d: -len(d.parts)))


@contextlib.contextmanager
def transaction() -> Iterator[None]:
    """Install every output written inside the block together at its end, or none of them (see
    the module doc). Nested blocks join the outer one."""
    if _state.open:
        yield
        return
    t = _Transaction()
    pending: list[int] = []
    try:
        _state.open.append(t)
        yield
        _state.open.pop()
        t.commit(pending)
    finally:
        if t in _state.open:
            _state.open.remove(t)
        with _signals_held(pending):
            t.cleanup()
        if pending:  # a signal held back while installing or cleaning up: now
            signal.raise_signal(pending[0])


@contextlib.contextmanager
def _signals_held(pending: list[int]) -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back while the outputs are renamed into place (and
    temporaries removed); a signal that comes meanwhile is appended to ``pending``, for the
    caller to raise once all is done (main thread only: Python handles signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.getsignal(sig)
            if old[sig] is signal.SIG_IGN:   # nohup: an ignored hang-up stays ignored
                continue
            signal.signal(sig, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _in_staging(path: Path) -> bool:
    """Whether ``path`` lies inside one of this process's temporary directories (a backend
    writing into the staging folder of an output): such a write is not an output itself."""
    tag = f".snncc-{os.getpid()}-"
    return any(part.startswith(".") and tag in part for part in path.parent.parts)


def _deferred(path: Path) -> bool:
    return bool(_state.open) and not _in_staging(path)


def _stage(install: Callable[[], list[_Installed]], path: Path) -> None:
    """Run ``install`` now (outside a transaction or inside a staging folder: atomically, with
    signals held) or at the end of the open transaction."""
    if _deferred(path):
        _state.open[-1].steps.append((install, path))
        return
    t, pending = _Transaction(), []
    t.steps.append((install, path))
    t.commit(pending)
    if pending:
        signal.raise_signal(pending[0])


def _place(path: Path) -> None:
    if _deferred(path):
        _state.open[-1].places.append(path)


def _discard(tmp: Path | None, path: Path) -> None:
    """Remove an unstaged temporary; when an interrupt came before its name was known, remove
    this process's temporaries beside ``path`` (inside a transaction its cleanup does that)."""
    if tmp is not None:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                tmp.unlink()
    elif not _deferred(path):
        _remove_temps(path)


def temp_dir(path: str | os.PathLike) -> Path:
    """A new temporary directory beside ``path``, named like the other temporaries (so an
    interrupted command's cleanup finds it). Directories it had to create above ``path`` are
    removed again if the open transaction fails."""
    path = _resolve(path)
    # registered before it exists: an interrupt just after mkdtemp made it (before the caller
    # holds its name) still has the open transaction's cleanup remove it by its prefix
    _place(path)
    with write_errors(path):
        created = _make_parents(path)
        if _state.open:
            _state.open[-1].created += created
        return Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))


def _unstaged(tmp: Path | None, path: Path, ok: bool, created: Sequence[Path]) -> None:
    """A writer's output that was not staged (a failure, or installed already outside a
    transaction): its temporary goes, and after a failure the folders made for it."""
    _discard(tmp, path)
    if not ok:
        _remove_if_empty(created)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it onto ``path`` only on success (at the
    end of the open :func:`transaction`, if there is one)."""
    path = _resolve(path)
    _place(path)
    tmp_path: Path | None = None
    created: list[Path] = []
    staged = ok = False
    try:
        with write_errors(path):
            created = _make_parents(path)
            if _deferred(path):
                _state.open[-1].created += created
            fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
            os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            _chmod_tree(tmp_path)
        _stage(lambda: [install._install_file(tmp_path, path)], path)
        staged, ok = _deferred(path), True
    finally:
        if not staged:
            _unstaged(tmp_path, path, ok, created)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, adopt: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; install it at ``path`` only on success (at the
    end of the open :func:`transaction`, if there is one).

    Installing writes :data:`MARKER` (the list of files) and never deletes or replaces a file
    that the previous marker did not list (see the module doc). ``adopt``: file names to treat as
    snncc's own although no marker lists them.
    """
    path = _resolve(path)
    _place(path)
    tmp: Path | None = None
    created = [] if _deferred(path) else [d for d in path.parents if not os.path.lexists(d)]
    staged = ok = False
    try:
        tmp = temp_dir(path)
        with write_errors(path):
            yield tmp
            files = sorted(_dir_contents(tmp) - {MARKER})
            (tmp / MARKER).write_text(json.dumps({"snncc_version": __version__, "files": files},
                                                 indent=1) + "\n")
            _chmod_tree(tmp)
        _stage(lambda: install._install_dir(tmp, path, files, adopt), path)
        staged, ok = _deferred(path), True
    finally:
        if not staged:
            _unstaged(tmp, path, ok, created)
