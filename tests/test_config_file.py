"""``edg train --config``: located errors, flags over the file, the run written back."""

import json
from pathlib import Path

import pytest
import yaml

from efficientdet_graph.model.checkpoint import read_checkpoint
from efficientdet_graph.train import Augment

EXAMPLE = Path(__file__).parent.parent / "examples" / "custom.yaml"


def test_bad_key_is_located_and_exits_2(edg, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text(EXAMPLE.read_text().replace("batch_size: 8", "batch_sise: 8"))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if t.startswith("batch_sise"))
    code, out, err = edg("train", "--config", bad)
    assert code == 2
    assert f"{bad}:{line}:1" in err and "batch_sise" in err and "batch_size" in err


def test_bad_value_is_located(edg, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text(EXAMPLE.read_text().replace("optimizer: adamw", "optimizer: adam"))
    code, _, err = edg("train", "--config", bad)
    assert code == 2 and f"{bad}:" in err and "optimizer" in err


def test_example_runs_flags_override_and_run_is_written_back(edg, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = edg("train", "--config", EXAMPLE, "--out", out, "--synthetic-train", "16",
                            "--synthetic-val", "4", "--quiet")
    assert code == 0, err
    assert (out / "last.pt").exists()
    written = yaml.safe_load((out / "run.yaml").read_text())
    example = yaml.safe_load(EXAMPLE.read_text())
    assert written["out"] == str(out)                     # the flag won
    assert written["model"] == "micro" and written["image_size"] == 64 and written["batch_size"] == 8  # the file
    assert {k: written[k] for k in example if k not in ("data", "out")} == {k: example[k] for k in example
                                                                             if k not in ("data", "out")}
    assert written["synthetic_train"] == 16               # a flag the file does not set is kept too
    # the written file reads back as a valid run file: the same run
    from efficientdet_graph.train.config_file import read_train_file

    again = read_train_file(out / "run.yaml")
    assert again["augment"] == Augment(0.5, (0.5, 1.5)) and again["class_names"] == ("circle", "square", "triangle")
    assert read_checkpoint(out / "last.pt")["class_names"] == ["circle", "square", "triangle"]
    # and repeats the run: the same losses, step by step (a CPU run with a seed is repeatable)
    code, _, err = edg("train", "--config", out / "run.yaml", "--out", tmp_path / "again", "--quiet")
    assert code == 0, err
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert losses(tmp_path / "again") == losses(out) and len(losses(out)) >= 2


# --- the run a command line asks for: file values, flags typed over them ---------------------

def run_config(*argv):
    from efficientdet_graph.cli.main import build_parser
    from efficientdet_graph.cli.train_commands import run_config as resolve

    args = build_parser().parse_args([str(a) for a in argv])
    args.argv = [str(a) for a in argv]
    return resolve(args)


def run_file(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_typed_flag_wins_even_when_it_repeats_the_default(tmp_path):
    f = run_file(tmp_path, "model: micro\nepochs: 3\nbatch_size: 4\namp: bf16\noptimizer: sgd\n")
    assert run_config("train", "--config", f).epochs == 3                       # the file
    assert run_config("train", "--config", f, "--epochs", "10").epochs == 10     # 10 is --epochs' default
    assert run_config("train", "--epochs=10", "--config", f).epochs == 10
    cfg = run_config("train", "--config", f, "--amp", "auto", "--optimizer", "adamw", "--batch-size", "16")
    assert (cfg.amp, cfg.optimizer, cfg.batch_size, cfg.epochs) == ("auto", "adamw", 16, 3)
    assert run_config("--debug", "train", "--config", f, "--epoch", "10").epochs == 10   # abbreviated, global flag first
    assert run_config("train", "--config", f).model == "micro"
    assert run_config("train", "efficientdet-d0", "--config", f).model == "efficientdet-d0"  # the positional's default
    # the parser's defaults are intact after finding the typed flags
    assert run_config("train").epochs == 10 and run_config("train").model == "efficientdet-d0"


def test_file_fields_reach_the_config(tmp_path):
    f = run_file(tmp_path, "augment: none\namp: off\nsave_every: 7\nclass_names: [a, b, c]\nsync_bn: true\n")
    cfg = run_config("train", "--config", f)
    assert cfg.augment is None and cfg.amp == "off" and cfg.save_every == 7  # YAML's bare `off` is False: taken as 'off'
    assert cfg.class_names == ("a", "b", "c") and cfg.sync_bn is True
    assert run_config("train", "--config", run_file(tmp_path, "augment: off\n")).augment is None
    f = run_file(tmp_path, "augment: {hflip: 0}\n")
    assert run_config("train", "--config", f).augment == Augment(hflip=0, scale=(0.5, 1.5))  # the rest: defaults
    f = run_file(tmp_path, "augment: {scale: [0.8, 1.25]}\n")
    assert run_config("train", "--config", f, "--save-every", "3").augment == Augment(0.5, (0.8, 1.25))
    assert run_config("train").augment == Augment() and run_config("train").amp == "auto"


def test_written_run_reads_back_to_the_same_config(tmp_path):
    """Every field of TrainConfig but the per-invocation ones (NOT_IN_FILE) survives the round trip."""
    from dataclasses import fields

    from efficientdet_graph.train import TrainConfig
    from efficientdet_graph.train.config_file import NOT_IN_FILE, read_train_file, train_config, write_train_file

    spec = run_file(tmp_path, "name: x\n", "spec.yaml")  # a path that exists: written absolute
    varied = dict(model="micro", data=str(tmp_path), out=str(tmp_path / "o"), epochs=3, batch_size=5, lr=0.01,
                  optimizer="sgd", weight_decay=0.001, warmup_epochs=0.5, backbone_lr=0.1, backbone_lr_epochs=2.5,
                  ema_decay=0.99, clip_grad=2.5,
                  device="cpu", seed=4, image_size=96, graph=str(spec), fpn_repeat=3, fpn_channels=24, init=str(spec),
                  freeze_bn=True, sync_bn=True,
                  eval_every=2, log_every=3, max_steps=11, save_every=6, synthetic_train=20, synthetic_val=0,
                  synthetic_classes=2, augment=Augment(0.25, (0.75, 1.0)), amp="bf16", class_names=("p", "q"),
                  train_data=(str(spec), str(tmp_path)), val_data=("no/such/val.json", "no/such/images"))
    assert set(varied) | set(NOT_IN_FILE) == {f.name for f in fields(TrainConfig)}, "a new field: add it here"
    default = TrainConfig()
    assert all(varied[k] != getattr(default, k) for k in varied)
    cfg = TrainConfig(**varied)
    back = train_config(read_train_file(write_train_file(cfg, tmp_path / "run.yaml")), vars(TrainConfig()))
    assert back == cfg
    off = TrainConfig(augment=None, amp="off")  # the defaults and `augment: none` too
    back = train_config(read_train_file(write_train_file(off, tmp_path / "off.yaml")), vars(TrainConfig(amp="fp16")))
    assert back == off


# --- located errors in the new fields --------------------------------------------------------

@pytest.mark.parametrize("text, key, hint", [
    ("augment:\n  hflipp: 0.5\n", "hflipp", "hflip"),
    ("augment: {hflip: 0.5, scal: [1, 2]}\n", "scal", "scale"),
    ("save_evry: 10\n", "save_evry", "save_every"),
    ("class_name: [a]\n", "class_name", "class_names"),
    ("train_data: {annotation: a.json, images: im}\n", "annotation", "annotations"),
    ("val_data:\n  annotations: a.json\n  image: im\n", "image", "images"),
])
def test_bad_keys_and_values_are_located(edg, tmp_path, text, key, hint):
    f = run_file(tmp_path, "model: micro\n" + text)
    line, col = next((i, t.index(key) + 1) for i, t in enumerate(f.read_text().splitlines(), 1) if key in t)
    code, out, err = edg("train", "--config", f)
    assert code == 2, err
    assert f"{f}:{line}:{col}" in err and hint in err and "Traceback" not in err


@pytest.mark.parametrize("text, words", [
    ("augment: {hflip: 1.5}\n", ("hflip", "1")),
    ("augment: {scale: [1.5, 0.5]}\n", ("scale", "lo <= hi")),
    ("augment: {scale: [0, 1]}\n", ("scale", "0")),
    ("augment: {scale: [0.5, .inf]}\n", ("scale", "10")),  # was an OverflowError traceback
    ("augment: sometimes\n", ("augment", "none")),
    ("class_names: [a, b, a]\n", ("class_names", "'a'")),
    ("class_names: []\n", ("class_names",)),
    ("save_every: 0\n", ("save_every",)),
    ("amp: bf61\n", ("amp", "'bf16'", "bf61")),
    ("train_data: {annotations: a.json}\n", ("missing", "images")),
    ("train_data: a.json\n", ("train_data",)),
])
def test_bad_values_are_located(edg, tmp_path, text, words):
    f = run_file(tmp_path, "model: micro\n" + text)
    code, out, err = edg("train", "--config", f)
    assert code == 2, err
    assert f"{f}:2:" in err and all(w in err for w in words), err


def test_readme_shows_the_example():
    """The README's run file is examples/custom.yaml but for the data path."""
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    section = readme[readme.index("### A run as a file"):]
    block = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml"))]
    example = [line for line in EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    assert [line for line in block.splitlines() if not line.startswith("data:")] == \
        [line for line in example if not line.startswith("data:")]


def test_class_names_flag_overrides_the_file(tmp_path):
    f = run_file(tmp_path, "class_names: [a, b]\n")
    assert run_config("train", "--config", f).class_names == ("a", "b")
    assert run_config("train", "--config", f, "--class-names", "x", "y", "z").class_names == ("x", "y", "z")


def test_split_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/train.json").write_text("{}")
    (tmp_path / "cfg/pics").mkdir()
    f = run_file(tmp_path / "cfg", "train_data: {annotations: train.json, images: pics}\n"
                                   "val_data: {annotations: v.json, images: elsewhere}\n")
    cfg = run_config("train", "--config", f)
    assert cfg.train_data == (str(tmp_path / "cfg/train.json"), str(tmp_path / "cfg/pics"))
    assert cfg.val_data == ("v.json", "elsewhere")   # not there: relative to where edg runs
    cfg = run_config("train", "--config", f, "--train-data", "a.json", "b")
    assert cfg.train_data == ("a.json", "b")


def test_written_paths_repeat_from_anywhere(tmp_path, monkeypatch):
    from efficientdet_graph.train import TrainConfig
    from efficientdet_graph.train.config_file import write_train_file

    monkeypatch.chdir(tmp_path)
    (tmp_path / "synthetic").mkdir()   # a folder that happens to share the word's name
    (tmp_path / "coco").mkdir()
    written = yaml.safe_load(write_train_file(TrainConfig(), tmp_path / "a.yaml").read_text())
    assert written["data"] == "synthetic"
    written = yaml.safe_load(write_train_file(TrainConfig(data="coco"), tmp_path / "b.yaml").read_text())
    assert written["data"] == str(tmp_path / "coco")
