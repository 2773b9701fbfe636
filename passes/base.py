"""The pass contract.

A pass mutates a :class:`snncc.ir.Model` in place and returns a :class:`PassResult` that says what
changed (``counts``) and why each candidate site it left alone was declined (``declines``, with a
stable reason code). Passes never call ``cleanup()``, ``toposort()`` or the ONNX checker: the
pipeline does that once after each modifying pass. A pass that finds unsupported nodes collects
all of them and raises one :class:`snncc.errors.UnsupportedNodeError`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

from snncc.context import CompileContext
from snncc.ir import Model

__all__ = ["Pass", "PassResult", "Decline"]


@dataclass(frozen=True)
class Decline:
    """A candidate site a pass left alone: the node label, a reason code and a sentence."""

    node: str
    code: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"node": self.node, "code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class PassResult:
    modified: bool
    counts: Mapping[str, int] = field(default_factory=dict)
    declines: tuple[Decline, ...] = ()


class Pass(abc.ABC):
    """Base class. ``name`` is the kebab-case id used by ``--dump-after`` and in reports."""

    name: ClassVar[str]

    def requires(self, model: Model, ctx: CompileContext) -> None:
        """Raise :class:`snncc.errors.PreconditionError` if the graph is not ready for this pass."""

    @abc.abstractmethod
    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        """Mutate ``model`` in place and say what changed."""

    def __repr__(self) -> str:
        return f"<pass {self.name}>"
