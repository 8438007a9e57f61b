"""The learning-rate schedule scales its warm-up to the run."""


def test_a_one_epoch_run_warms_up_then_decays():
    """The schedule of a one-epoch run (32 steps, warm-up 1 epoch asked): the last step's
    rate is below the peak (before, it was all warm-up and never decayed)."""
    from efficientdet_graph.train.loop import _lr_lambda, warmup_steps

    total = 32
    f = _lr_lambda(total, warmup_steps(1.0, 32, total))
    rates = [f(s) for s in range(total)]
    assert max(rates) == 1.0 and rates[-1] < 0.05 and rates[0] < 0.2
    assert warmup_steps(1.0, 32, 32 * 20) == 32  # long runs keep the asked warm-up
