"""Typed errors and diagnostics.

Every user-facing failure is an :class:`SnnccError`. The CLI maps it to exit code 2 and prints the
message without a traceback (``--debug`` shows it). Messages always have the shape::

    <pass>: node <label> (<domain>::<op_type>): <what is wrong>. Hint: <how to fix>.

When several nodes are at fault, the checking code collects them all and raises once. Messages
are written with the CLI's flags; raised outside an ``snncc`` command (the Python API) they name
the API's keywords instead (:func:`api_wording`: ``-T 4`` -> ``timesteps=4``).
Tests assert on the stable ``code`` strings, never on prose. The codes are listed in README.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

__all__ = [
    "Diagnostic",
    "hints_once",
    "SnnccError",
    "ModelInputError",
    "UnsupportedNodeError",
    "OptionError",
    "OutputPathError",
    "FidelityError",
    "CalibrationError",
    "PassError",
    "PreconditionError",
    "VerificationError",
    "BackendCapabilityError",
    "RuntimeLibraryError",
    "api_wording",
    "cli_wording",
    "in_cli",
]


@dataclass(frozen=True)
class Diagnostic:
    """One finding about one graph site.

    ``code`` is a stable identifier such as ``SNN-E201``; ``node`` is a node label from
    :func:`snncc.ir.node_label` (or a tensor / file name where no node applies).
    """

    code: str
    message: str
    pass_name: str = ""
    node: str = ""
    hint: str = ""
    severity: str = "error"

    def format(self) -> str:
        where = f"{self.pass_name}: " if self.pass_name else ""
        if self.node:
            where += f"node {self.node}: "
        text = f"{where}{self.message}"
        if self.hint:
            text += f". Hint: {self.hint}"
        return f"[{self.code}] {text}"


class SnnccError(Exception):
    """Base class of every error caused by user input or configuration."""

    code = "SNN-E000"

    def __init__(self, message: str | None = None, *, diagnostics: Sequence[Diagnostic] = (),
                 code: str | None = None, hint: str = ""):
        # worded for the caller like the message (a script reads .diagnostics too)
        self.diagnostics = tuple(diagnostics) if in_cli() else tuple(
            dataclasses.replace(d, message=api_wording(d.message), hint=api_wording(d.hint))
            for d in diagnostics)
        if code is not None:
            self.code = code
        self.hint = api_wording(hint)
        if message is None:
            message = f"{len(self.diagnostics)} problem(s) found"
        self.message = api_wording(message)
        super().__init__(self.render())

    def __reduce__(self):
        # pickled (a worker process's error) or copied, the error keeps its text: Exception's
        # own reduce called __init__ again with the rendered text as the message, which
        # rendered '[SNN-E300] [SNN-E354] ...'
        return _restore_error, (type(self), self.args, dict(self.__dict__))

    @property
    def codes(self) -> set[str]:
        """All codes carried by this error, its own and its diagnostics'."""
        return {self.code, *(d.code for d in self.diagnostics)}

    def render(self) -> str:
        head = f"[{self.code}] {self.message}"
        if self.hint:
            head += f". Hint: {self.hint}"
        if not self.diagnostics:
            return api_wording(head)
        hints = hints_once([(d.hint, d.node) for d in self.diagnostics])
        return api_wording("\n".join([head + ":"] + [
            f"  - {dataclasses.replace(d, hint=h).format()}"
            for d, h in zip(self.diagnostics, hints)]))


def _restore_error(cls: type, args: tuple, state: dict) -> SnnccError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


