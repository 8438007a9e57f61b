"""``edg models``: every built-in model spec, counted on the meta device."""

import json

import torch

from efficientdet_graph.model import builtin_models, create_model


def test_models_lists_every_builtin_with_real_parameter_counts(edg):
    code, out, _ = edg("models", "--json")
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out)}
    assert set(rows) == set(builtin_models()) and "efficientdet-d7x" in rows
    # the meta-device count equals the parameters of the real module
    with torch.device("cpu"):
        micro = create_model("micro")
    assert rows["micro"]["params"] == sum(p.numel() for p in micro.parameters())
    assert rows["efficientdet-d0"]["image_size"] == 512 and rows["efficientdet-d0"]["flops"] > 2e9


def test_schema_model_lists_every_model_spec_field(edg):
    from efficientdet_graph.spec import ModelSpec

    code, out, _ = edg("schema", "--model")
    assert code == 0
    schema = json.loads(out)
    assert set(schema["properties"]) == set(ModelSpec.model_fields) and schema["additionalProperties"] is False
    code, out, _ = edg("schema")
    assert "nodes" in json.loads(out)["properties"]
