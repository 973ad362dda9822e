"""Isometry workbench: estimators against dense references, theorem checks, Fixup identity."""
import copy
import math

import numpy as np
import pytest
import torch

from analysis.isometry.blocks import end_to_end, freeze_batchnorm, measure_blocks, quantized_backward_gains
from analysis.isometry.jacobian import JacobianError, estimate, exact, hutchinson, slq
from analysis.isometry.theorems import all_checks
from eoq.models import build_model
from eoq.models.blocks import BasicBlock
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset


def bn_block(channels=16, seed=0):
    torch.manual_seed(seed)
    block = BasicBlock(channels, channels, 1, "bn")
    x = torch.relu(torch.randn(8, channels, 8, 8))
    block.train()
    with torch.no_grad():
        for _ in range(3):
            block(x)            # running statistics away from their init
    return block.eval().double(), x.double()


def test_hutchinson_within_its_interval_of_the_exact_value():
    block, x = bn_block()
    ex = exact(block, x[:2])                                      # n = 1024 per sample
    h = hutchinson(block, x[:2], probes=64, generator=torch.Generator().manual_seed(1))
    assert abs(h.phi1 - ex.phi1) <= h.phi1_ci
    assert abs(h.phi2 - ex.phi2) <= h.phi2_ci
    assert h.phi1_ci < 0.05 * ex.phi1                             # and the interval is informative


def test_slq_moments_match_eigvalsh_within_one_percent():
    block, x = bn_block(channels=16)
    dense = exact(block, x[:1])
    J = torch.func.jacrev(lambda v: block(v.reshape(1, 16, 8, 8)).reshape(-1))(x[:1].reshape(-1)).detach()
    ev = torch.linalg.eigvalsh(J @ J.T)                          # independent dense reference (n = 1024)
    assert float(ev.mean()) == pytest.approx(dense.phi1, rel=1e-9)
    s = slq(block, x[0], probes=24, steps=40, generator=torch.Generator().manual_seed(2))
    assert s.phi1 == pytest.approx(float(ev.mean()), rel=0.01)
    assert s.phi2 == pytest.approx(float(ev.pow(2).mean()), rel=0.01)
    nodes, weights = s.density
    assert weights.sum() == pytest.approx(1.0) and nodes.min() > -1e-6 * nodes.max()


def test_auto_method_reports_what_it_used():
    block, x = bn_block(channels=4)
    assert estimate(block, x[:1], "auto").method == "exact"
    with pytest.raises(JacobianError, match="unknown method"):
        estimate(block, x, "power")


@pytest.mark.parametrize("row", all_checks(), ids=lambda r: r["check"])
def test_theorem_checks(row):
    assert row["passed"], row


def test_fixup_residual_unit_is_exactly_identity_at_init():
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    prepare(model, get_preset("fp32"))
    images = torch.randn(8, 3, 32, 32)
    rows = measure_blocks(model, images, kinds=("residual",))
    identity_units = [r for r in rows if r["phi_shortcut"] == 1.0]
    assert len(identity_units) == 7
    for r in identity_units:
        assert r["phi1"] == 1.0 and r["var"] == 0.0 and r["omega"] == 0.0
    block = model.blocks()[1]
    x = torch.relu(torch.randn(2, 16, 8, 8, dtype=torch.float64))
    e = exact(copy.deepcopy(block).double().residual, x)
    assert e.phi1 == 1.0 and e.var == 0.0 and np.allclose(e.eigenvalues, 1.0)


def test_residual_rule_and_depth_ordering():
    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    gains = {}
    for norm in ("none", "bn", "fixup"):
        model = build_model("resnet32", norm)
        prepare(model, get_preset("fp32"))
        rows = measure_blocks(model, images, kinds=("residual",))
        for r in rows:   # parallel rule phi(I + J_F) = phi(shortcut) + omega, within a few CIs
            assert abs(r["phi1"] - r["predicted_phi1"]) <= 3 * (r["phi1_ci"] + r["omega_ci"]) + 0.05 * r["phi1"]
        gains[norm] = end_to_end(model, images)["phi1"]
    assert gains["none"] > 5 * gains["bn"] and gains["bn"] > 100 * gains["fixup"]   # measured: 2.7e3, 290, 0.12
    assert gains["fixup"] < 1