# The messages name the CLI's flags. Raised to a Python caller (not under ``cli_wording``), they
# name the keyword arguments of make_options / compile_model / run_compiled instead. Per thread:
# main() may run in one thread while another calls the API.
_STATE = threading.local()


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Errors and warnings made inside name CLI flags (``snncc`` commands), not keywords."""
    before = in_cli()
    _STATE.cli = True
    try:
        yield
    finally:
        _STATE.cli = before


def in_cli() -> bool:
    """Whether the code runs under :func:`cli_wording` (an ``snncc`` command) in this thread."""
    return getattr(_STATE, "cli", False)


def _quoted(key: str) -> Callable[[re.Match], str]:
    """``--neuron gn`` -> ``neuron='gn'``; ``--calib-method max|mse`` ->
    ``calib_method='max'|'mse'``."""
    def repl(m: re.Match) -> str:
        parts = re.split(r"(\|| or | / )", m.group(1))   # values, separators, values...
        return key + "=" + "".join(p if i % 2 else f"'{p}'" for i, p in enumerate(parts))
    return repl


def _shape(m: re.Match) -> str:
    dims = ", ".join(m.group(2).split("x")) + ("," if "x" not in m.group(2) else "")
    dims = re.sub(r"<(\w+)>", r"\1", dims)
    return f"input_shapes={{'{m.group(1)}': ({dims})}}"


_FLAG = r"(?<![\w-]){}(?![\w-])"
#: every CLI flag a message may name -> the API's keyword (make_options, compile_model, ...)
_KEYWORDS = {
    "-T": "timesteps", "--timesteps": "timesteps", "-L": "levels", "--levels": "levels",
    "--neuron": "neuron", "--target": "target", "--schedule": "schedule", "--maxpool": "maxpool",
    "--calib-method": "calib_method", "--verify": "verify", "--calib": "calib_path",
    "--calib-samples": "calib_max_samples", "--fidelity-samples": "fidelity_samples",
    "--min-agreement": "min_agreement", "--batch-size": "batch_size",
    "--percentile": "calib_percentile", "--mean": "calib_mean", "--std": "calib_std",
    "--input-shape": "input_shapes", "--report": "report_path", "--dump-after": "dump_after",
    "--neuron-param": "neuron_params", "--tau": "neuron_params['tau']",
    "--mt-mode": "neuron_params['mode']", "--mt-n": "neuron_params['n']",
    "--mt-preset": "neuron_params['preset']",
    "-o": "out (the output path)", "--output": "out (the output path)"}
#: flags that take one of a few words: "--neuron gn" -> neuron='gn'
_CHOICES = {"--neuron": "if|bitserial|mt|gn|srp|lif", "--target": "qann|ort|loihi|nir",
            "--schedule": "auto|folded|window|streaming", "--maxpool": "auto|avg|gate",
            "--calib-method": "snn|mse|percentile|max", "--verify": "off|ends|each"}
#: flags that take a number: "-T 4" -> timesteps=4
_NUMBERS = ("-T", "--timesteps", "-L", "--levels", "--calib-samples", "--fidelity-samples",
            "--min-agreement", "--batch-size", "--percentile")
#: flags without a value
_SWITCHES = {"--per-channel": "calib_per_channel=True", "--per-layer": "calib_per_channel=False",
             "--no-fidelity": "fidelity_samples=0", "--allow-analog": "allow_analog=True",
             "--allow-lossy": "allow_lossy=True", "--no-bias-shift": "bias_shift=False",
             "--bias-shift": "bias_shift=True", "--no-library": "use_library=False",
             "--force": "force=True"}


@functools.cache
def _api_words() -> list[tuple[re.Pattern, str | Callable[[re.Match], str]]]:
    """The rewrites, most specific first (compiled on first use, not at import)."""
    words: list[tuple[str, str | Callable[[re.Match], str]]] = [
        (r"rerun with --debug( for the traceback)?", "see the chained exception (__cause__) "
         "for the traceback"),
        (_FLAG.format(r"--input-shape ([\w./:-]+)=([\w<>]+(?:x[\w<>]+)*)"), _shape),
        (_FLAG.format(r"--(mean|std) (-?[\d.]+(?:,-?[\d.]+)*)"),
         lambda m: f"calib_{m.group(1)}=({m.group(2).replace(',', ', ')}"
                   + ("," if "," not in m.group(2) else "") + ")"),
        (_FLAG.format(r"--neuron-param (\w+)=([\w.,-]+)"),
         lambda m: f"neuron_params={{'{m.group(1)}': {m.group(2)}}}"),
        (_FLAG.format(r"--mean/--std"), "calib_mean/calib_std"),
        (_FLAG.format(r"-o ([\w~-]*[./][\w./~-]*)"), "out='\\1'"),   # a path, not "-o names a"
        *[(_FLAG.format(flag + rf" ((?:{values})(?:(?:\|| or | / )(?:{values}))*)"),
           _quoted(_KEYWORDS[flag])) for flag, values in _CHOICES.items()],
        *[(_FLAG.format(flag + r" (\d[\d.e-]*)"), _KEYWORDS[flag] + "=\\1")
          for flag in _NUMBERS],
        *[(_FLAG.format(flag), key) for flag, key in (*_SWITCHES.items(), *_KEYWORDS.items())],
    ]
    return [(re.compile(pattern), repl) for pattern, repl in words]


#: characters that drive a terminal rather than print: C0 and C1 controls (ESC starts the
#: sequences that retitle a window or clear the screen; a newline forges a line) and the
#: bidirectional overrides that reorder what a reader sees
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LAYOUT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
                                  "\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str, keep_layout: bool = False) -> str:
    """``text`` with its control characters as ``\\xNN`` / ``\\uNNNN`` escapes; with
    ``keep_layout``, newline, tab and carriage return stay (snncc's own output uses those)."""
    def escaped(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return (_CONTROLS_BUT_LAYOUT if keep_layout else _CONTROLS).sub(escaped, text)


def api_wording(text: str) -> str:
    """``text`` as a Python caller reads it: under :func:`cli_wording` unchanged, else with the
    CLI's flags written as the API's keywords (``-T 4`` -> ``timesteps=4``, ``--per-channel`` ->
    ``calib_per_channel=True``)."""
    if in_cli() or "-" not in text:
        return text
    # a shell command quoted in a message keeps its flags: "snncc compile --target loihi"
    parts = re.split(r"(snncc (?:compile|run|report|finetune|inspect)\b[^;)\n]*)", text)
    for i in range(0, len(parts), 2):
        for pattern, repl in _api_words():
            parts[i] = pattern.sub(repl, parts[i])
    return "".join(parts)


def hints_once(lines: Sequence[tuple[str, str]]) -> list[str]:
    """Per (hint, node) line, the hint to print: a hint shared by several lines in full once,
    at the first line with a node, then "as for <that node>" (its label without the op)."""
    first: dict[str, str] = {}
    out = []
    for hint, node in lines:
        if hint and hint in first:
            hint = f"as for {first[hint]}"
        elif hint and node:
            first[hint] = node.split(" (")[0]
        out.append(hint)
    return out


class ModelInputError(SnnccError):
    """The model file itself is unusable: unreadable, corrupt, cyclic, dynamic without a hint..."""

    code = "SNN-E100"


class UnsupportedNodeError(SnnccError):
    """One or more nodes have no spiking (or supported) equivalent. Carries one diagnostic each."""

    code = "SNN-E200"


class OptionError(SnnccError):
    """An option value is invalid (unknown neuron, T <= 0, bad neuron parameter...)."""

    code = "SNN-E300"


class OutputPathError(OptionError):
    """An output path would overwrite an input, a foreign directory or another output."""

    code = "SNN-E360"


class FidelityError(SnnccError):
    """The compiled network is further from the ANN than ``--min-agreement`` allows."""

    code = "SNN-E370"


class CalibrationError(SnnccError):
    """Calibration data is missing, unreadable or does not fit the model inputs."""

    code = "SNN-E400"


class PassError(SnnccError):
    """An unexpected failure inside a pass, wrapped with the pass name and the passes before it."""

    code = "SNN-E500"

    def __init__(self, pass_name: str, previous: Iterable[str], cause: BaseException):
        self.pass_name = pass_name
        self.previous = tuple(previous)
        before = ", ".join(self.previous) or "none"
        super().__init__(f"pass '{pass_name}' failed (passes run before it: {before}): "
                         f"{type(cause).__name__}: {cause}",
                         hint="rerun with --debug for the traceback and report it with the model")


class PreconditionError(SnnccError):
    """A pass was asked to run on a graph that does not meet its preconditions."""

    code = "SNN-E510"


class VerificationError(SnnccError):
    """The structural verifier found a broken graph."""

    code = "SNN-E520"


class BackendCapabilityError(SnnccError):
    """The backend cannot express some part of the graph; checked before anything is emitted."""

    code = "SNN-E600"


class RuntimeLibraryError(SnnccError):
    """The C++ kernel library is missing or could not be loaded."""

    code = "SNN-E700"
