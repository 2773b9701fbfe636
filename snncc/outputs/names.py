"""The names snncc gives the files it writes, and how it finds them again.

An output folder's :data:`MARKER` lists the files snncc put there. Temporaries and backups sit
beside their output as ``.NAME.snncc-PID-TID-...`` (:func:`_temp_prefix`, :func:`_backup_name`),
and an install into a folder leaves an intent record there while it runs: found later, under the
folder's lock, they are the :func:`leftovers` of an install that was killed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path


#: File that marks a directory as written by snncc; lists the files snncc put there.
MARKER = ".snncc-output.json"


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


#: the longest part of an output's name that its temporaries repeat: with the tag, the random
#: part and a backup's suffix (about 40 characters) a name stays within the usual 255-byte limit
#: (a 240-character -o had failed with 'File name too long' only after the whole compile)
_TEMP_NAME_MAX = 200


def _short(name: str) -> str:
    """The part of a file name that its temporaries repeat: at most :data:`_TEMP_NAME_MAX`
    bytes of it (a name of 245 bytes is legal; with the tag, the random part and a backup's
    suffix its temporaries must still fit the usual 255-byte limit)."""
    return os.fsencode(name)[:_TEMP_NAME_MAX].decode(errors="ignore") if \
        len(os.fsencode(name)) > _TEMP_NAME_MAX else name


def _temp_prefix(path: Path) -> str:
    """Name prefix of this process's (and thread's) temporaries beside ``path``."""
    return f".{_short(path.name)}.snncc-{os.getpid()}-{threading.get_ident() % 100000}-"


def _backup_name(path: Path) -> Path:
    return path.with_name(_temp_prefix(path) + "old-" + os.urandom(6).hex())


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
    exclusive lock on the folder (:func:`.locks._parents_locked`), and it removes them before
    it lets go: found under that lock, or the shared one a reader holds, they are the leftovers
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
