"""Unusual environments (a helper's audit): a non-UTF-8 locale, a full disk under stdout, a
deleted current directory, no scratch space, a cluster's WORLD_SIZE. Each had been an internal
error, a wrong exit code or a silently incomplete output."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snncc.errors import OutputPathError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODEL = str(EXAMPLES / "digits_cnn.onnx")


def _snncc(args, tmp_path, **env):
    return subprocess.run([sys.executable, "-m", "snncc", *args], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300)


def test_a_non_ascii_name_on_an_ascii_stdout_is_escaped_not_an_internal_error(tmp_path):
    model = tmp_path / "modèle.onnx"
    model.write_bytes(Path(MODEL).read_bytes())
    p = _snncc(["inspect", str(model)], tmp_path, PYTHONIOENCODING="ascii")
    assert p.returncode == 0 and "mod\\xe8le.onnx" in p.stdout, p.stderr


def test_report_writes_its_page_in_utf8_under_a_c_locale(tmp_path):
    """The page holds 'k·k·C_in': report failed under PYTHONUTF8=0 LC_ALL=C (exit 1)."""
    p = _snncc(["report", MODEL, "--data", str(EXAMPLES / "digits_cnn_test.npz"), "--samples",
                "16", "-T", "2", "-o", str(tmp_path / "r.md"), "-q"], tmp_path,
               PYTHONUTF8="0", LC_ALL="C")
    assert p.returncode == 0, p.stderr
    assert "·" in (tmp_path / "r.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_stdout_is_an_error(tmp_path):
    """`snncc inspect --json m.onnx > /dev/full` exited 0 with nothing written."""
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "snncc", "inspect", "--json", MODEL],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 2 and "[SNN-E369] writing the standard output failed" in p.stderr
    with open("/dev/full", "w") as full:   # argparse's own printing counts too (a review)
        p = subprocess.run([sys.executable, "-m", "snncc", "--version"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 2 and "SNN-E369" in p.stderr


def test_outputs_when_the_current_directory_was_deleted(tmp_path, monkeypatch):
    """Every command that writes had failed with an internal FileNotFoundError, absolute -o
    included; a relative -o is E369."""
    from snncc.outputs import Output, check_outputs

    def gone():
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(os, "getcwd", gone)
    monkeypatch.setattr(Path, "cwd", classmethod(lambda cls: gone()))
    check_outputs([Output(tmp_path / "o.onnx")])   # absolute: fine
    with pytest.raises(OutputPathError) as info:
        check_outputs([Output(Path("o.onnx"))])
    assert info.value.codes == {"SNN-E369"} and "no longer exists" in info.value.render()


def test_no_scratch_space_is_e369(monkeypatch):
    import tempfile

    from snncc.outputs import scratch_dir

    def none(*args, **kwargs):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "mkdtemp", none)
    with pytest.raises(OutputPathError) as info:
        with scratch_dir():
            pass
    assert info.value.code == "SNN-E369" and "TMPDIR" in info.value.hint


@pytest.mark.parametrize("argv, env, expected", [
    (["report", "m.onnx"], {"WORLD_SIZE": "1"}, False),   # a cluster's variable: cleanup stays
    (["report", "m.onnx"], {"WORLD_SIZE": "4"}, False),
    (["finetune", "m.onnx"], {"WORLD_SIZE": "1"}, False),
    (["finetune", "m.onnx"], {"WORLD_SIZE": "2"}, True),
    (["-v", "finetune", "m.onnx"], {"TORCHELASTIC_RUN_ID": "x"}, True),
    (["finetune", "m.onnx"], {"WORLD_SIZE": "many"}, False),
])
def test_only_finetune_under_torchrun_keeps_the_default_sigterm(monkeypatch, argv, env, expected):
    from snncc.cli import _torchrun_finetune

    for key in ("WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _torchrun_finetune(argv) is expected


def test_a_name_the_file_system_cannot_hold_is_refused_before_the_work(tmp_path):
    """A 250-byte -o was a valid name, its manifest (-o + '.json') not: compile failed with
    'File name too long' after the whole run."""
    from snncc.outputs import Output, check_outputs

    name = "n" * 250 + ".onnx"
    check_outputs([Output(tmp_path / name)])
    with pytest.raises(OutputPathError) as info:
        check_outputs([Output(tmp_path / name), Output(tmp_path / (name + ".json"),
                                                       option="-o (manifest)")])
    assert info.value.codes == {"SNN-E369"} and "longer than this file system allows" in \
        info.value.render()


def test_a_relative_xdg_cache_home_is_ignored_and_a_library_folder_is_named(monkeypatch, tmp_path):
    """The XDG spec says a relative XDG_CACHE_HOME is invalid (it had put the kernel cache under
    the current directory); SNNCC_RUNTIME_LIB naming a folder said it 'does not exist'."""
    from snncc.errors import RuntimeLibraryError
    import onnxruntime as ort

    from snncc.runtime import ENV_VAR, register
    from snncc.runtime.build import _cache

    monkeypatch.setenv("XDG_CACHE_HOME", "rel/cache")
    assert _cache() == Path.home() / ".cache" / "snncc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cache() == tmp_path / "snncc"
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(RuntimeLibraryError) as info:
        register(ort.SessionOptions())
    assert info.value.code == "SNN-E701" and "is a directory" in info.value.message


def test_a_name_from_the_model_never_drives_the_terminal(tmp_path):
    """A node and tensor named with ESC sequences (retitle the window, clear the screen) and a
    newline printed them raw: inspect, compile's fidelity line and run's table forged a
    'snncc compile: wrote /tmp/fake.onnx' line. Every control character prints as an escape."""
    import onnx

    evil = "r\x1b]0;PWNED\x07\x1b[2J\nsnncc compile: wrote /tmp/fake.onnx\u202e"
    model = onnx.load(MODEL)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    old = relu.output[0]
    relu.name = evil
    for node in model.graph.node:
        node.input[:] = [evil if i == old else i for i in node.input]
    relu.output[0] = evil
    path = tmp_path / "evil.onnx"
    onnx.save(model, path)
    p = _snncc(["inspect", str(path)], tmp_path)
    assert p.returncode == 0, p.stderr
    calib = str(EXAMPLES / "digits_cnn_calib.npz")
    c = _snncc(["compile", str(path), "-T", "2", "--calib", calib, "-o", "o.onnx"], tmp_path)
    assert c.returncode == 0, c.stderr
    r = _snncc(["run", "o.onnx", "--input", str(EXAMPLES / "digits_cnn_test.npz")], tmp_path)
    assert r.returncode == 0, r.stderr
    for text in (p.stdout, p.stderr, c.stdout, c.stderr, r.stdout, r.stderr):
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
        assert not any(line.startswith("snncc compile: wrote /tmp/fake")
                       for line in text.splitlines())
    assert "r\\x1b]0;PWNED" in p.stdout and "fake.onnx\\u202e/IFNeuron" in r.stdout


def test_shown_escapes_controls_and_cuts_long_names():
    from snncc.ir import shown

    assert shown("a\x1b[31mb\nc\u202ed") == "a\\x1b[31mb\\x0ac\\u202ed"
    long = shown("x" * 100_000)
    assert len(long) <= 200 and "…" in long
    assert shown("/features/features.0/Relu") == "/features/features.0/Relu"
