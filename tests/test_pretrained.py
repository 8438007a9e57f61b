"""``create_model(..., checkpoint=PATH)`` on an effdet checkpoint converted by ``edg convert``:
the path from effdet's published COCO weights, walked with random weights (nothing can be
downloaded here); effdet itself is the reference."""

import pytest
import torch

pytest.importorskip("effdet", reason="effdet is a test dependency: pip install '.[test]'")

from efficientdet_graph import CheckpointError, create_model  # noqa: E402

from test_effdet import max_diff, reference  # noqa: E402

SIZE = 128


def test_converted_checkpoint_loads_by_name(tmp_path, edg):
    ref = reference("efficientdet_d0", SIZE)
    torch.save(ref.state_dict(), tmp_path / "efficientdet_d0.pth")
    code, out, err = edg("convert", tmp_path / "efficientdet_d0.pth", "--model", "efficientdet-d0",
                         "-o", tmp_path / "d0.pt")
    assert code == 0, err
    ours = create_model("efficientdet-d0", image_size=SIZE, checkpoint=tmp_path / "d0.pt").eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    assert max_diff(rc, oc) <= 1e-4 and max_diff(rb, ob) <= 1e-4

    with pytest.raises(CheckpointError, match="do not fit"):
        create_model("efficientdet-d0", num_classes=3, checkpoint=tmp_path / "d0.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        create_model("efficientdet-d0", checkpoint=tmp_path / "missing.pt")
