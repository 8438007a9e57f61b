"""Calibrating a proxy against a reference table: the trial scores, the trial log that
makes a run resumable, the proxy settings a variant changes (a backbone from a file, a
subset of the training images, the validation loss), and ``edg search fidelity --proxy``."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from efficientdet_graph import EdgError, load_graph
from efficientdet_graph.graph import graph_to_yaml
from efficientdet_graph.model.backbone import Backbone
from efficientdet_graph.search.calibrate import TrialLog, network_scores, reference_proxy
from efficientdet_graph.search.proxy import ProxyConfig, ProxyTask
from efficientdet_graph.search.proxy_scores import SCORES, asymptote, proxy_score
from efficientdet_graph.train import CocoDetection, DetectionLoss, make_synthetic
from efficientdet_graph.train.data import resolve_data


def test_asymptote_of_an_exact_curve_and_of_a_noisy_one():
    # y = 0.8 - 0.4 / e at e = 1, 2, 3: the fit is exact and its asymptote 0.8
    assert asymptote([0.4, 0.6, 0.8 - 0.4 / 3]) == pytest.approx(0.8)
    assert asymptote([0.37]) == 0.37
    ys = [0.1, 0.35, 0.3, 0.52, 0.49]
    slope, intercept = np.polyfit([1 / e for e in range(1, 6)], ys, 1)  # numpy's own least squares
    assert asymptote(ys) == pytest.approx(intercept)
    with pytest.raises(ValueError):
        asymptote([])


def test_every_score_is_higher_for_the_better_trial():
    good = {"map50": 0.6, "map": 0.3, "val_loss": 0.9, "train_losses": [1.2, 0.8], "history": [0.4, 0.6]}
    bad = {"map50": 0.5, "map": 0.2, "val_loss": 1.1, "train_losses": [1.3, 1.0], "history": [0.45, 0.5]}
    for kind in SCORES:
        assert proxy_score(kind, good) > proxy_score(kind, bad), kind
    assert proxy_score("train_loss", good) == pytest.approx(-2.0)  # SoTL: the sum of the epochs' losses
    assert proxy_score("val_loss", good) == -0.9
    assert proxy_score("extrapolated", good) == pytest.approx(0.8)  # 0.8 - 0.4 / e
    with pytest.raises(ValueError, match="known: map50"):
        proxy_score("ndcg", good)


def test_network_scores_average_the_seeds():
    trials = [{"network": "a", "map50": 0.2}, {"network": "a", "map50": 0.4}, {"network": "b", "map50": 0.1}]
    assert network_scores(trials, "map50") == pytest.approx({"a": 0.3, "b": 0.1})


def test_trial_log_ignores_a_torn_line_and_appends_after_it(tmp_path):
    log = TrialLog(tmp_path / "t.jsonl")
    log.append({"trial": "a@0", "map50": 0.1})
    with open(log.path, "a") as f:
        f.write('{"trial": "b@0", "map5')  # a kill mid-write
    assert list(log.read()) == ["a@0"]
    log.append({"trial": "c@0", "map50": 0.3})
    assert sorted(log.read()) == ["a@0", "c@0"]


def test_trial_images_take_the_first_images_and_their_flipped_copies():
    # the cache holds n originals followed by their n flipped copies
    pick = ProxyTask._trial_pool
    cfg = ProxyConfig(trial_images=2)
    assert pick(SimpleNamespace(config=cfg), 8) == [0, 1, 4, 5]
    assert pick(SimpleNamespace(config=ProxyConfig(trial_images=2, flip=False)), 8) == [0, 1]
    assert pick(SimpleNamespace(config=ProxyConfig(trial_images=99)), 8) == list(range(8))
    assert pick(SimpleNamespace(config=ProxyConfig()), 8) == list(range(8))
    with pytest.raises(EdgError, match="trial_images"):
        ProxyConfig(trial_images=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("data"), 6, 5, 64, 2, seed=3)


def _weights(path, seed: int):
    torch.manual_seed(seed)
    b = Backbone("tinynet_e", range(3, 8))
    for p in b.parameters():
        p.data.normal_(0, 0.1)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in b.state_dict().items()}}, path)
    return b.eval()


def test_backbone_weights_are_what_the_cached_features_come_from(tmp_path, data):
    torch.set_num_threads(1)
    mine = _weights(tmp_path / "a.pt", 1)
    cfg = ProxyConfig(data=str(data), image_size=64, channels=8, epochs=1, batch_size=4, flip=False,
                      backbone_weights=str(tmp_path / "a.pt"))
    task = ProxyTask(cfg, tmp_path / "cache")
    ann, img = resolve_data(data, "val")
    image = CocoDetection(ann, img, 64, train=False)[2][0]
    with torch.no_grad():
        expected = mine(image[None])
    for level, feat in zip(mine.levels, expected):
        torch.testing.assert_close(task.val_feats[level][2], feat[0])
    # the fingerprint follows the file's content, not its name
    (tmp_path / "copy.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    _weights(tmp_path / "b.pt", 2)
    same = ProxyConfig(**{**cfg.__dict__, "backbone_weights": str(tmp_path / "copy.pt")})
    other = ProxyConfig(**{**cfg.__dict__, "backbone_weights": str(tmp_path / "b.pt")})
    assert same.fingerprint() == cfg.fingerprint() != other.fingerprint()


def test_backbone_weights_of_another_kind_are_a_clear_error(tmp_path, data):
    torch.save({"state_dict": {"head.w": torch.zeros(1)}}, tmp_path / "x.pt")
    cfg = ProxyConfig(data=str(data), image_size=64, backbone_weights=str(tmp_path / "x.pt"))
    with pytest.raises(EdgError, match="no backbone"):
        ProxyTask(cfg, tmp_path / "cache")
    with pytest.raises(EdgError, match="cannot be read"):
        ProxyConfig(data=str(data), backbone_weights=str(tmp_path / "missing.pt")).fingerprint()


def test_validation_loss_is_the_detection_loss_on_the_validation_split(tmp_path, data):
    torch.set_num_threads(1)
    cfg = ProxyConfig(data=str(data), image_size=64, channels=8, epochs=1, batch_size=4, flip=False,
                      pretrain_epochs=0, anchor_scale=2.0)
    task = ProxyTask(cfg, tmp_path / "cache")
    result = task.evaluate(load_graph("fpn"), epochs=0, seed=5)
    torch.manual_seed(5)  # the trial's model, made again as evaluate makes it
    model = task.build_model(load_graph("fpn")).eval()
    with torch.no_grad():  # 5 images: one batch; the train stage matching them on the fly
        cls_out, box_out = model(task.val_feats)
        loss = DetectionLoss(model.anchors, task.num_classes)(cls_out, box_out, task.val_targets, image_size=(64, 64))
    assert result.val_loss == pytest.approx(loss["loss"].item(), rel=1e-4)


def _reference(tmp_path, data):
    rows = []
    for i, name in enumerate(("nofusion", "fpn", "panet", "bifpn")):
        rows.append({"network": name, "key": f"k{i}", "repeat": 1, "graph_yaml": graph_to_yaml(load_graph(name)),
                     "fpn_flops": 1000 * (i + 1), "fpn_params": 10 * (4 - i),
                     "val": {"values": [0.1 * i, 0.1 * i + 0.01]}})
    _weights(tmp_path / "backbone.pt", 0)  # the shared backbone the reference's jobs start from
    doc = {"schedule": {"backbone": "tinynet_e", "image_size": 64, "channels": 8, "head_repeat": 1,
                        "anchor_scale": 2.0}, "task": {"data": str(data), "backbone_init": str(tmp_path / "backbone.pt")},
           "table": rows}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(doc))
    return path


def test_the_proxy_starts_from_the_reference_setting():
    doc = {"schedule": {"backbone": "lcnet_050", "image_size": 192, "channels": 32, "anchor_scale": 1.5,
                        "head_repeat": 1, "epochs": 15, "batch_size": 8, "lr": 0.004},
           "task": {"data": "some/folder", "backbone_init": "b.pt"}}
    cfg = reference_proxy(doc, {"epochs": 2, "channels": 16})
    assert (cfg.data, cfg.backbone, cfg.image_size, cfg.anchor_scale, cfg.backbone_weights) == (
        "some/folder", "lcnet_050", 192, 1.5, "b.pt")
    assert (cfg.batch_size, cfg.lr) == (8, 0.004)
    assert (cfg.epochs, cfg.channels) == (2, 16)  # a variant's settings win


def _fidelity(ref, tmp_path, *extra):
    return subprocess.run([sys.executable, "-m", "efficientdet_graph", "search", "fidelity", str(ref),
                           "--cache", str(tmp_path / "cache"), "--n-boot", "100", *extra],
                          capture_output=True, text=True, timeout=600)


def test_fidelity_cli_trains_the_proxy_on_every_network_once(tmp_path, data):
    ref = _reference(tmp_path, data)
    settings = ["--proxy", "epochs=1", "batch_size=4", "flip=false"]
    run = _fidelity(ref, tmp_path, *settings, "--results", str(tmp_path / "fid.json"))
    assert run.returncode in (0, 1), run.stderr[-2000:]
    assert "4 to run" in run.stdout
    doc = json.loads((tmp_path / "fid.json").read_text())
    trials = doc["proxy"]["trials"]
    assert sorted(t["network"] for t in trials) == ["bifpn", "fpn", "nofusion", "panet"]
    assert doc["proxy"]["settings"]["epochs"] == 1 and doc["proxy"]["settings"]["image_size"] == 64
    assert all(len(t["history"]) == 1 and len(t["train_losses"]) == 1 for t in trials)
    for t in trials:  # where a trial's time went: the phases are disjoint parts of its wall time
        assert set(t["phases"]) == {"setup", "batches", "forward", "backward", "evaluate"}
        # each of the 5 phases is rounded to 1 ms: their sum may pass the total by 2.5 ms
        assert 0 < sum(t["phases"].values()) <= t["seconds"] + 5 * 0.0005 + 1e-9
    assert set(doc["other_scores"]) == set(SCORES) - {"map50"}
    # again, judging another score: every trial comes from the log, nothing is trained
    run = _fidelity(ref, tmp_path, *settings, "--score", "val_loss")
    assert run.returncode in (0, 1), run.stderr[-2000:]
    assert "4 in" in run.stdout and "0 to run" in run.stdout and "proxy val_loss" in run.stdout


def test_fidelity_cli_refuses_an_unknown_proxy_setting(tmp_path, data):
    run = _fidelity(_reference(tmp_path, data), tmp_path, "--proxy", "epoch=2")
    assert run.returncode == 2 and "did you mean 'epochs'" in run.stderr and "Traceback" not in run.stderr
    run = _fidelity(_reference(tmp_path, data), tmp_path, "--proxy", "epochs")
    assert run.returncode == 2 and "KEY=VALUE" in run.stderr


def test_proxy_settings_read_from_text_take_each_fields_type():
    from efficientdet_graph.errors import SearchError
    from efficientdet_graph.search.proxy import coerce_proxy_settings

    got = coerce_proxy_settings({"epochs": "2", "flip": "no", "trial_images": "None", "lr": "1e-3",
                                 "backbone": "tinynet_e", "channels": 48})
    assert got == {"epochs": 2, "flip": False, "trial_images": None, "lr": 0.001, "backbone": "tinynet_e",
                   "channels": 48}
    assert type(got["epochs"]) is int and type(got["lr"]) is float
    with pytest.raises(SearchError, match="not a"):
        coerce_proxy_settings({"flip": "maybe"})  # a typo is not silently False
    with pytest.raises(SearchError, match="not a"):
        coerce_proxy_settings({"epochs": "two"})
    with pytest.raises(SearchError, match="did you mean 'trial_images'"):
        coerce_proxy_settings({"trial_image": "4"})


def test_the_default_is_the_cheapest_passing_ranking_and_the_best_is_named_otherwise():
    from efficientdet_graph.search.calibrate import choose

    def row(kind, name, tau, cpu, passed, wall=None):
        return {"kind": kind, "variant": name, "score": "map50", "tau": tau, "tau_interval": [tau - .2, tau + .1],
                "seconds_per_network": cpu if wall is None else wall, "cpu_seconds_per_network": cpu,
                "passed": passed}

    # cheapest by CPU seconds, not by wall seconds (which other jobs on the machine inflate)
    rows = [row("prior", "flops", 0.9, 0.0, False), row("proxy", "slow", 0.8, 30.0, True, wall=10.0),
            row("proxy", "fast", 0.65, 12.0, True, wall=40.0), row("zero-cost", "synflow", float("nan"), 0.2, False)]
    got = choose(rows)
    assert got["default"] == {"variant": "fast", "score": "map50"}
    assert got["best"]["variant"] == "slow"  # the priors are the bar, not candidates
    got = choose([dict(r, passed=False) for r in rows])
    assert got["default"] is None and got["best"]["tau"] == 0.8
    # within 10% of the cheapest, cost is a tie (measurement noise): the higher tau wins
    rows.append(row("proxy", "fast-too", 0.75, 13.0, True))
    assert choose(rows)["default"]["variant"] == "fast-too"
    rows.append(row("proxy", "dear", 0.95, 13.5, True, wall=1.0))  # 12.5% above the cheapest: not a tie
    assert choose(rows)["default"]["variant"] == "fast-too"


def test_an_unknown_variant_names_a_close_one():
    from efficientdet_graph.errors import SearchError
    from efficientdet_graph.search.variants import VARIANTS, get_variant

    assert get_variant("images") is VARIANTS["images"]
    with pytest.raises(SearchError, match="did you mean 'images'"):
        get_variant("image")


@pytest.mark.parametrize("name", sorted(__import__("efficientdet_graph.search.variants",
                                                   fromlist=["VARIANTS"]).VARIANTS))
def test_every_variant_is_a_valid_proxy_setting(name):
    from efficientdet_graph.search.variants import VARIANTS

    doc = {"schedule": {"backbone": "lcnet_050", "image_size": 192}, "task": {"data": "d"}}
    cfg = reference_proxy(doc, VARIANTS[name].settings)
    assert all(getattr(cfg, k) == v for k, v in VARIANTS[name].settings.items())
    assert set(VARIANTS[name].scores or SCORES) <= set(SCORES)
    assert "extrapolated" not in (VARIANTS[name].scores or ()) or cfg.score_every_epoch


def test_calibrate_cli_judges_variants_zero_cost_and_priors_in_one_table(tmp_path, data):
    ref = _reference(tmp_path, data)
    out = tmp_path / "cal.json"
    run = subprocess.run([sys.executable, "-m", "efficientdet_graph", "search", "calibrate", str(ref), "--variants",
                          "images", "--zero-cost", "entropy", "--cache", str(tmp_path / "cache"), "--n-boot", "100",
                          "--results", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1) and "Traceback" not in run.stderr and out.exists(), run.stderr[-2000:]
    doc = json.loads(out.read_text())
    got = {(r["kind"], r["variant"], r["score"]) for r in doc["rows"]}
    assert got == {("prior", "flops", "flops"), ("prior", "params", "params"), ("zero-cost", "entropy", "entropy"),
                   *{("proxy", "images", s) for s in SCORES if s != "extrapolated"}}
    assert (doc["default"] is not None and doc["study_proxy"]["passed"]) == (run.returncode == 0)
    # the proxy a study trains, with its row's median trial as its trial log holds it
    row = next(r for r in doc["rows"] if (r["variant"], r["score"]) == (doc["study_proxy"]["variant"],
                                                                       doc["study_proxy"]["score"]))
    assert row["kind"] == "proxy" and doc["study_proxy"]["trial_cpu_s"] == row["cpu_seconds_per_trial"]
    assert doc["study_proxy"]["tau"] == row["tau"]
    # the priors on this hand-made table: FLOPs rise with the reference, parameters fall
    flops = next(r for r in doc["rows"] if r["variant"] == "flops")
    params = next(r for r in doc["rows"] if r["variant"] == "params")
    assert flops["tau"] == 1.0 and params["tau"] == -1.0
    md = (tmp_path / "cal.md").read_text()
    assert "| proxy: images | map50 |" in md
    tau = doc["study_proxy"]["tau"]
    assert f"| all | {doc['networks']} | {tau:.3f} |" in md  # where the study's proxy ranks, beside the seeds
    proxy_row = next(r for r in doc["rows"] if r["kind"] == "proxy")
    assert set(proxy_row["trial_phases_median_s"]) == {"setup", "batches", "forward", "backward", "evaluate"}


def test_fast_enough_to_search_means_20_cpu_seconds_and_a_tenth_of_a_reference_job():
    from efficientdet_graph.search.calibrate import speed

    ok = speed(15.0, 548.0)  # 3600 / 15 = 240 trials an hour; 15 / 548 = 2.7% of a job
    assert ok["trials_per_hour_per_core"] == 240.0 and ok["share_of_reference_job"] == pytest.approx(0.02737, abs=1e-5)
    assert ok["passed"]
    assert not speed(25.0, 548.0)["passed"]  # over 20 s
    assert not speed(15.0, 100.0)["passed"]  # 15% of a (short) reference job
    assert speed(15.0, None)["passed"] and speed(15.0, None)["share_of_reference_job"] is None


def test_seed_agreement_is_the_tables_own_seed_0_against_seed_1_by_source():
    from efficientdet_graph.search.calibrate import seed_agreement

    def row(src, a, b):
        return {"source": src, "val": {"values": [a, b]}}

    table = [row("graph", 0.1, 0.1), row("graph", 0.2, 0.3), row("graph", 0.3, 0.2),  # one swapped pair of 3
             row("sampled", 0.5, 0.6), row("sampled", 0.6, 0.5), {"source": "sampled", "val": {"values": [0.9]}}]
    got = seed_agreement(table)
    assert got["graph"] == {"networks": 3, "kendall_tau": pytest.approx(1 / 3)}
    assert got["sampled"] == {"networks": 2, "kendall_tau": pytest.approx(-1.0)}  # one seed: left out
    # all five with two seeds: of 10 pairs, the two swapped ones discordant -> (8 - 2) / 10
    assert got["all"]["networks"] == 5 and got["all"]["kendall_tau"] == pytest.approx(0.6)


def _calibration(tmp_path, data, rows):
    ref = _reference(tmp_path, data)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"reference_file": str(ref), "rows": [
        {"kind": kind, "variant": variant, "score": score, "tau": tau, "passed": passed, "cpu_seconds_per_network": cpu}
        for kind, variant, score, tau, passed, cpu in rows]}))
    return path


def test_a_study_with_a_calibration_trains_its_proxy_and_maximizes_its_score(tmp_path, data):
    from efficientdet_graph.search.study import StudyConfig, _proxy_config, run_worker, study_metric
    from efficientdet_graph.search.space import load_space
    from efficientdet_graph.search.variants import VARIANTS

    cal = _calibration(tmp_path, data, [("proxy", "images", "train_loss", 0.7, True, 12.0),
                                        ("proxy", "epochs", "val_loss", 0.9, True, 14.0),
                                        ("zero-cost", "synflow", "synflow", 0.8, True, 0.1)])
    cfg = StudyConfig(space="bifpn_edges", out=str(tmp_path / "run"), trials=2, sampler="random", seed_points=False,
                      calibration=str(cal), proxy=(("epochs", "1"), ("batch_size", "4")), quiet=True)
    space = load_space("bifpn_edges")
    proxy = _proxy_config(space, cfg)
    assert proxy.data == str(data) and proxy.image_size == 64 and proxy.backbone == "tinynet_e"
    assert proxy.trial_images == VARIANTS["images"].settings["trial_images"] and proxy.batch_size == 4
    assert study_metric(space, cfg) == "train_loss"
    torch.set_num_threads(1)
    run_worker(cfg)
    import optuna

    study = optuna.load_study(study_name="bifpn_edges", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    done = [t for t in study.trials if t.user_attrs.get("edg_status") == "done"]
    assert done, [t.user_attrs for t in study.trials]
    # the score maximized is the negated sum of training losses, not an mAP in [0, 1]
    assert all(t.user_attrs["edg_metric"] < 0 for t in done)


def test_a_study_on_a_two_seed_calibration_scores_each_network_by_the_mean_of_two_trials(tmp_path, data):
    import optuna

    from efficientdet_graph.graph import build_graph
    from efficientdet_graph.spec import load_spec_text
    from efficientdet_graph.search.study import StudyConfig, _proxy_config, run_worker
    from efficientdet_graph.search.space import load_space

    cal = _calibration(tmp_path, data, [("proxy", "two-seeds", "val_loss", 0.9, True, 30.0),
                                        ("proxy", "epochs", "val_loss", 0.4, False, 15.0)])
    cfg = StudyConfig(space="bifpn_edges", out=str(tmp_path / "run"), trials=1, sampler="random", seed_points=False,
                      calibration=str(cal), proxy=(("epochs", "1"), ("batch_size", "4"), ("trial_images", "4")),
                      quiet=True, proxy_cache=str(tmp_path / "cache"))
    torch.set_num_threads(1)
    run_worker(cfg)
    study = optuna.load_study(study_name="bifpn_edges", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "run" / "study.journal"))))
    (t,) = [t for t in study.trials if t.user_attrs.get("edg_status") == "done"]
    assert t.user_attrs["edg_seeds"] == 2
    # the same network trained here with seeds 0 and 1 by the proxy itself: the study's
    # score is the mean of the two validation losses (negated)
    graph = build_graph(*load_spec_text(t.user_attrs["edg_graph"], "trial"))
    graph.graph = {**graph.graph, "outputs": dict(graph.graph["outputs"]), "repeat": t.user_attrs["edg_repeat"]}
    proxy = _proxy_config(load_space("bifpn_edges"), cfg)
    task = ProxyTask(proxy, tmp_path / "cache")
    losses = [task.evaluate(graph, channels=proxy.channels, seed=s).val_loss for s in (0, 1)]
    assert losses[0] != losses[1]  # two seeds, two different trials
    assert t.user_attrs["edg_metric"] == pytest.approx(-(losses[0] + losses[1]) / 2, rel=1e-6)


def test_a_calibration_without_a_proxy_pick_is_refused(tmp_path, data):
    from efficientdet_graph.errors import SearchError
    from efficientdet_graph.search.calibrate import calibrated_proxy

    nothing_passed = [("proxy", "images", "map50", 0.1, False, 12.0), ("proxy", "epochs", "map50", 0.2, False, 14.0),
                      ("prior", "flops", "flops", 0.5, False, 0.0)]
    cfg, score, how, seeds = calibrated_proxy(_calibration(tmp_path, data, nothing_passed))
    assert (cfg.epochs, score, seeds) == (4, "map50", 1) and "best tau" in how  # the proxy of best tau, not the prior
    with pytest.raises(SearchError, match="judged no proxy"):
        calibrated_proxy(_calibration(tmp_path, data, [("prior", "flops", "flops", 0.5, False, 0.0)]))
    with pytest.raises(SearchError, match="no such file"):
        calibrated_proxy(tmp_path / "nope.json")
    # a hand-edited row: a tau that is no number is a clear error, not a traceback
    with pytest.raises(SearchError, match="numeric tau"):
        calibrated_proxy(_calibration(tmp_path, data, [("proxy", "epochs", "map50", "high", False, 14.0)]))
    # a NaN tau (written as null) ranks last, not in the way
    _, score, _, _ = calibrated_proxy(_calibration(tmp_path, data, [("proxy", "epochs", "map50", None, False, 14.0),
                                                                    ("proxy", "images", "val_loss", 0.1, False, 12.0)]))
    assert score == "val_loss"


def test_a_trial_is_scored_as_pycocotools_scores_it(tmp_path, data, monkeypatch):
    import efficientdet_graph.search.proxy as proxy_module
    from efficientdet_graph.train.evaluate import coco_eval

    torch.set_num_threads(1)
    cfg = ProxyConfig(data=str(data), image_size=64, channels=8, epochs=2, batch_size=2, flip=False,
                      pretrain_epochs=0, anchor_scale=2.0)
    task = ProxyTask(cfg, tmp_path / "cache")
    seen = []
    real = proxy_module.box_ap

    def both(gts, dets, cats, images, max_dets):
        ours = real(gts, dets, cats, images, max_dets=max_dets)
        results = [{"image_id": i, **d} for i, ds in dets.items() for d in ds]
        seen.append((ours, coco_eval(task.val_annotations, results, images), len(results)))
        return ours

    monkeypatch.setattr(proxy_module, "box_ap", both)
    task.evaluate(load_graph("fpn"), seed=1)
    assert len(seen) == 2 and all(n > 0 for *_, n in seen)  # every epoch scored, with detections
    for ours, ref, _ in seen:
        assert ours["map50"] == pytest.approx(ref["map50"], abs=1e-12)
        assert ours["map"] == pytest.approx(ref["map"], abs=1e-12)


def test_a_trial_log_is_named_by_content_so_another_checkout_finds_it(tmp_path, data):
    import shutil

    from efficientdet_graph.search.calibrate import _settings_id

    _weights(tmp_path / "w.pt", 0)
    here = ProxyConfig(data=str(data), backbone_weights=str(tmp_path / "w.pt"), epochs=2)
    shutil.copytree(data, tmp_path / "elsewhere" / "data")
    shutil.copy(tmp_path / "w.pt", tmp_path / "elsewhere" / "w.pt")
    there = ProxyConfig(data=str(tmp_path / "elsewhere" / "data"), backbone_weights=str(tmp_path / "elsewhere" / "w.pt"),
                        epochs=2)
    assert _settings_id(here) == _settings_id(there)
    assert _settings_id(here) != _settings_id(ProxyConfig(**{**here.__dict__, "epochs": 3}))
    _weights(tmp_path / "other.pt", 1)
    assert _settings_id(here) != _settings_id(ProxyConfig(**{**here.__dict__, "backbone_weights": str(tmp_path / "other.pt")}))


def test_calibrate_cli_errors_exit_2_with_the_reason(tmp_path, data, edg):
    code, out, _ = edg("search", "calibrate", "--list")
    assert code == 0 and all(name in out for name in ("images", "epochs", "two-seeds", "fpn-pretrained"))
    code, _, err = edg("search", "calibrate")
    assert code == 2 and "name the reference results file" in err
    code, _, err = edg("search", "calibrate", str(_reference(tmp_path, data)), "--variants", "imagse")
    assert code == 2 and "did you mean 'images'" in err
    code, _, err = edg("search", "calibrate", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err


def test_best_so_far_and_hypervolume_work_for_negated_losses():
    import optuna
    from optuna.distributions import FloatDistribution

    from efficientdet_graph.search.report import best_so_far

    def trial(number, metric=None):
        t = optuna.trial.create_trial(value=metric if metric is not None else 0.0,
                                      params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                      user_attrs={"edg_status": "done", **({"edg_metric": metric} if metric is not None
                                                                            else {})})
        t.number = number
        return t

    # a negated loss is below 0: "best so far" must not stay at 0, nor start there
    got = best_so_far([trial(0), trial(1, -1.3), trial(2, -1.5), trial(3, -1.1)])
    assert got == [None, -1.3, -1.3, -1.1]


def test_a_sampler_beats_random_only_beyond_the_seed_ranges():
    from efficientdet_graph.search.compare import sampler_verdicts

    def r(lo, hi):
        return {"min": lo, "max": hi}

    by = {"random": {"best": r(0.50, 0.60), "hypervolume": r(1.0, 2.0)},
          "tpe": {"best": r(0.61, 0.70), "hypervolume": r(1.5, 2.5)},     # every seed above random's best
          "evolution": {"best": r(0.40, 0.49), "hypervolume": r(0.1, 0.9)}}
    v = sampler_verdicts(by)
    assert v["tpe"] == {"best": "better", "hypervolume": "within the spread"}
    assert v["evolution"] == {"best": "worse", "hypervolume": "worse"}
    assert sampler_verdicts({"tpe": by["tpe"]}) == {}  # no random search to compare with


def test_sampler_benchmark_on_a_calibrated_proxy_with_a_negated_loss(tmp_path, data):
    import math

    from efficientdet_graph.search.compare import benchmark_samplers, plot_benchmark

    torch.set_num_threads(1)
    cal = _calibration(tmp_path, data, [("proxy", "images", "train_loss", 0.7, True, 12.0)])
    result = benchmark_samplers("bifpn_edges", ["random", "evolution"], [0], 3, tmp_path / "bench",
                                proxy=(("epochs", "1"), ("batch_size", "4")), say=lambda s: None,
                                population=2, calibration=str(cal))
    assert all(r["finished"] == 3 for r in result["runs"])
    for r in result["runs"]:
        assert r["best"] < 0 and r["best"] == max(m for m, _ in r["points"])  # a negated loss, the best of them
        assert r["hypervolume"] > 0 or len({m for m, _ in r["points"]}) == 1
        assert r["best_so_far"][-1] == r["best"]
    assert result["hypervolume_reference"]["metric"] == min(m for r in result["runs"] for m, _ in r["points"])
    assert set(result["verdicts"]) == {"evolution"}
    assert not math.isnan(result["by_sampler"]["random"]["best"]["mean"])
    assert plot_benchmark(result, tmp_path / "b.png").stat().st_size > 0


def test_a_shared_result_cache_never_serves_one_metric_for_another(tmp_path, data):
    from efficientdet_graph.search.mapping import sample
    from efficientdet_graph.search.space import load_space
    from efficientdet_graph.search.study import Evaluator, StudyConfig

    space = load_space("bifpn_edges")
    cal = _calibration(tmp_path, data, [("proxy", "images", "train_loss", 0.7, True, 12.0)])
    by_loss = Evaluator(space, StudyConfig(space="bifpn_edges", calibration=str(cal)))
    cal_map = tmp_path / "cal-map.json"
    doc = json.loads(cal.read_text())
    doc["rows"][0]["score"] = "map50"
    cal_map.write_text(json.dumps(doc))
    by_map = Evaluator(space, StudyConfig(space="bifpn_edges", calibration=str(cal_map)))
    import random

    from efficientdet_graph.search.params import random_ask

    cand = sample(space, random_ask(random.Random(0)))
    assert by_loss.base == by_map.base  # the same proxy, trained the same way
    assert by_loss.fingerprint(cand) != by_map.fingerprint(cand)
