"""snncc report as a user met it (a helper's audit): the per-layer sections are the largest T's
whatever order -T lists, each T runs once, a Loihi fixed point that cannot hold the largest T
falls back to ORT when no target was asked for, --maxpool avg is said, plot labels are unique."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from snncc.cli import main
from snncc.report import short_labels

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _data(tmp_path: Path, name: str, n: int) -> Path:
    with np.load(EXAMPLES / f"{name}_test.npz") as d:
        np.savez(tmp_path / "t.npz", x=d["x"][:n], y=d["y"][:n])
    return tmp_path / "t.npz"


def test_sections_are_the_largest_ts_and_each_t_runs_once(tmp_path, capsys):
    """-T 8,2 had given T = 2's spikes, SynOps and energy under an accuracy table of T = 2 and
    8, saying so only by '2 slices'; -T 4,4 ran twice and tabled two rows."""
    data = _data(tmp_path, "mnist", 24)
    assert main(["report", str(EXAMPLES / "mnist_cnn.onnx"), "--data", str(data), "--calib",
                 str(EXAMPLES / "mnist_calib.npz"), "-T", "4,2,4", "--target", "ort",
                 "--maxpool", "avg", "-o", str(tmp_path / "r.md")]) == 0
    page = (tmp_path / "r.md").read_text()
    assert capsys.readouterr().err.count("compiling and running the ONNX Runtime SNN") == 2
    assert "| 2 |" in page and page.count("| 4 |") == 1 and "ORT SNN (T=4)" in page
    assert "at the largest T (4)" in page and "4 slices." in page
    assert "--maxpool avg: every MaxPool an AveragePool" in page
    # the columns say what they count (an audit read SynOps beside a layer's own events)
    assert "| SynOps in |" in page and "Spike rate: events / (neurons x slices)" in page


def test_a_loihi_fixed_point_failure_falls_back_to_ort_by_default(tmp_path, capsys):
    """bit-serial at T = 16 leaves Loihi too few fraction bits (E632): the default target had
    failed the whole report after T = 2's work; it now reports ORT, saying why."""
    data = _data(tmp_path, "digits_cnn", 16)
    assert main(["report", str(EXAMPLES / "digits_cnn.onnx"), "--data", str(data), "--calib",
                 str(EXAMPLES / "digits_cnn_calib.npz"), "-T", "2,16", "--neuron", "bitserial",
                 "-o", str(tmp_path / "r.md")]) == 0
    assert "target ort: the Loihi compile failed at T = 16" in capsys.readouterr().err
    page = (tmp_path / "r.md").read_text()
    assert "target ort" in page and "Loihi emulated" not in page and "fraction bits" in page


def test_plot_links_are_percent_encoded():
    """A page named 'my run #1.html' had linked its plots as 'my run ' (the rest read as a
    fragment), and the Markdown link held a space, which ends it."""
    from snncc.report import _Page

    for as_html, want in ((True, 'src="my%20run%20%231_files/a.png"'),
                          (False, "(my%20run%20%231_files/a.png)")):
        page = _Page(as_html)
        page.image("my run #1_files/a.png", "a")
        assert want in page.render("t")


def test_plot_labels_are_unique():
    names = ["/stem/stem.0/stem.0.2/Relu/IFNeuron",
             "/layers/layers.0/layers.0.0/relu1/Relu/IFNeuron",
             "/layers/layers.1/layers.1.0/relu1/Relu/IFNeuron", "/a/MaxPool", "/a/MaxPool"]
    labels = short_labels(names)
    assert labels[:3] == ["stem.0.2", "layers.0.0/relu1", "layers.1.0/relu1"]
    assert len(set(labels)) == len(labels)


def test_labels_beyond_the_outputs_are_refused(tmp_path, capsys):
    """report scored labels 10 on a 10-output net as misses (92 % shown as 73 %); run refused
    the same file (E680)."""
    test = np.load(EXAMPLES / "mnist_test.npz")
    y = test["y"][:32].copy()
    y[:5] = 10
    np.savez(tmp_path / "d.npz", x=test["x"][:32], y=y)
    assert main(["report", str(EXAMPLES / "mnist_cnn.onnx"), "--data", str(tmp_path / "d.npz"),
                 "--target", "ort", "-o", str(tmp_path / "r.md")]) == 2
    assert "[SNN-E680]" in capsys.readouterr().err and not (tmp_path / "r.md").exists()


