"""UpdateTrace against hand-counted updates and exponent moves, and on a real integer-engine run."""
import math
from types import SimpleNamespace

import pytest
import torch

from analysis.update_trace import UpdateTrace


def fake_optimizer():
    grids = [SimpleNamespace(param=torch.nn.Parameter(torch.zeros(4)), exponent=torch.tensor(-7.0)),
             SimpleNamespace(param=torch.nn.Parameter(torch.zeros(2)), exponent=torch.tensor(-5.0))]
    state = {g.param: {} for g in grids}
    return SimpleNamespace(grid={id(g.param): g for g in grids}, state=state), grids


def test_counts_by_hand():
    opt, (a, b) = fake_optimizer()
    trace = UpdateTrace(opt, every=2)
    steps = [  # (updates of a, of b, exponent of a, of b) after each step
        ([0, 1, 0, -3], [0, 0], -7, -5),     # sampled (step 0): 4 zeros of 6, non-zero |U| 1 and 3
        ([2, 2, 2, 2], [1, 1], -6, -5),      # not sampled; a moves up
        ([0, 0, 0, 0], [2, 0], -6, -6),      # sampled (step 2): 5 zeros of 6, non-zero |U| 2; b moves down
    ]
    for ua, ub, ea, eb in steps:
        opt.state[a.param]["last_update"] = torch.tensor(ua, dtype=torch.int8)
        opt.state[b.param]["last_update"] = torch.tensor(ub, dtype=torch.int8)
        a.exponent.fill_(ea)
        b.exponent.fill_(eb)
        trace.after_step()
    s = trace.summary()
    assert s.steps == 3
    assert s.zero_updates == pytest.approx(9 / 12)
    assert s.update_lsb == pytest.approx((1 + 3 + 2) / 3)
    assert s.exponent_moves == pytest.approx(1000 * 2 / 3)


def test_a_float_optimizer_is_refused():
    with pytest.raises(ValueError, match="no integer updates"):
        UpdateTrace(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))


def test_on_the_integer_engine_it_reads_the_updates_the_step_made():
    """Batch-1 steps of EOQ on the int engine (after ten untraced ones): the trace's zero fraction is
    that of the weights whose value the step left unchanged, read from the parameters before and
    after each step, and its exponent moves those of the stored exponents. (An exponent that moves
    down doubles the codes exactly, so a zero update still leaves the value unchanged; these steps
    move none up, where the stochastic halving could change a value the update did not.)"""
    from eoq.training.loop import train_step
    from eoq.training.setup import setup

    s = setup("resnet20", "fixup", "eoq", seed=0, lr=0.02, engine="int")
    g = torch.Generator().manual_seed(0)

    def step():
        x = torch.randn(1, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        train_step(s.model, s.optimizer, x, torch.randint(0, 10, (1,), generator=g))

    for _ in range(10):
        step()
    trace = UpdateTrace(s.optimizer)
    zeros = total = downs = 0
    for _ in range(6):           # with eoq's seed-0 start, exponents move down in steps 14-16
        before = [(gp.param.detach().clone(), float(gp.exponent)) for gp in s.optimizer.grid.values()]
        step()
        trace.after_step()
        for gp, (old, e) in zip(s.optimizer.grid.values(), before):
            zeros += int((gp.param.detach() == old).sum())
            total += old.numel()
            assert float(gp.exponent) <= e
            downs += float(gp.exponent) < e
    out = trace.summary()
    assert out.steps == 6 and out.exponent_moves == pytest.approx(1000 * downs / 6) and downs > 0
    assert out.zero_updates == pytest.approx(zeros / total)
    assert 0.5 < out.zero_updates < 1 and out.update_lsb >= 1 and not math.isnan(out.update_lsb)
