"""Regression tests for hostile input (issue 11): every spec gives a located error,
never a traceback, a hang or a silently different graph."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch

from efficientdet_graph.compile import compile_graph, module_name
from efficientdet_graph.errors import SpecError
from efficientdet_graph.model.build import build_model, load_model_spec
from efficientdet_graph.passes import load_graph
from efficientdet_graph.spec import ModelSpec, read_spec_text
from efficientdet_graph.spec.builtin import builtin_dir

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): ")
BIFPN = (builtin_dir("graphs") / "bifpn.yaml").read_text()


def _spec_error(path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_graph(path)
    for line in str(info.value).splitlines():
        assert LOCATED.match(line), line
    return info.value


def _write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- spec reading ---------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x00", "\x0c", "\x1b", "\x7f"])
def test_control_character_is_located(tmp_path, char):
    text = BIFPN.replace("description:", f"description: x{char}", 1)
    line = text[: text.index(char)].count("\n") + 1
    err = _spec_error(_write(tmp_path, text))
    assert err.problems[0].line == line
    assert f"U+{ord(char):04X}" in str(err)


def test_deep_nesting_is_located_not_recursion_error(tmp_path):
    err = _spec_error(_write(tmp_path, "name: x\ndescription: " + "[" * 600 + "]" * 600 + "\n"))
    assert err.problems[0].line == 2 and "nested" in str(err)


@pytest.mark.parametrize("text", [
    BIFPN.replace("name: bifpn", "name: !!int abc"),
    BIFPN + "!!float abc: 1\n",
    BIFPN.replace("description:", "description: !!timestamp nope\nx:", 1),
    BIFPN.replace("name: bifpn", "name: !!bool maybe"),
    BIFPN.replace("name: bifpn", "name: !!int ''"),
])
def test_failing_explicit_tag_is_located(tmp_path, text):
    err = _spec_error(_write(tmp_path, text))
    assert any("tag" in p.message and p.line > 1 for p in err.problems)


def test_long_and_nul_references_are_located_at_the_naming_key(tmp_path):
    for ref in ["a" * 300 + ".yaml", '"a\\0b.yaml"', "/" + "b/" * 3000 + "c.yaml"]:
        err = _spec_error(_write(tmp_path, f"name: x\nderive: {{from: {ref}}}\n"))
        assert err.problems[0].file.endswith("g.yaml") and err.problems[0].line == 2


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_device_files_are_refused_not_read(tmp_path, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    err = _spec_error(_write(tmp_path, f"name: x\nderive: {{from: {device}}}\n"))
    assert "regular file" in str(err) and err.problems[0].line == 2
    with pytest.raises(SpecError, match="regular file"):
        load_graph(device)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="regular file"):
        load_graph(fifo)  # before the fix: blocks forever in open()


def test_many_unknown_names_do_not_cost_minutes(tmp_path):
    # 2,000 nodes, each naming two unknown inputs: before the fix, a close-match hint
    # per name over all nodes (quadratic; minutes of CPU). Counted in hint calls, not time.
    from efficientdet_graph.graph import build as gb

    calls = []
    real = gb.close_match

    def counting(word, candidates):
        calls.append(word)
        return real(word, candidates)

    lines = ["name: slow", "levels: [3, 4]", "nodes:"]
    lines += [f"  - {{id: n{i}, level: 3, inputs: [missing{i}x, other{i}y]}}" for i in range(2000)]
    lines.append("outputs: {3: n0, 4: n1}")
    gb.close_match = counting
    try:
        _spec_error(_write(tmp_path, "\n".join(lines)))
    finally:
        gb.close_match = real
    assert len(calls) <= gb.MAX_HINTS


def test_reference_resolves_relative_to_naming_file_first(tmp_path, monkeypatch):
    # g.yaml in the current directory and another g.yaml beside the deriving spec:
    # the docs say the path is relative to the file that names it.
    (tmp_path / "cwd").mkdir()
    (tmp_path / "specs").mkdir()
    _write(tmp_path / "cwd", (builtin_dir("graphs") / "fpn.yaml").read_text())
    _write(tmp_path / "specs", BIFPN)
    child = _write(tmp_path / "specs", "name: child\nderive: {from: g.yaml}\n", "child.yaml")
    monkeypatch.chdir(tmp_path / "cwd")
    g = load_graph(child)
    assert g.number_of_nodes() == load_graph("bifpn").number_of_nodes()


def test_foreign_file_content_is_never_echoed(tmp_path):
    secret = "root_secret_token: hunter2\nalice_pw_hash: 'x$1$abcdef'\n"
    _write(tmp_path, secret, "passwd")
    err = _spec_error(_write(tmp_path, "name: x\nderive: {from: ./passwd}\n"))
    assert "hunter2" not in str(err) and "root_secret_token" not in str(err) and "alice" not in str(err)
    assert len(err.problems) == 1 and err.problems[0].line == 2 and "not a graph spec" in str(err)


# --- specs that validated and then crashed ---------------------------------------------

KEYWORDS = """name: kw
levels: [3, 4]
nodes:
  - {id: class, level: 3, inputs: [P3_in, P4_in]}
  - {id: None, level: 4, inputs: [P4_in, class]}
  - {id: lambda, level: 3, inputs: [class, None]}
