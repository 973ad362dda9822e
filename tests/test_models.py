"""Models: parameter counts against the reference architectures, Fixup init as SPEC section 3."""
import math

import pytest
import torch
import torch.nn.functional as F

from eoq.models import MODELS, NORMS, build_model
from eoq.models.fixup import fixup_branch_factor, he_fan_out_std
from eoq.nn.layers import FixupScalar


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def cifar_reference_counts(depth: int) -> dict:
    """Hand count of He et al.'s CIFAR ResNet (option A): conv weights, BN affine, classifier."""
    n = (depth - 2) // 6
    conv = 3 * 16 * 9
    bn_channels = 16
    in_c = 16
    for c in (16, 32, 64):
        for j in range(n):
            conv += in_c * c * 9 + c * c * 9
            bn_channels += 2 * c
            in_c = c
    fc = 64 * 10 + 10
    blocks = 3 * n
    return {"bn": conv + 2 * bn_channels + fc, "fixup": conv + fc + 5 * blocks + 2, "none": conv + fc}


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
@pytest.mark.parametrize("norm", NORMS)
def test_cifar_parameter_counts(depth, norm):
    assert n_params(build_model(f"resnet{depth}", norm)) == cifar_reference_counts(depth)[norm]


def test_resnet20_is_027m():
    assert n_params(build_model("resnet20", "bn")) == 269_722


# torchvision's published counts (1000 classes, 7x7 stem): 11,689,512 / 21,797,672 / 25,557,032
TORCHVISION = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032}


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_parameter_counts(depth):
    bn = build_model(f"resnet{depth}", "bn", num_classes=1000, small_input=False)
    assert n_params(bn) == TORCHVISION[depth]
    bn_affine = sum(m.weight.numel() * 2 for m in bn.modules() if isinstance(m, torch.nn.BatchNorm2d))
    blocks = len(bn.blocks())
    m = 3 if depth == 50 else 2
    fixup = build_model(f"resnet{depth}", "fixup", num_classes=1000, small_input=False)
    assert n_params(fixup) == TORCHVISION[depth] - bn_affine + blocks * (2 * m + 1) + 2
    none = build_model(f"resnet{depth}", "none", num_classes=1000, small_input=False)
    assert n_params(none) == TORCHVISION[depth] - bn_affine


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name):
    model = build_model(name, "fixup")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fixup_zero_inits():
    model = build_model("resnet56", "fixup")
    for block in model.blocks():
        assert torch.count_nonzero(block.convs[-1].weight) == 0
        assert torch.count_nonzero(block.convs[0].weight) > 0
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0
    scalars = [m for m in model.modules() if isinstance(m, FixupScalar)]
    assert all(s.value.item() == (1.0 if s.mode == "scale" else 0.0) for s in scalars)
    assert sum(s.mode == "scale" for s in scalars) == len(model.blocks())


@pytest.mark.parametrize("name,m", [("resnet110", 2), ("resnet50", 3)])
def test_fixup_branch_scale(name, m):
    """Empirical std of branch convs = He fan-out std x L^(-1/(2m-2)) (within sampling error)."""
    torch.manual_seed(0)
    model = build_model(name, "fixup")
    L = len(model.blocks())
    assert fixup_branch_factor(L, m) == pytest.approx(L ** (-1 / (2 * m - 2)))
    ratios, weights = [], 0
    for block in model.blocks():
        for conv in block.convs[:-1]:
            ratios.append(float(conv.weight.detach().std()) / (he_fan_out_std(conv) * L ** (-1 / (2 * m - 2))))
            weights += conv.weight.numel()
    mean_ratio = sum(ratios) / len(ratios)
    assert abs(mean_ratio - 1) < 0.02, mean_ratio   # unscaled He init would give L^(1/(2m-2)) >= 2


def test_fixup_block_is_identity_at_init():
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    x = torch.relu(torch.randn(4, 16, 32, 32))  # block inputs are post-ReLU
    for block in model.blocks():
        if isinstance(block.shortcut, torch.nn.Identity):
            assert torch.equal(block(x), x)
        else:
            y = block(x)
            expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, y.shape[1] - x.shape[1]))
            assert torch.equal(y, expected)
            x = y


def test_fixup_network_logits_zero_at_init():
    model = build_model("resnet32", "fixup")
    out = model(torch.randn(3, 3, 32, 32))
    assert torch.count_nonzero(out) == 0
    assert F.cross_entropy(out, torch.tensor([0, 1, 2])).item() == pytest.approx(math.log(10))


def test_none_norm_explodes_with_depth_fixup_does_not():
    """Forward signal: plain He-init ResNet grows ~2x per block; Fixup stays near the input scale."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    norms = {}
    for norm in ("none", "fixup"):
        model = build_model("resnet56", norm)
        h = model.stem(x)
        for block in model.blocks():
            h = block(h)
        norms[norm] = float(h.detach().pow(2).mean().sqrt())
    assert norms["none"] > 1e4 * norms["fixup"]


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet21")
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("resnet20", "layernorm")