def test_a_second_page_with_the_same_stem_does_not_take_the_first_ones_plots(tmp_path, capsys):
    """report -o rep.html, then report -o rep.md: both pages use rep_files/, and the second
    replaced the first one's plots without a word (a helper)."""
    data = _data(tmp_path, "mnist", 8)
    base = ["report", str(EXAMPLES / "mnist_cnn.onnx"), "--data", str(data), "--target", "ort",
            "--samples", "8", "-T", "2"]
    assert main([*base, "-o", str(tmp_path / "rep.html")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "rep_files").iterdir()}
    assert main([*base, "-o", str(tmp_path / "rep.md")]) == 2
    assert "[SNN-E364]" in capsys.readouterr().err and not (tmp_path / "rep.md").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "rep_files").iterdir()} == before
    assert main([*base, "-o", str(tmp_path / "rep.html")]) == 0    # its own page: replaced


def test_quiet_prints_nothing_on_success(tmp_path, capsys):
    """compile and finetune had -q; report refused it ('unrecognized arguments')."""
    data = _data(tmp_path, "mnist", 8)
    assert main(["report", str(EXAMPLES / "mnist_cnn.onnx"), "--data", str(data), "--calib",
                 str(EXAMPLES / "mnist_calib.npz"), "--target", "ort", "--samples", "8", "-T",
                 "2", "-q", "-o", str(tmp_path / "r.md")]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == "" and (tmp_path / "r.md").is_file()


def test_input_shape_fixes_dynamic_height_and_width(tmp_path, capsys):
    """An export with dynamic H and W: report's E114 told the user to pass --input-shape, which
    report did not take ('unrecognized arguments'). It takes it now, and without it the shape
    comes from the --data samples, as compile takes it from --calib."""
    import onnx

    model = onnx.load(str(EXAMPLES / "digits_cnn.onnx"))
    for d in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.dim_param = "hw"
    onnx.save(model, str(tmp_path / "hw.onnx"))
    data = _data(tmp_path, "digits_cnn", 8)
    args = ["report", str(tmp_path / "hw.onnx"), "--data", str(data), "-T", "2", "--target",
            "ort", "-o", str(tmp_path / "r.md"), "-q"]
    assert main(args) == 0 and (tmp_path / "r.md").is_file()
    (tmp_path / "r.md").unlink()
    assert main(args + ["--input-shape", "1x1x8x8"]) == 0 and (tmp_path / "r.md").is_file()


def test_an_analog_hint_names_compile_not_report_s_own_flags(tmp_path, capsys):
    """report's E201 hint said 'or compile with --allow-analog', a flag report does not take."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(0)
    w = {k: numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), k)
         for k, s in (("w1", (2, 1, 3, 3)), ("w2", (2, 2, 3, 3)), ("fw", (3, 2 * 4 * 4)))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["s"]), helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 1, 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])], list(w.values()))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 8, 8), np.float32))
    assert main(["report", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                 "--target", "ort", "-o", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert "SNN-E201" in err and "snncc compile --allow-analog (report runs no analog" in err


def test_markdown_pages_show_names_from_the_model_literally():
    """A layer named '<script>alert(1)</script>\\n## INJECTED | x |' went into the Markdown page
    raw: the script for any renderer that keeps HTML, a heading that broke the table. The HTML
    page was escaped; the Markdown one now is too, and snncc's own prose keeps its emphasis."""
    from snncc.report import _Page

    evil = "<script>alert(1)</script>\n## INJECTED | x |"
    page = _Page(False)
    page.heading(evil)
    page.table(["layer", "events"], [[evil, 1.5]])
    page.para("**Total**: 3 SynOps <b>")
    page.image("f/x.png", evil)
    text = page.render("t")
    assert "<script>" not in text and "\n## INJECTED" not in text and "<b>" not in text
    row = next(line for line in text.splitlines() if line.startswith("| &lt;script"))
    assert row.count(" | ") == 1 and row.endswith(" | 1.5 |")
    assert "**Total**: 3 SynOps &lt;b&gt;" in text
