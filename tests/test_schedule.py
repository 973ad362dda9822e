"""Schedules: onecycle-cos and momentum cycling against PyTorch's OneCycleLR; the others by hand."""
import math

import pytest
import torch

from eoq.training.schedule import lr_at, momentum_at


@pytest.mark.parametrize("total,warmup", [(100, 0.3), (391 * 5, 0.3), (37, 0.15)])
def test_onecycle_cos_follows_torch_onecycle_lr(total, warmup):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=total, pct_start=warmup,
                                                base_momentum=0.85, max_momentum=0.95)
    for step in range(total):
        group = opt.param_groups[0]
        assert math.isclose(lr_at(step, total, 0.2, "onecycle-cos", warmup), group["lr"], rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(momentum_at(step, total, 0.2, 0.95, 0.85, "onecycle-cos", warmup), group["momentum"],
                            rel_tol=1e-9)
        opt.step()
        sched.step()


def test_linear_onecycle_by_hand():
    # 100 steps, 15 of warm-up: from 0.2/25 up to 0.2 at step 14, cosine to 0 after
    assert math.isclose(lr_at(0, 100, 0.2), 0.008 + 0.192 / 15)
    assert math.isclose(lr_at(14, 100, 0.2), 0.2)
    assert math.isclose(lr_at(15, 100, 0.2), 0.2)
    assert math.isclose(lr_at(15 + 85 // 2, 100, 0.2), 0.2 * 0.5 * (1 + math.cos(math.pi * 42 / 85)))
    # without cycling the momentum is constant; with it, mu_min at the peak and mu_max at the ends
    assert momentum_at(50, 100, 0.2, 0.9, None) == 0.9
    assert math.isclose(momentum_at(14, 100, 0.2, 0.95, 0.85), 0.85)
    assert math.isclose(momentum_at(99, 100, 0.2, 0.95, 0.85), 0.95, rel_tol=1e-3)
    assert momentum_at(0, 100, 0.2, 0.95, 0.85) > 0.94


def test_shift_momentum_cycling_takes_only_shift_values():
    """Integer updates: the cycled momentum is rounded to 1 - 2^-s in the log domain."""
    vals = [momentum_at(s, 200, 0.15, 0.9375, 0.875, "onecycle-cos", 0.3, shift=True) for s in range(200)]
    assert set(vals) == {0.875, 0.9375}
    assert vals[0] == vals[-1] == 0.9375 and vals[59] == 0.875       # the peak is at step 0.3 * 200 - 1
    for s in range(200):
        mu = momentum_at(s, 200, 0.15, 0.9375, 0.875, "onecycle-cos", 0.3)
        want = 0.875 if -math.log2(1 - mu) < 3.5 else 0.9375
        assert vals[s] == want