def test_quantized_backward_gains_follow_the_float_ones():
    torch.manual_seed(0)
    model = build_model("resnet20", "bn")
    prepare(model, get_preset("eoq"), torch.Generator().manual_seed(0))
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    rows = quantized_backward_gains(model, images, labels)
    assert len(rows) == 9
    for r in rows:
        assert np.isfinite(r["gain_quantized"]) and r["gain_float"] > 0
        assert r["gain_quantized"] == pytest.approx(r["gain_float"], rel=0.2)


def test_non_finite_inputs_are_rejected():
    model = build_model("resnet20", "fixup")
    images = torch.randn(2, 3, 32, 32)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(JacobianError, match="NaN or Inf"):
        measure_blocks(model, images)
    with pytest.raises(JacobianError, match="NaN or Inf"):
        hutchinson(lambda v: v, images)
    assert freeze_batchnorm(model, torch.randn(2, 3, 32, 32)).training is False


def test_extreme_singular_values_match_a_dense_svd():
    """Matrix-free svds (JVP / VJP operator) against torch.linalg.svdvals of the materialised J,
    on a conv block (more outputs than inputs) and a strided one (fewer)."""
    from analysis.isometry.jacobian import extreme_singular_values

    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.Conv2d(3, 2, 3, stride=2, padding=1)):
        f = torch.nn.Sequential(conv, torch.nn.Tanh()).double()
        x = torch.randn(1, conv.in_channels, 6, 6, dtype=torch.float64)
        J = torch.func.jacrev(lambda v: f(v.reshape(x.shape)).reshape(-1))(x.reshape(-1))
        sv = torch.linalg.svdvals(J.detach())
        got = extreme_singular_values(f, x)
        assert got.largest == pytest.approx(float(sv.max()), rel=1e-6)
        assert got.smallest == pytest.approx(float(sv.min()), rel=1e-5)
        assert got.condition == pytest.approx(float(sv.max() / sv.min()), rel=1e-5)


def test_broadened_slq_density_keeps_the_moments():
    """The Gaussian-broadened density (log axis) integrates to the total weight, and its first two
    moments in eigenvalue approach SLQ's phi1 and phi2 for a narrow width."""
    from analysis.isometry.jacobian import broadened_density

    nodes, weights = np.array([0.05, 0.4, 1.0, 3.0]), np.array([0.1, 0.2, 0.3, 0.4])
    lam, dens = broadened_density(nodes, weights, sigma=0.01, points=20000)
    t = np.log10(lam)
    assert np.trapezoid(dens, t) == pytest.approx(1.0, rel=1e-3)
    assert np.trapezoid(dens * lam, t) == pytest.approx(float((weights * nodes).sum()), rel=1e-3)
    assert np.trapezoid(dens * lam ** 2, t) == pytest.approx(float((weights * nodes ** 2).sum()), rel=2e-3)


def test_confidence_interval_uses_students_t():
    """Three samples 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732."""
    from analysis.isometry.jacobian import _mean_ci

    mean, half = _mean_ci(torch.tensor([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_exact_refuses_a_jacobian_too_large_to_materialise(monkeypatch):
    from analysis.isometry import jacobian

    monkeypatch.setattr(jacobian, "EXACT_MAX_ENTRIES", 100)
    f = torch.nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(JacobianError, match="hutchinson"):
        jacobian.estimate(f, torch.randn(2, 1, 8, 8), "exact")


def test_a_quantized_block_gets_one_line_saying_what_to_do():
    import eoq
    from analysis import quantization_off

    s = eoq.setup("resnet20", "fixup", "eoq")
    x, _ = eoq.sample(n=4)
    block, h = s.model.blocks()[0], s.model.stem(x).detach()
    with pytest.raises(JacobianError, match="quantization_off"):
        estimate(block, h, "hutchinson")
    with quantization_off(s.model):
        assert estimate(block, h, "hutchinson").phi1 > 0


def test_a_network_whose_jacobian_vanishes_is_diverged_not_zero():
    """A 'none' ResNet with every weight at zero passes nothing through (relu'(0) = 0): its
    end-to-end phi is 0, which the sweep reports as diverged, not as 0 +- 0; a live one is measured."""
    from analysis.isometry.experiment import measure_network

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    dead = build_model("resnet20", "none")
    prepare(dead, get_preset("fp32"))
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    assert measure_network(dead, x) is None
    live = build_model("resnet20", "fixup")
    prepare(live, get_preset("fp32"))
    rows, e2e = measure_network(live, x)
    assert e2e.phi1 > 0 and rows
