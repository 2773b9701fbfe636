"""Output paths: snncc writes only its declared outputs, atomically, and never destroys anything else.

Every command that writes files declares them first (:func:`check_outputs`) and then writes each
through :func:`atomic_file` or :func:`atomic_dir`. The rules, checked before any work starts and
all reported at once:

* **Never an input.** An output may not be (or, for a directory output, contain) any input file:
  the model, the files holding its external data, calibration or data file; nor what an input
  folder's loader reads: x.npy and y.npy of an array folder, and of an image folder anything in
  a subfolder, a folder at its top and an array or image at its top. ``--force`` does not change
  this (SNN-E360).
* **Defaults replace only snncc's.** A default output (no ``-o``) replaces an existing file only
  when snncc compiled it (SNN-E364 unless ``force``); a directory that holds another kind of
  snncc output (a report's plots for a Loihi folder) is refused, with or without ``force``.
* **Never twice.** Two outputs of one command may not be the same path (SNN-E361).
* **Never a place.** ``.``, ``~``, ``/`` and any directory that holds the current directory are
  refused as directory outputs (SNN-E362), with or without ``--force``.
* **Same kind only.** A file output replaces an existing regular file; an existing directory (or
  anything that is not a regular file) in its place is refused (SNN-E363). A directory output
  replaces a directory snncc itself wrote (it holds :data:`MARKER`, listing the files snncc put
  there) or an empty directory; an existing file in its place is refused (SNN-E363).
* **A place that can hold it.** An output whose parent is a file, or whose nearest existing
  parent directory is not writable (or a file output with no name, like ``.``), is refused
  (SNN-E369); a write that still fails (a full disk, ``/proc``) is reported with that code too.
* **Implied files are snncc's.** A file snncc names itself (the ORT manifest ``MODEL.onnx.json``,
  finetune's stage files, the report's default page) replaces an existing file only when snncc
  wrote that kind of file there (:func:`written_by_snncc`); another file there is refused unless
  ``force`` (SNN-E364).
* **Foreign directories need --force.** A non-empty directory that snncc did not write, or one
  that holds files beyond what its marker lists, is refused unless ``force`` (SNN-E364). With
  ``--force`` snncc writes its files into it and deletes nothing it did not write; a foreign file
  with the name of one of snncc's files is refused too (SNN-E364, found before anything moves).

* **Nothing inside a directory output.** A file output inside a directory output (``--report``
  inside the Loihi folder) is refused (SNN-E361); a file output written with a trailing ``/``
  names a directory (SNN-E369, :func:`file_output`).

Writing: a file goes to a temporary sibling ``.NAME.snncc-PID-XXXX`` and is renamed into place only
when the writer finished (so a failure or Ctrl-C leaves no half-written output, and concurrent
writers to one path leave one complete file). A directory is written into a temporary sibling;
then, if the destination does not exist, the whole directory is renamed into place, otherwise each
file is renamed into it and the files that the previous marker listed and the new output no longer
has are removed. Modes follow the umask (0666/0777 masked), not the 0600/0700 of temporary files.

All outputs of one command at once: inside :func:`transaction` the writers only stage their
temporaries; when the block ends without an error every output is installed, with SIGINT and
SIGTERM held back until the last rename (a signal that came meanwhile is delivered after it). An
install that fails (a file made immutable, a full disk) undoes those before it: each replaced file
is kept as a hard link beside it until the end and moved back (only while the path still holds what
this command installed: a concurrent writer's file is left alone). Each install is one
``os.replace``, so a concurrent writer or reader sees the old file or the new one, and nothing that
is not a plain file is ever moved aside (a directory that appeared at a file output's path since
the check makes the rename fail, and stays). An error or interrupt before the end removes the
temporaries, including one created just as the interrupt came (they carry the PID and thread). A
replaced symlink is kept as the link itself. A directory output is never written through a
symlinked subfolder (nothing behind a link is snncc's: SNN-E364). The installs take an ``flock`` on
each parent directory and on each existing output folder (by inode, in one order), so that
concurrent commands writing the same outputs install them one after the other, and a reader of an
output folder (:func:`reading`, shared) sees it whole; a command that must wait says so. Leftovers
of an install that was killed (:func:`leftovers`) make a reader refuse the folder (SNN-E373) and
are removed by the next install into it, which adopts the files the killed one's intent record
names. Folders made for an output are removed again when the command fails. Transactions are per
thread; a nested one joins the outer one, so its writes are installed or dropped with the outer
block, even if the nested block's error was caught. :func:`installed` lists what this thread has
installed, so an interrupt can say what was written.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from snncc import __version__
from snncc.errors import Diagnostic, OutputPathError

__all__ = ["MARKER", "Output", "check_outputs", "check_suffix", "KNOWN_SUFFIXES", "atomic_file",
           "atomic_dir", "default_output",
           "same_path", "write_errors", "transaction", "installed", "temp_dir", "written_by_snncc",
           "file_output", "scratch_dir", "note_signal", "take_signal", "signals_recorded",
           "reading", "leftovers"]

#: File that marks a directory as written by snncc; lists the files snncc put there.
MARKER = ".snncc-output.json"

_DEFAULT_SUFFIX = {"qann": ".qann.onnx", "ort": ".snn.onnx", "loihi": ".loihi", "nir": ".nir"}


@dataclass(frozen=True)
class Output:
    """A declared output: its path, ``kind`` ("file" or "dir") and the option that named it."""

    path: Path
    kind: str = "file"
    option: str = "-o"
    example: str = "model.onnx"   # a file name to suggest when the path is a directory
    # named by snncc, not by the user: "manifest" (MODEL.onnx.json), "stage" (finetune's
    # OUT.T<T>.onnx), "report" (the default report page); replaced only when snncc wrote that
    # kind of file there (:func:`written_by_snncc`)
    implied: str = ""
    names: tuple[str, ...] = ()   # a directory output: the files snncc will write into it


#: suffixes that name a known kind of file: an output named so while it writes another kind is
#: a slip (a model over a calibration file, a report over a model): SNN-E372
KNOWN_SUFFIXES = (".onnx", ".nir", ".loihi", ".npz", ".npy", ".json", ".net", ".pt", ".pth",
                  ".md", ".html", ".htm")


def check_suffix(path: str | os.PathLike, option: str, what: str, expected: Sequence[str],
                 command: str) -> None:
    """Refuse (SNN-E372) ``path`` when its suffix names another known kind of file than the
    ``what`` (one of the ``expected`` suffixes) that ``option`` writes."""
    path = Path(path)
    got = path.suffix.lower()
    if got in KNOWN_SUFFIXES and got not in expected:
        raise OutputPathError(f"{command}: {option} '{path}' writes {what}, and '{got}' names "
                              "another kind of file", code="SNN-E372",
                              hint=f"name it {path.with_suffix(expected[0]).name}")


def default_output(model: str | os.PathLike, target: str) -> Path:
    """The output beside the input when ``-o`` is not given: ``resnet34.snn.onnx``,
    ``resnet34.qann.onnx``, ``resnet34.loihi/``, ``resnet34.nir``."""
    model = Path(model)
    stem = model.name[: -len(model.suffix)] if model.suffix else model.name
    return model.with_name(stem + _DEFAULT_SUFFIX.get(target, f".{target}"))


def file_output(value: str | os.PathLike, option: str = "-o", example: str = "model.onnx",
                command: str = "compile") -> Path:
    """``value`` as a file output path; refuses (SNN-E369) an empty one and one written as a
    directory (``out/``), which ``Path`` would quietly turn into the file ``out``."""
    text = os.fspath(value)
    if not str(text).strip() or str(text).endswith(("/", os.sep)):
        what = "names no file" if not str(text).strip() else "names a directory (it ends with '/')"
        inside = os.path.join(text, example) if str(text).strip() else example
        raise OutputPathError(f"{command}: {option} '{text}' {what}", code="SNN-E369",
                              hint=f"name a file, e.g. {option} {inside}")
    return Path(text)


def _resolve(path: str | os.PathLike) -> Path:
    """``path`` absolute, its folders as the kernel finds them: ``lnk/../x.onnx`` with ``lnk`` a
    symlink names ``x.onnx`` in the folder above the link's target, not beside the link (the
    textual ``abspath`` had written, and replaced, a file the user did not name). A ``..`` after
    a folder that does not exist, or a dangling link on the way, names nothing the system would
    find: SNN-E369."""
    text = os.path.expanduser(os.fspath(path))
    if ".." not in Path(text).parts:
        return Path(os.path.abspath(text))
    full = os.path.join(os.getcwd(), text)
    parts = Path(full).parts
    if parts[-1] == ".." and os.path.exists(full):   # a folder: as the kernel finds it
        return Path(os.path.realpath(full))
    k = len(parts) - 1            # the longest run of folders that exists (links followed)
    while k > 1 and not os.path.exists(os.path.join(*parts[:k])):
        k -= 1
    head, rest = os.path.join(*parts[:k]), parts[k:]
    if rest == ("..",) or (len(rest) > 1 and (".." in rest or os.path.lexists(
            os.path.join(head, rest[0])))):
        raise OutputPathError(f"'{path}' goes through a folder that does not exist, or a "
                              "dangling link, before a '..': the system would not find it",
                              code="SNN-E369", hint="name the output without '..'")
    return Path(os.path.realpath(head, strict=True)).joinpath(*rest)


def _resolve_any(path: str | os.PathLike) -> Path:
    """:func:`_resolve`, or the path as written where it names nothing the system would find
    (an input that does not exist clashes with nothing; its own check says so)."""
    try:
        return _resolve(path)
    except OutputPathError:
        return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (after ~, .., links; hard links by inode)."""
    ra, rb = _resolve_any(a), _resolve_any(b)
    if ra == rb:
        return True
    try:
        if ra.resolve() == rb.resolve():
            return True
    except (RuntimeError, OSError):   # a symlink loop names no file another path names
        return False
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child, parent = child.resolve(), parent.resolve()
    except (RuntimeError, OSError):   # a symlink loop: compared as written
        child, parent = _resolve_any(child), _resolve_any(parent)
    return child == parent or parent in child.parents


