"""The proxy task of the search stage: cached features, cheap deterministic trials,
early stopping through ``report``, one cache build under concurrency, Kendall tau-b."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdet_graph import EdgError, SpecError, build_graph, load_graph, load_spec_text
from efficientdet_graph.search.fidelity import architecture, kendall_tau_b
from efficientdet_graph.search.proxy import ProxyConfig, ProxyResult, ProxyTask
from efficientdet_graph.train import DetectionLoss

# Tiny: 96 px images, one class, 64 training images (+ flipped copies), a backbone
# pre-trained for 4 epochs (a random frozen one gives features too weak to learn from).
TINY = ProxyConfig(image_size=96, channels=16, head_repeat=1, epochs=5, batch_size=8, lr=3e-3,
                   train_images=64, val_images=24, classes=1, pretrain_epochs=4, pretrain_channels=16,
                   anchor_scale=3.0)
# Smaller still, for building caches concurrently.
MICRO = ProxyConfig(image_size=64, channels=8, epochs=1, batch_size=4, train_images=4, val_images=4, classes=2,
                    pretrain_epochs=0, flip=False)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> ProxyTask:
    torch.set_num_threads(1)
    return ProxyTask(TINY, tmp_path_factory.mktemp("proxy-cache"))


@pytest.fixture(scope="module")
def bifpn_result(task) -> ProxyResult:
    return task.evaluate(load_graph("bifpn"))


def test_bifpn_trial_gives_finite_metrics_and_one_score_per_epoch(bifpn_result):
    r = bifpn_result
    assert 0.0 <= r.map <= 1.0 and 0.0 <= r.map50 <= 1.0
    assert math.isfinite(r.map) and math.isfinite(r.map50) and r.seconds > 0
    assert r.epochs == TINY.epochs and len(r.history) == TINY.epochs
    assert r.history[-1] == r.map50
    assert r.map50 >= r.map  # AP at IoU 0.5 bounds the average over stricter thresholds


def test_proxy_learns(task, bifpn_result):
    untrained = task.evaluate(load_graph("bifpn"), epochs=0)
    assert untrained.epochs == 0 and untrained.history == ()
    # an untrained model scores ~0.01; a proxy that does not learn stays there
    # measured: ~0.04 untrained, ~0.10 after the 5 epochs; a proxy that does not learn stays put
    assert bifpn_result.map50 > untrained.map50 + 0.03, (bifpn_result, untrained)
    assert bifpn_result.history[-1] > bifpn_result.history[0]


def test_same_seed_same_result_other_seed_other_result(task):
    first = task.evaluate(load_graph("bifpn"), epochs=2)
    again = task.evaluate(load_graph("bifpn"), epochs=2)
    assert (again.map, again.map50, again.history) == (first.map, first.map50, first.history)
    other = task.evaluate(load_graph("bifpn"), seed=1, epochs=2)
    assert (other.map, other.history) != (first.map, first.history)


class Pruned(Exception):
    pass


def test_report_sees_every_epoch_and_its_exception_stops_training(task):
    seen: list[tuple[int, float]] = []

    def report(epoch: int, map50: float) -> None:
        seen.append((epoch, map50))
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        task.evaluate(load_graph("fpn"), report=report)
    assert [e for e, _ in seen] == [1, 2]  # training stopped: epochs 3 to 5 never ran
    assert all(0.0 <= m <= 1.0 for _, m in seen)


def test_cache_is_built_once_and_reused(task):
    mtime = task.cache_path.stat().st_mtime_ns
    again = ProxyTask(TINY, task.cache_dir)
    assert again.builds == 1 and task.cache_path.stat().st_mtime_ns == mtime
    # trial-only settings share the cache; data settings get their own file
    assert ProxyConfig(epochs=9, lr=1.0).fingerprint() == ProxyConfig().fingerprint()
    assert ProxyConfig(image_size=96).fingerprint() != ProxyConfig().fingerprint()
    assert ProxyConfig(pretrain_epochs=0).fingerprint() != ProxyConfig().fingerprint()


def test_graphs_with_repeat_and_changed_fusion_train(task):
    for name in ("panet_x2", "bifpn_concat"):
        r = task.evaluate(architecture(name), epochs=1, channels=8)
        assert r.epochs == 1 and 0.0 <= r.map50 <= 1.0


def test_a_graph_the_proxy_cannot_serve_is_a_project_error(task):
    g = load_graph("fpn")
    g.graph = {**g.graph, "defaults": {**g.graph["defaults"], "fusion": "no_such_fusion"}}
    with pytest.raises(EdgError):
        task.evaluate(g, epochs=1)
    text = """
name: low_fpn
levels: [2, 6]
defaults: {fusion: sum, op: sep_conv, act: swish, downsample: max_pool, upsample: nearest}
nodes:
  - {id: P6_out, level: 6, inputs: [P6_in]}
  - {id: P2_out, level: 2, inputs: [P2_in, P6_out]}
outputs: {2: P2_out, 3: P3_in, 4: P4_in, 5: P5_in, 6: P6_out}
"""
    low = build_graph(*load_spec_text(text, "low.yaml"))  # P2 is below the cached P3
    with pytest.raises(SpecError, match="below the proxy backbone"):
        task.evaluate(low, epochs=1)


def test_batched_loss_equals_detection_loss(task):
    torch.manual_seed(0)
    model = task.build_model(load_graph("bifpn")).train()
    labels, codes = task._targets(model)
    idx = list(range(8))
    cls_out, box_out = model(task._batch(task.train_feats, idx))
    loss = DetectionLoss(model.anchors, task.num_classes)
    ours = task._loss(cls_out, box_out, labels[:8], codes[:8], loss)
    # the train stage's loss matching this batch on the fly, anchors placed as edg train does
    side = (task.config.image_size, task.config.image_size)
    reference = loss(cls_out, box_out, [task.train_targets[i] for i in idx], image_size=side)
    torch.testing.assert_close(ours, reference["loss"], rtol=1e-4, atol=1e-5)


def test_two_processes_build_one_cache_together(tmp_path):
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from efficientdet_graph.search.proxy import ProxyConfig, ProxyTask\n"
        f"t = ProxyTask(ProxyConfig(**{MICRO.__dict__!r}), sys.argv[1])\n"
        "print(len(t.train_targets), len(t.val_meta))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.split() == ["4", "4"]
    builds = json.loads(next(tmp_path.glob("proxy-*.builds.json")).read_text())
    assert builds == {"builds": 1}
    assert len(list(tmp_path.glob("proxy-*.pt"))) == 1 and not list(tmp_path.glob(".proxy-*"))


def test_kendall_tau_b_against_hand_computed_examples():
    # x = 1 2 3 4 5, y = 3 1 2 5 4: of the 10 pairs, (1,2) (1,3) (4,5) are discordant,
    # the other 7 concordant: tau = (7 - 3) / 10.
    assert kendall_tau_b([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)
    # ties: x = 1 1 2 3, y = 1 2 2 3. Pairs: (1,2) tied in x; (2,3) tied in y;
    # (1,3) (1,4) (2,4) (3,4) concordant. n0 = 6, tau-b = 4 / sqrt((6-1)(6-1)) = 0.8.
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
