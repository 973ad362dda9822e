"""Model registry: ``build_model('resnet20', norm='fixup')``."""
from __future__ import annotations

from .blocks import NORMS, BasicBlock, Bottleneck, ResidualBlock
from .resnet import CIFAR_DEPTHS, IMAGENET_DEPTHS, ResNet, cifar_resnet, imagenet_resnet

MODELS = tuple(f"resnet{d}" for d in CIFAR_DEPTHS) + tuple(f"resnet{d}" for d in IMAGENET_DEPTHS)


def build_model(name: str, norm: str = "fixup", num_classes: int = 10, small_input: bool = True) -> ResNet:
    """CIFAR ResNets (resnet20..resnet110) or ImageNet-layout ones (resnet18/34/50).

    ``small_input`` gives the ImageNet-layout nets a 3x3/1 stem without max-pool for 32x32 images."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    depth = int(name[len("resnet"):])
    if depth in CIFAR_DEPTHS:
        return cifar_resnet(depth, norm, num_classes)
    return imagenet_resnet(depth, norm, num_classes, small_input=small_input)


__all__ = ["MODELS", "NORMS", "build_model", "ResNet", "ResidualBlock", "BasicBlock", "Bottleneck",
           "cifar_resnet", "imagenet_resnet"]
