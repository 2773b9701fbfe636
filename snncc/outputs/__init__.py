"""Output paths: snncc writes only its declared outputs, atomically, and destroys nothing else.

Every command that writes files declares them first (:func:`check_outputs`) and then writes each
through :func:`atomic_file` or :func:`atomic_dir`, inside one :func:`transaction`. One job per
module:

* :mod:`~snncc.outputs.paths`: what may be written, checked before any work starts and all
  reported at once (the rules: never an input, never a place, same kind only, ...);
* :mod:`~snncc.outputs.transaction`: all outputs of one command or none, with signals held back
  while they are renamed into place;
* :mod:`~snncc.outputs.install`: moving a finished output into place, and back when a later one
  fails;
* :mod:`~snncc.outputs.locks`: ``flock`` on output folders, shared for readers
  (:func:`reading`), exclusive for installs;
* :mod:`~snncc.outputs.names`: the names of snncc's markers, temporaries and backups, and the
  :func:`leftovers` of an install that was killed.
"""
from __future__ import annotations

from snncc.outputs.install import write_errors
from snncc.outputs.locks import reading
from snncc.outputs.names import MARKER, leftovers
from snncc.outputs.paths import (DATA_SUFFIXES, KNOWN_SUFFIXES, REPORT_MARK, Output,
                                 check_outputs, check_suffix, default_output,
                                 external_data_files, file_output, same_path, written_by_snncc)
from snncc.outputs.transaction import (atomic_dir, atomic_file, installed, note_signal, scratch,
                                       scratch_dir, signals_recorded, take_signal, temp_dir,
                                       transaction)

__all__ = ["MARKER", "Output", "check_outputs", "check_suffix", "KNOWN_SUFFIXES", "atomic_file",
           "atomic_dir", "default_output", "same_path", "write_errors", "transaction",
           "installed", "temp_dir", "written_by_snncc", "file_output", "scratch_dir", "scratch",
           "note_signal", "take_signal", "signals_recorded", "reading", "leftovers",
           "REPORT_MARK", "DATA_SUFFIXES", "external_data_files"]