outputs: {3: lambda, 4: None}
"""

COLLIDING = """name: collide
levels: [3, 4]
nodes:
  - {id: to, level: 3, inputs: [P3_in, P4_in]}
  - {id: n_to, level: 3, inputs: [P3_in, to]}
  - {id: _x, level: 4, inputs: [P4_in, n_to]}
  - {id: n__x, level: 4, inputs: [P4_in, _x]}
  - {id: meta, level: 3, inputs: [n_to, n__x]}
outputs: {3: meta, 4: n__x}
"""


@pytest.mark.parametrize("text", [KEYWORDS, COLLIDING])
def test_any_node_ids_compile_to_distinct_modules(tmp_path, text):
    g = load_graph(_write(tmp_path, text))
    m = compile_graph(g, 8)
    inner = [v for v in g if not v.endswith("_in")]
    names = {module_name(v) for v in g}
    assert len(names) == g.number_of_nodes()
    # every node has its own block; the colliding pair no longer overwrites one
    assert {name for name, _ in m.named_children()} >= {module_name(v) for v in inner}
    outs = m(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 8, 8), (1, 8, 4, 4)]


def _model(tmp_path, body: str) -> Path:
    return _write(tmp_path, "name: m\nbackbone: {name: tinynet_e}\n" + body, "m.yaml")


def _build(path):
    spec, src, p = load_model_spec(path)
    with torch.device("meta"):
        return build_model(spec, src, p.parent)


def test_gp_fusion_against_a_graph_with_three_input_nodes(tmp_path):
    with pytest.raises(SpecError) as info:
        _build(_model(tmp_path, "graph: bifpn\nfusion: gp\nfpn_channels: 16\n"))
    assert info.value.problems[0].line == 4 and "gp" in str(info.value)


@pytest.mark.parametrize("key", ["fpn_channels", "num_classes", "image_size", "head_channels"])
def test_model_spec_sizes_are_bounded(tmp_path, key):
    with pytest.raises(SpecError) as info:
        load_model_spec(_model(tmp_path, f"{key}: 1000000000000\n"))
    assert info.value.problems[0].line == 3 and "less than or equal" in str(info.value)


def test_head_channels_mismatch_is_located_in_the_file(tmp_path):
    with pytest.raises(SpecError) as info:
        _build(_model(tmp_path, "fpn_channels: 16\nhead_channels: 24\n"))
    p = info.value.problems[0]
    assert p.file.endswith("m.yaml") and p.line == 4


def test_missing_graph_is_reported_at_the_graph_line(tmp_path):
    with pytest.raises(SpecError) as info:
        _build(_model(tmp_path, "fpn_channels: 16\ngraph: missing.yaml\n"))
    p = info.value.problems[0]
    assert p.file.endswith("m.yaml") and p.line == 4 and "no such file" in p.message


def test_unknown_timm_backbone_lists_close_matches_only(tmp_path):
    with pytest.raises(SpecError) as info:
        _build(_write(tmp_path, "name: m\nbackbone: {name: efficientnet_b9}\n", "m.yaml"))
    msg = str(info.value)
    assert "efficientnet_b" in msg and len(msg) < 600 and info.value.problems[0].line == 2


def test_model_spec_reads_without_crash_on_inf():
    r = read_spec_text("name: m\nanchors: {scale: .inf}\n", "m.yaml", ModelSpec)
    assert r.spec is None and r.problems[0].line == 2


def test_validate_accepts_model_specs_and_graphs(capsys):
    from efficientdet_graph.cli.main import main

    specs = sorted(str(p) for p in builtin_dir("specs").glob("*.yaml"))
    graphs = sorted(str(p) for p in builtin_dir("graphs").glob("*.yaml"))
    assert main(["validate", *specs, *graphs]) == 0
    out = capsys.readouterr().out
    assert out.count("ok  ") == len(specs) + len(graphs)


def test_validate_reports_a_bad_model_spec_located(tmp_path, capsys):
    from efficientdet_graph.cli.main import main

    p = _model(tmp_path, "fpn_channels: 16\nhead_channels: 24\n")
    assert main(["validate", str(p)]) == 2
    assert f"{p}:4:16:" in capsys.readouterr().err


# --- checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    from efficientdet_graph.model import create_model
    from efficientdet_graph.model.checkpoint import save_model

    path = tmp_path_factory.mktemp("ck") / "micro.pt"
    save_model(create_model("micro"), path)
    return path, torch.load(path, weights_only=True)


def _bad_ckpt(tmp_path, ckpt, **changes):
    c = {**ckpt, **changes}
    for k, v in changes.items():
        if v is _DROP:
            del c[k]
    p = tmp_path / "bad.pt"
    torch.save(c, p)
    return p


_DROP = object()


@pytest.mark.parametrize("change, words", [
    ({"spec": _DROP}, "'spec'"),
    ({"spec": "efficientdet-d0"}, "'spec'"),
    ({"spec": {"name": "x", "fpn_channels": "wide"}}, "fpn_channels"),
    ({"graph": "name: x\ndescription: " + "[" * 2000 + "]" * 2000}, "nested"),
])
def test_bad_checkpoint_spec_or_graph_is_a_clear_error(micro_ckpt, tmp_path, change, words):
    from efficientdet_graph.errors import EdgError
    from efficientdet_graph.model.checkpoint import load_model

    p = _bad_ckpt(tmp_path, micro_ckpt[1], **change)
    with pytest.raises(EdgError) as info:
        load_model(p)
    assert str(p) in str(info.value) and words in str(info.value)


def test_wrong_shaped_weight_is_named(micro_ckpt, tmp_path):
    from efficientdet_graph.model.checkpoint import CheckpointError, load_model

    sd = dict(micro_ckpt[1]["state_dict"])
    key = next(k for k, v in sd.items() if v.dim() == 4)
    sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    with pytest.raises(CheckpointError, match=re.escape(key)):
        load_model(_bad_ckpt(tmp_path, micro_ckpt[1], state_dict=sd))


def test_huge_spec_is_refused_before_allocating(micro_ckpt, tmp_path, monkeypatch):
    # 8192 channels x 10,000 classes would be gigabytes; the checkpoint's weights do
    # not hold them, so the meta-device check refuses it: no real module is built.
    from efficientdet_graph.model import checkpoint as ck

    spec = {**micro_ckpt[1]["spec"], "fpn_channels": 8192, "head_channels": 8192, "num_classes": 10_000}
    real_builds = []
    real = ck.build_model

    def watching(*a, **k):
        if torch.empty(0).device.type != "meta":
            real_builds.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ck, "build_model", watching)
    with pytest.raises(ck.CheckpointError, match="has shape"):
        ck.load_model(_bad_ckpt(tmp_path, micro_ckpt[1], spec=spec))
    assert not real_builds


@pytest.mark.parametrize("content", [[1, 2, 3], "text", None])
def test_non_dict_checkpoint_is_a_clear_error(tmp_path, content):
    from efficientdet_graph.model.checkpoint import CheckpointError, load_model

    p = tmp_path / "x.pt"
    torch.save(content, p)
    with pytest.raises(CheckpointError, match="not an efficientdet-graph checkpoint"):
        load_model(p)


def test_resume_from_a_save_model_file_exits_2(micro_ckpt, tmp_path, capsys):
    from efficientdet_graph.cli.main import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(micro_ckpt[0].read_bytes())
    code = main(["train", "micro", "--resume", "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no training state" in err and str(out / "last.pt") in err


# --- data ------------------------------------------------------------------------------

def _coco(tmp_path, images=None, annotations=None, categories=None, n_images=2):
    import json

    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(n_images):
        Image.new("RGB", (64, 48), (i * 40, 90, 20)).save(tmp_path / "images" / f"{i}.png")
    coco = {
        "images": images if images is not None else [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48}
                                                      for i in range(n_images)],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [4, 4, 20, 20]}],
        "categories": categories if categories is not None else [{"id": 1, "name": "a"}],
    }
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(coco))
    return p


def _data(p, tmp_path):
    from efficientdet_graph.train.data import CocoDetection

    return CocoDetection(p, tmp_path / "images", 64, train=False)


@pytest.mark.parametrize("bbox", [[float("nan"), 4, 20, 20], [4, float("inf"), 20, 20], [4, 4, float("inf"), 20]])
def test_nonfinite_boxes_are_dropped_and_counted(tmp_path, bbox):
    import json

    p = _coco(tmp_path)
    coco = json.loads(p.read_text())
    coco["annotations"].append({"id": 2, "image_id": 1, "category_id": 1, "bbox": bbox})
    p.write_text(json.dumps(coco))  # json writes NaN / Infinity, as Python's reader accepts
    d = _data(p, tmp_path)
    assert d.report.boxes == 1 and d.report.dropped_nonfinite == 1 and d.report.clipped_boxes == 0
    assert "NaN or infinite" in str(d.report)


@pytest.mark.parametrize("kwargs, where", [
    ({"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}, "categories[1].id"),
    ({"categories": [{"name": "a"}]}, "categories[0].id"),
    ({"images": [{"id": 0}]}, "images[0].file_name"),
    ({"images": [{"file_name": "0.png"}]}, "images[0].id"),
    ({"annotations": {"id": 1}}, "'annotations' should be a list"),
    ({"annotations": ["a box"]}, "annotations[0]"),
])
def test_malformed_coco_names_the_json_path(tmp_path, kwargs, where):
    from efficientdet_graph.train.data import DataError

    with pytest.raises(DataError) as info:
        _data(_coco(tmp_path, **kwargs), tmp_path)
    assert where in str(info.value)


def test_decompression_bomb_is_skipped_and_reported(tmp_path, monkeypatch):
    import json

    from PIL import Image

    p = _coco(tmp_path)
    Image.new("RGB", (400, 400)).save(tmp_path / "images" / "big.png")
    coco = json.loads(p.read_text())
    coco["images"].append({"id": 7, "file_name": "big.png"})
    p.write_text(json.dumps(coco))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 48 * 4)  # 400x400 is then > 2x the limit
    d = _data(p, tmp_path)
    assert len(d) == 2 and len(d.report.skipped_images) == 1 and "decompression bomb" in str(d.report)


def test_truncated_jpeg_is_skipped_at_load(tmp_path):
    import io
    import json

    from PIL import Image

    p = _coco(tmp_path)
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, "JPEG")
    (tmp_path / "images" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    coco = json.loads(p.read_text())
    coco["images"].append({"id": 9, "file_name": "cut.jpg"})
    p.write_text(json.dumps(coco))
    d = _data(p, tmp_path)
    assert d.report.skipped_images == ["cut.jpg"] and len(d) == 2


def test_empty_annotations_warn_loudly(tmp_path):
    d = _data(_coco(tmp_path, annotations=[]), tmp_path)
    assert "WARNING" in str(d.report)


def test_eval_without_iscrowd_or_area_fills_defaults(tmp_path):
    from efficientdet_graph.train.evaluate import coco_eval

    p = _coco(tmp_path)  # the annotation has neither iscrowd nor area
    res = [{"image_id": 0, "category_id": 1, "bbox": [4, 4, 20, 20], "score": 0.9}]
    m = coco_eval(p, res, [0, 1])
    assert m["map"] == pytest.approx(1.0)


# --- command-line arguments and the training loop ---------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["train", "micro", "--batch-size", "0"], "--batch-size"),
    (["train", "micro", "--image-size", "-5"], "--image-size"),
    (["train", "micro", "--epochs", "0"], "--epochs"),
    (["train", "micro", "--lr", "1e39"], "--lr"),
    (["train", "micro", "--lr", "nan"], "--lr"),
    (["profile", "micro", "--image-size", "0"], "--image-size"),
    (["profile", "micro", "--image-size", "-5"], "--image-size"),
    (["compile", "bifpn", "--input-size", "0"], "--input-size"),
    (["compile", "bifpn", "--channels", "0"], "--channels"),
    (["prune", "micro", "--ratio", "1.5"], "--ratio"),
    (["predict", "x.pt", "y.png", "-o", "z", "--score", "2"], "--score"),
])
def test_numeric_flags_are_range_checked(capsys, argv, flag):
    from efficientdet_graph.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and flag in err and argv[argv.index(flag) + 1] in err and "range" in err


def test_show_refuses_an_unknown_extension(tmp_path, capsys):
    from efficientdet_graph.cli.main import main

    out = tmp_path / "x.jpg"
    assert main(["show", "bifpn", "-o", str(out)]) == 2
    assert not out.exists() and ".jpg" in capsys.readouterr().err


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from efficientdet_graph.train.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("syn") / "data", num_train=24, num_val=8, image_size=64, seed=3)


def test_max_steps_saves_its_checkpoint_and_resumes_mid_epoch(syn, tmp_path, capsys):
    from efficientdet_graph.cli.main import main
    from efficientdet_graph.model.checkpoint import read_checkpoint

    out = tmp_path / "run"
    common = ["train", "micro", "--data", str(syn), "--batch-size", "4", "--epochs", "1", "--eval-every", "99",
              "--quiet", "--out", str(out)]
    assert main(common + ["--max-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert (out / "last.pt").exists() and f"checkpoint: {out / 'last.pt'}" in printed
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert (state["epoch"], state["step"]) == (0, 2)
    assert main(common + ["--resume"]) == 0
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert (state["epoch"], state["step"]) == (1, 6)  # 24 images / 4 = 6 steps: 4 more, not 6
    # a finished run resumed (after a kill between the save and the plot) redraws its curves
    (out / "curves.png").unlink()
    assert main(common + ["--resume"]) == 0
    assert (out / "curves.png").exists()


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    import json

    from efficientdet_graph import _io
    from efficientdet_graph.train.progress import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    before = "".join(json.dumps({"type": "step", "step": s}) + "\n" for s in range(1, 6))
    log.path.write_text(before)

    def killed(*a, **k):
        raise KeyboardInterrupt  # the kill comes while the new file is being put in place

    monkeypatch.setattr(_io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        log.truncate_after(3)
    assert log.path.read_text() == before


def test_unwritable_out_dir_is_exit_2(syn, tmp_path, capsys):
    from efficientdet_graph.cli.main import main

    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    assert main(["train", "micro", "--data", str(syn), "--out", str(out), "--epochs", "1"]) == 2
    assert str(out) in capsys.readouterr().err


def test_sigterm_finishes_the_step_saves_and_exits(syn, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.stale123").write_bytes(b"half a checkpoint")
    proc = subprocess.Popen([sys.executable, "-m", "efficientdet_graph", "train", "micro", "--data", str(syn),
                             "--batch-size", "4", "--epochs", "50", "--eval-every", "99", "--log-every", "1",
                             "--quiet", "--out", str(out), "--results", str(tmp_path / "results.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = out / "metrics.jsonl"
        if log.exists() and log.read_text().count("\n") >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert not (out / ".last.pt.stale123").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists() and "results: not written" in err  # a stopped run's figures
    from efficientdet_graph.model.checkpoint import read_checkpoint

    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["step"] >= 2


def test_evaluation_failure_keeps_the_epoch_checkpoint(syn, tmp_path, monkeypatch):
    from efficientdet_graph.train import loop
    from efficientdet_graph.train.loop import TrainConfig, train

    def broken(*a, **k):
        raise KeyError("iscrowd")

    monkeypatch.setattr(loop, "evaluate", broken)
    out = tmp_path / "run"
    with pytest.raises(KeyError):
        train(TrainConfig(model="micro", data=str(syn), out=str(out), epochs=1, batch_size=4, quiet=True))
    assert (out / "last.pt").exists()


def test_resume_takes_an_explicit_new_lr(syn, tmp_path):
    from efficientdet_graph.model.checkpoint import read_checkpoint
    from efficientdet_graph.train.loop import TrainConfig, train

    cfg = dict(model="micro", data=str(syn), out=str(tmp_path / "run"), epochs=2, batch_size=4, quiet=True,
               eval_every=99, optimizer="adamw")
    train(TrainConfig(**cfg, lr=1e-3, max_steps=1))
    train(TrainConfig(**cfg, lr=1e-7, max_steps=2, resume=True))
    groups = read_checkpoint(tmp_path / "run/last.pt")["train_state"]["optimizer"]["param_groups"]
    assert all(g["initial_lr"] == 1e-7 and g["lr"] <= 1e-7 for g in groups)


def test_exploded_weights_are_not_saved(syn, tmp_path):
    from efficientdet_graph.train import loop
    from efficientdet_graph.train.loop import TrainConfig, TrainingDiverged, train

    real_step = torch.optim.AdamW.step

    def exploding(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].mul_(1e12)  # finite, and absurd
        return out

    out = tmp_path / "run"
    torch.optim.AdamW.step = exploding
    try:
        with pytest.raises(TrainingDiverged, match="exploded"):
            train(TrainConfig(model="micro", data=str(syn), out=str(out), epochs=1, batch_size=4, quiet=True,
                              eval_every=99, optimizer="adamw", max_steps=1))
    finally:
        torch.optim.AdamW.step = real_step
    assert not (out / "last.pt").exists() and loop.MAX_SANE_WEIGHT < 1e12


def test_save_every_writes_mid_epoch_checkpoints(syn, tmp_path, monkeypatch):
    from efficientdet_graph.train import loop

    saved = []
    real = loop._save
    monkeypatch.setattr(loop, "_save", lambda path, *a: (saved.append(a[5]), real(path, *a)))
    from efficientdet_graph.cli.main import main

    assert main(["train", "micro", "--data", str(syn), "--batch-size", "4", "--epochs", "1", "--eval-every", "99",
                 "--quiet", "--save-every", "2", "--out", str(tmp_path / "run")]) == 0
    assert saved == [2, 4, 6]  # 6 steps: every 2nd, the last one being the epoch's own save


def test_atomically_written_files_get_the_mode_a_plain_write_gets(tmp_path):
    from efficientdet_graph._io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.json", "{}")
    assert (tmp_path / "atomic.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
