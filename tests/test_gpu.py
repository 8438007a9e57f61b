"""GPU checks: skipped without CUDA, run on a GPU machine (see the closing notes for results)."""

import pytest
import torch

from efficientdet_graph.compile import compile_graph
from efficientdet_graph.compile.export import example_inputs

from test_compile import B0, randomize

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_channels_last_matches_cpu(dtype):
    m = randomize(compile_graph("bifpn", 64, B0))
    feats = example_inputs(m, 512, batch=2)
    with torch.no_grad():
        ref = m(*feats)
        mg = m.cuda().to(memory_format=torch.channels_last)
        fg = [f.cuda().to(memory_format=torch.channels_last) for f in feats]
        full = mg(*fg)
        with torch.autocast("cuda", dtype=dtype):
            half = mg(*fg)
    for r, f, h in zip(ref, full, half):
        assert (r - f.cpu()).abs().max() <= 1e-3
        assert h.dtype == dtype and (r - h.float().cpu()).abs().max() <= 0.05 * r.abs().max() + 0.05


@cuda
def test_cuda_torch_compile_fullgraph_and_backward():
    m = compile_graph("bifpn", 64, B0).cuda()
    feats = [f.cuda() for f in example_inputs(m, 512, batch=2)]
    compiled = torch.compile(m, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = compiled(*feats)
    sum(o.float().square().mean() for o in outs).backward()
    assert all(p.grad is not None for p in m.parameters())
