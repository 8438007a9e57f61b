"""Export round trips: torch.export with dynamic height/width, ONNX checked by onnxruntime."""

import pytest
import torch

from efficientdet_graph.compile import compile_graph
from efficientdet_graph.compile.export import check_onnx, example_inputs, export_onnx, export_program

from test_compile import B0, randomize


@pytest.fixture(scope="module")
def module():
    return randomize(compile_graph("bifpn", 16, B0))


def test_torch_export_dynamic_height_width(module):
    program = export_program(module, 256)
    for size in (256, 384, 128 * 3):
        feats = example_inputs(module, (size, size + 128))
        with torch.no_grad():
            want = module(*feats)
        got = program.module()(*feats)
        for g, w in zip(got, want):
            assert g.shape == w.shape and (g - w).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["nasfpn", "qufpn"])
def test_torch_export_other_graphs(name):
    m = randomize(compile_graph(name, 8))
    program = export_program(m, 128)
    feats = example_inputs(m, 256)
    with torch.no_grad():
        for g, w in zip(program.module()(*feats), m(*feats)):
            assert (g - w).abs().max() <= 1e-5


def test_onnx_round_trip(module, tmp_path):
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (a test dependency)")
    pytest.importorskip("onnxruntime", reason="checking needs onnxruntime (a test dependency)")
    path = export_onnx(module, tmp_path / "bifpn.onnx", 256)
    assert path.stat().st_size > 10_000
    assert check_onnx(module, path, 256) <= 1e-4
    assert check_onnx(module, path, 384) <= 1e-4  # another size: the height/width are dynamic


def test_cli_export(edg, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = edg("export", "fpn", "--channels", "8", "--input-size", "128", "--onnx", tmp_path / "f.onnx")
    assert code == 0 and "max abs difference" in out
    diff = float(out.split("difference")[-1])
    assert diff <= 1e-4
