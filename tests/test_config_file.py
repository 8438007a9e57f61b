"""``edg train --config``: located errors, flags over the file, the run written back."""

from pathlib import Path

import yaml

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
    # the written file reads back as a valid run file
    from efficientdet_graph.train.config_file import read_train_file

    again = read_train_file(out / "run.yaml")
    assert {k: again[k] for k in example if k not in ("data", "out")} == {k: example[k] for k in example
                                                                           if k not in ("data", "out")}
