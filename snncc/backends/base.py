"""The backend protocol: check what can be handled before emitting anything."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from snncc.context import CompileContext, CompileOptions
from snncc.errors import Diagnostic
from snncc.ir import Model
from snncc.passes.base import Pass

__all__ = ["Backend", "Artifact"]


@dataclass
class Artifact:
    """What a backend wrote: the main path, every file, and facts for the compile report."""

    path: Path
    files: list[Path] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    #: the SynOp section the backend counted (``synops.json`` of a Loihi directory), or one that
    #: says why there is none; the compile report's ``synops``
    synops: dict[str, Any] | None = None


class Backend(abc.ABC):
    name: str
    #: "file" when -o names a file, "dir" when it names a directory
    output_kind: str = "file"
    #: files a directory output holds (checked against foreign files before any work)
    output_names: tuple[str, ...] = ()
    #: what :meth:`predict` runs, as the fidelity line names it ("SNN agrees with the ANN ...")
    fidelity_subject: str = "SNN"

    def lowering_passes(self, options: CompileOptions) -> Sequence[Pass]:
        """Target-specific passes run after insert-neurons."""
        return ()

    def check(self, model: Model, ctx: CompileContext) -> list[Diagnostic]:
        """Everything the backend cannot express, found before emission (empty = fine)."""
        return []

    def precheck(self, model: Model, ctx: CompileContext) -> list[Diagnostic]:
        """The structural part of :meth:`check`, on a rehearsal of the pipeline whose lambdas are
        placeholders: run before calibration so that the user waits for nothing. Must not report
        what depends on lambda (fixed-point ranges); the default is :meth:`check`."""
        return self.check(model, ctx)

    def predict(self, model: Model, ctx: CompileContext, feeds: dict[str, Any]
                ) -> Iterator[tuple[slice, Any, dict[str, Any] | None]] | None:
        """Run the compiled network as the target will, for the fidelity estimate.

        Returns an iterator over parts of the samples, each ``(rows, outputs [n, ...], per-site
        time-mean layer outputs or None)``, with ``rows`` the part's slice of ``feeds``; or None
        when the backend cannot evaluate itself (then no SNN fidelity is reported). One session or
        simulator serves every part, and the estimate keeps only running sums of each part's
        layers. ORT's folded and window models yield parts bounded in memory, so the estimate's
        memory does not grow with the held-out samples; Loihi, NIR and streaming models yield one
        part (outputs only, no layers).
        """
        return None

    def predict_variants(self, model: Model, ctx: CompileContext, feeds: dict[str, Any]
                         ) -> dict[str, dict[str, Any]]:
        """Other semantics the emitted files may run under, for the fidelity estimate: name ->
        ``{"what", "outputs" [N, ...], "advice"}`` (plus any counts to report, e.g.
        ``saturations``). Reported beside the main estimate and warned about below
        ``fidelity.WARN_BELOW`` with the advice; ``--min-agreement`` gates only the main one.
        Default: none."""
        return {}

    @abc.abstractmethod
    def emit(self, model: Model, ctx: CompileContext, out: Path) -> Artifact:
        """Write the output. The driver guarantees atomicity: ``out`` is a temporary path that is
        renamed into place only when emit returns without error."""
