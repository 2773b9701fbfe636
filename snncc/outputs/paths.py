"""What may be written: every command declares its outputs, checked before any work starts.

:func:`check_outputs` applies these rules and reports every problem at once:

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
  there) or an empty directory; an existing file in its place is refused (SNN-E363). A file
  output that is a symbolic link is refused (SNN-E363): the rename into place would replace the
  link, not write through it (a directory output's files are renamed into it, through a link).
* **A place that can hold it.** An output whose parent is a file, or whose nearest existing
  parent directory is not writable (or a file output with no name, like ``.``), is refused
  (SNN-E369), as is ``-`` (standard output is not a file output here); a write that still
  fails (a full disk, ``/proc``) is reported with that code too.
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
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from snncc.errors import Diagnostic, OutputPathError
from snncc.outputs.names import MARKER, _dir_contents, _marker_files, _pending_names


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


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing
    parent) takes; 255 where the system does not say."""
    for place in (folder, *folder.parents):
        try:
            return int(os.pathconf(place, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            continue
    return 255


def _place(where) -> Path | None:
    """The current or home directory, resolved; None where there is none (a deleted current
    directory, no HOME and no passwd entry: both had been internal errors for every command
    that writes, absolute -o included)."""
    try:
        return where().resolve()
    except (OSError, RuntimeError, KeyError):
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
    cwd, home = _place(Path.cwd), _place(Path.home)
    seen: list[Output] = []
    places: set[str] = set()
    for out in outputs:
        where = f"{out.option} '{out.path}'"
        try:
            path = _resolve(out.path)
        except FileNotFoundError:   # relative, and the current directory was deleted
            diags.append(Diagnostic("SNN-E369", f"{where} is relative to a current directory "
                                    "that no longer exists", command,
                                    hint="cd to an existing folder, or give an absolute path"))
            continue
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
                                  or (cwd is not None and _is_within(cwd, path))):
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
        if str(out.path) == "-":
            # the Unix convention for stdout, which snncc's outputs do not follow: a file (or a
            # Loihi folder) named '-' had appeared in the current directory
            diags.append(Diagnostic(
                "SNN-E369", f"{where}: '-' (standard output) is not supported here; it would "
                f"write a {'folder' if out.kind == 'dir' else 'file'} named '-'", command,
                hint=f"name a {'folder' if out.kind == 'dir' else 'file'}, e.g. "
                f"{out.option.split()[0]} {out.example} (one named '-' needs a folder in its "
                "path, e.g. out/-)" + ("; `snncc run --json` prints its results on stdout"
                                        if out.example.endswith(".npz") else "")))
            continue
        if len(os.fsencode(path.name)) > _name_max(path.parent):   # (the manifest of a
            diags.append(Diagnostic(                                # 250-byte -o had failed
                "SNN-E369", f"{where}: its name is longer than this file system allows "  # at
                f"({len(os.fsencode(path.name))} bytes)", command,     # the end of the work)
                hint="name a shorter file"))
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
        if out.kind == "file" and os.path.islink(path):
            # an output is replaced by a rename, which replaces the link itself, not what it
            # points to: '--report /dev/stdout' with stdout redirected to a file had replaced
            # the system's /dev/stdout link with a regular file (as root), and a user's
            # 'latest.onnx -> v3.onnx' would have lost its link while v3.onnx stayed old
            target = os.readlink(path)
            diags.append(Diagnostic(
                "SNN-E363", f"{where} is a symbolic link (to '{target}'); snncc writes its "
                "outputs by renaming a finished file into place, which would replace the link, "
                "not write through it", command,
                hint=("remove the link, or choose another -o" if out.implied else
                      "name the link's target itself, or another path") + (
                    "; to read a report on stdout, write it to a file and cat it"
                    if str(out.path).startswith(("/dev/", "/proc/")) else "")))
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
    diags = list(dict.fromkeys(diags))   # an input named twice (--data and --val): said once
    if diags:
        raise OutputPathError(f"{command}: refusing to write the output", diagnostics=diags,
                              code=diags[0].code)