def _marker_files(directory: Path) -> set[str] | None:
    """Files listed by the directory's marker, or None when it has no readable marker."""
    try:
        doc = json.loads((directory / MARKER).read_text())
        return {str(f) for f in doc["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _dir_contents(directory: Path) -> set[str]:
    """Every entry under ``directory`` that is not a real directory (a symlink, also one to a
    directory, counts: nothing behind it is snncc's), leaving out snncc's own temporaries and
    backups beside the files its marker lists (:func:`leftovers`)."""
    stale = set(leftovers(directory))
    return {str(p.relative_to(directory)) for p in directory.rglob("*")
            if (p.is_symlink() or not p.is_dir()) and p not in stale}


def _short(name: str) -> str:
    """The part of a file name that its temporaries repeat: at most :data:`_TEMP_NAME_MAX`
    bytes of it (a name of 245 bytes is legal; with the tag, the random part and a backup's
    suffix its temporaries must still fit the usual 255-byte limit)."""
    return os.fsencode(name)[:_TEMP_NAME_MAX].decode(errors="ignore") if \
        len(os.fsencode(name)) > _TEMP_NAME_MAX else name


def _pending_names(directory: Path) -> set[str]:
    """The files that a killed install into ``directory`` was putting there (its intent
    records among the :func:`leftovers`)."""
    names: set[str] = set()
    for p in leftovers(directory):
        if p.name.endswith("-pending"):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                names |= {str(f) for f in json.loads(p.read_text())["files"]}
    return names


def leftovers(directory: str | os.PathLike) -> list[Path]:
    """snncc's temporaries and backups beside the files an output folder's marker lists, e.g.
    ``.netlist.json.snncc-PID-TID-old-XXXX``. Only an install makes them, while it holds the
    exclusive lock on the folder (:func:`_parents_locked`), and it removes them before it lets
    go: found under that lock, or the shared one a reader holds, they are the leftovers
    of an install that was killed (the folder may hold files of two compiles). Nothing else is
    looked at (a folder without a marker: only the marker's own), and the scan does not descend
    further."""
    directory = Path(directory)
    listed = _marker_files(directory) or set()   # without one: a killed first merge's intent
    prefixes: dict[Path, set[str]] = {}
    for rel in listed | {MARKER}:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            continue
        p = directory / rel
        prefixes.setdefault(p.parent, set()).add(re.escape(f".{_short(p.name)}.snncc-"))
    found = []
    for folder, names in prefixes.items():
        # what _temp_prefix, mkstemp / mkdtemp (8 characters), _backup_name and an install's
        # intent record (_install_dir) append: nothing that merely begins alike
        pattern = re.compile(f"(?:{'|'.join(sorted(names))})"
                             + r"\d+-\d+-(?:old-[0-9a-f]{12}|pending|[a-z0-9_]{8})$")
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if pattern.match(entry.name):
                    found.append(Path(entry.path))
    return sorted(found)


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


#: Written at the top of every report page (how a later run knows the page is snncc's own).
REPORT_MARK = "<!-- written by snncc report -->"


def written_by_snncc(path: str | os.PathLike, kind: str) -> bool:
    """Whether the file at ``path`` is the ``kind`` of file snncc writes there: an ORT manifest
    (JSON with ``snncc_version`` and ``neuron_ops``), a fine-tuning stage (ONNX whose
    ``snncc.train`` metadata says ``"kind": "snn"``) or a report page (:data:`REPORT_MARK` in its
    first bytes). Another file of snncc's (a compiled model, a --report JSON) is not."""
    path = Path(path)
    try:
        if kind == "report":
            with open(path, "rb") as f:
                return REPORT_MARK.encode() in f.read(256)
        if kind == "stage":
            import onnx

            meta = {p.key: p.value for p in
                    onnx.load(str(path), load_external_data=False).metadata_props}
            train = json.loads(meta.get("snncc.train", "{}"))
            # a final --iir output is also kind snn: only a file marked (or, older, not marked
            # otherwise) as a stage is one
            return train.get("kind") == "snn" and train.get("file", "stage") == "stage"
        if kind == "compiled":   # a default output: an ONNX model or NIR file snncc compiled
            if path.suffix == ".nir":
                import h5py

                with h5py.File(path, "r") as f:
                    return bytes(f["node/metadata/producer"][()]).decode() == "snncc"
            import onnx

            props = onnx.load(str(path), load_external_data=False).metadata_props
            # a compiled model's marks; a fine-tuned one (snncc.train only) is the user's work
            return bool({p.key for p in props} & {"snncc.target", "snncc.schedule"})
        doc = json.loads(path.read_text())
        return kind == "manifest" and {"snncc_version", "neuron_ops"} <= set(doc)
    except Exception:  # unreadable, not JSON, not ONNX: not ours  # noqa: BLE001
        return False


#: files an input folder's loader reads: arrays, and images (snncc.train.data.IMAGE_SUFFIXES)
DATA_SUFFIXES = (".npy", ".npz", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


#: what the loader reads of a folder that holds x.npy (nothing else there is data)
ARRAY_FOLDER_FILES = ("x.npy", "y.npy")


def _reads_as_input(path: Path, kind: str, folder: Path) -> bool:
    """Whether an output at ``path`` (a "file" or "dir") would replace or become data of the
    input ``folder``. A folder holding x.npy is read for x.npy and y.npy alone: only those are
    refused (a model, report, checkpoint or build/ folder beside them is written and rewritten:
    finetune --data . -o out.onnx). An image folder reads every image below it: anything in a
    subfolder (its classes), a folder at its top (it would become a class) and an array or
    image at its top (a loose image is read too) are refused."""
    if not _is_within(path, folder) or same_path(folder, path):
        return False
    top = path.resolve().parent == folder.resolve()
    if (folder / "x.npy").is_file():
        return top and path.name in ARRAY_FOLDER_FILES
    return kind == "dir" or not top or path.suffix.lower() in DATA_SUFFIXES


def external_data_files(path: Path) -> list[Path]:
    """The files an ONNX model keeps its external tensors in (``save_as_external_data``), beside
    it: inputs as much as the model file itself. [] for anything else or an unreadable model."""
    if path.suffix.lower() in DATA_SUFFIXES + (".pt", ".pth", ".json", ".nir", ".net") or \
            not path.is_file():   # data, a checkpoint, a manifest, a folder: no ONNX model
        return []   # (a model may have any other name: ir.load reads a.model too)
    try:
        import onnx

        def tensors(graph):
            yield from graph.initializer
            for node in graph.node:
                for a in node.attribute:
                    if a.HasField("t"):
                        yield a.t
                    yield from a.tensors
                    for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                        yield from tensors(g)

        proto = onnx.load(str(path), load_external_data=False)
        found = []
        for t in tensors(proto.graph):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                where = {e.key: e.value for e in t.external_data}.get("location")
                if where:
                    found.append(path.parent / where)
        return list(dict.fromkeys(found))
    except Exception:   # the front end reports unreadable models  # noqa: BLE001
        return []


def _place_problem(path: Path) -> str | None:
    """Why no file or directory can be created at ``path`` (None when one can, as far as the
    file system says before trying)."""
    parent = path.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"'{parent}' is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory '{parent}' is not writable"
    try:    # root passes os.access everywhere; /proc, a read-only or full mount refuse a file
        fd, probe = tempfile.mkstemp(prefix=".snncc-probe-", dir=parent)
    except OSError as exc:
        return f"no file can be created in '{parent}' ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_outputs(outputs: Sequence[Output], inputs: Sequence[str | os.PathLike | None] = (), *,
                  force: bool = False, command: str = "compile", has_force: bool = True) -> None:
    """Refuse outputs that would touch anything but the declared output (rules in the module doc).

    Raises one :class:`OutputPathError` listing every problem; returns None when all is well.
    ``has_force``: the command has a ``--force`` option to suggest.
    """
    diags: list[Diagnostic] = []
    ins = [Path(p) for p in inputs if p is not None]
    ins += [f for p in ins for f in external_data_files(p)]   # a model's weights are inputs too
    folders = list(dict.fromkeys(p for p in ins if p.is_dir()))   # --data and --val alike: once
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    seen: list[Output] = []
    places: set[str] = set()
    for out in outputs:
        path = _resolve(out.path)
        where = f"{out.option} '{out.path}'"
        try:
            path.resolve()
        except (RuntimeError, OSError):   # a symlink loop (Python raises RuntimeError)
            diags.append(Diagnostic("SNN-E369", f"{where} is a symbolic link that loops",
                                    command, hint="remove the link, or name another path"))
            continue
        for other in seen:
            if same_path(other.path, path):
                diags.append(Diagnostic("SNN-E361", f"{where} is the same path as {other.option}",
                                        command, hint="give each output its own path"))
            else:
                for outer, inner in ((other, out), (out, other)):
                    if outer.kind == "dir" and _is_within(_resolve(inner.path),
                                                          _resolve(outer.path)):
                        diags.append(Diagnostic(
                            "SNN-E361", f"{inner.option} '{inner.path}' lies inside the "
                            f"directory {outer.option} '{outer.path}', whose contents snncc "
                            "manages", command,
                            hint=f"put {inner.option.split()[0]} outside that directory"))
        seen.append(out)
        if out.kind == "dir" and (str(out.path).strip() in (".", "..", "~", "/", "")
                                  or path.resolve() in (home, Path("/"))
                                  or _is_within(cwd, path)):
            diags.append(Diagnostic(
                "SNN-E362", f"{where} names the current, home or root directory (or one that "
                "holds the current directory)", command,
                hint="name a new directory, e.g. -o out/model.loihi"))
            continue
        if out.kind == "file" and (not str(out.path).strip()
                                   or Path(out.path).name in ("", ".", "..")):
            diags.append(Diagnostic("SNN-E369", f"{where} names no file", command,
                                    hint=f"name a file, e.g. {out.option.split()[0]} "
                                    f"{out.example}"))
            continue
        problem = _place_problem(path)
        if problem in places:  # the manifest beside -o: said once
            continue
        if problem:
            places.add(problem)
            diags.append(Diagnostic("SNN-E369", f"{where} cannot be created: {problem}", command,
                                    hint="choose a path in a writable directory"))
            continue
        for inp in ins:
            clash = same_path(inp, path) or (out.kind == "dir" and _is_within(_resolve_any(inp),
                                                                               path))
            if clash:
                diags.append(Diagnostic(
                    "SNN-E360", f"{where} would overwrite the input '{inp}'", command,
                    hint="choose another output path; snncc never writes over its inputs"))
        for folder in folders:
            if _reads_as_input(path, out.kind, _resolve_any(folder)):
                what = (f"is the input folder '{folder}''s {path.name}, read as input"
                        if (folder / "x.npy").is_file() else
                        f"lies inside the input image folder '{folder}', whose subfolders and "
                        "images are read as inputs")
                diags.append(Diagnostic("SNN-E360", f"{where} {what}", command,
                                        hint="write outputs outside what snncc reads"))
        if not os.path.lexists(path):
            continue
        if out.kind == "file":
            if not path.is_file():
                hint = ("choose another -o" if out.implied else
                        f"name a file inside it, e.g. {out.option.split()[0]} "
                        f"{Path(out.path) / out.example}" if path.is_dir() else
                        "name a regular file")
                diags.append(Diagnostic(
                    "SNN-E363", f"{where} exists and is not a regular file (it is "
                    f"a {'directory' if path.is_dir() else 'special file'})", command, hint=hint))
            elif out.implied and not force and not written_by_snncc(path, out.implied):
                diags.append(Diagnostic(
                    "SNN-E364", f"{where} exists and was not written by snncc",
                    command, hint="choose another -o" + (", or pass --force to replace it"
                                                          if has_force else "")))
            continue
        if not path.is_dir():
            diags.append(Diagnostic("SNN-E363", f"{where} exists and is a file, not a directory",
                                    command, hint="name a directory that does not exist yet"))
            continue
        contents = _dir_contents(path)
        listed = _marker_files(path)
        if listed and out.names and not listed & set(out.names):
            # snncc wrote it, but as another kind of output (a report's plots, a Loihi folder):
            # installing would remove those files as stale ones
            diags.append(Diagnostic(
                "SNN-E364", f"{where} holds another kind of snncc output "
                f"({', '.join(sorted(listed)[:3])}{' ...' if len(listed) > 3 else ''}), which "
                "writing there would delete", command, hint="name another directory"))
            continue
        foreign = contents - (listed | {MARKER} if listed is not None else set())
        foreign -= _pending_names(path)   # a killed install's own files, besides its leftovers
        clash = sorted(foreign & set(out.names))
        if clash and force:  # --force never replaces a file snncc did not write
            diags.append(Diagnostic(
                "SNN-E364", f"{where} holds files of the names snncc writes that snncc did not "
                f"write ({', '.join(clash[:3])}{' ...' if len(clash) > 3 else ''})", command,
                hint="move those files away, or name a new directory"))
        elif foreign and not force:
            what = ("files snncc did not write" if listed is not None
                    else "files and was not written by snncc")
            diags.append(Diagnostic(
                "SNN-E364", f"{where} is a non-empty directory that holds {what} "
                f"({len(foreign)}: {', '.join(sorted(foreign)[:3])}"
                f"{' ...' if len(foreign) > 3 else ''})", command,
                hint="name a new directory" + (", or pass --force to write snncc's files into "
                                               "it (nothing else there is deleted)"
                                               if has_force else "")))
    if diags:
        raise OutputPathError(f"{command}: refusing to write the output", diagnostics=diags,
                              code=diags[0].code)


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


# ------------------------------------------------------------------ temporaries and installing

#: the longest part of an output's name that its temporaries repeat: with the tag, the random
#: part and a backup's suffix (about 40 characters) a name stays within the usual 255-byte limit
#: (a 240-character -o had failed with 'File name too long' only after the whole compile)
_TEMP_NAME_MAX = 200


def _temp_prefix(path: Path) -> str:
    """Name prefix of this process's (and thread's) temporaries beside ``path``."""
    return f".{_short(path.name)}.snncc-{os.getpid()}-{threading.get_ident() % 100000}-"


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


def _backup_name(path: Path) -> Path:
    return path.with_name(_temp_prefix(path) + "old-" + os.urandom(6).hex())


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


def _locked_here(folder: Path) -> bool:
    """Whether this process holds the exclusive install lock on ``folder``."""
    try:
        st = os.stat(folder)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _held.write


def _undo(done: Sequence[_Installed]) -> None:
    for item in reversed(done):
        with contextlib.suppress(OSError):
            item.rollback()


# -------------------------------------------------------------------------------- transactions

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
    path = Path(tempfile.mkdtemp(prefix=f"snncc-{os.getpid()}-"))
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
        _stage(lambda: [_install_file(tmp_path, path)], path)
        staged, ok = _deferred(path), True
    finally:
        if not staged:
            _discard(tmp_path, path)
            if not ok:
                _remove_if_empty(created)


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
        _stage(lambda: _install_dir(tmp, path, files, adopt), path)
        staged, ok = _deferred(path), True
    finally:
        if not staged:
            _discard(tmp, path)
            if not ok:
                _remove_if_empty(created)
