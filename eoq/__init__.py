"""EOQ Workbench: 8-bit integer training without batch normalization (EOQ, arXiv 2105.13890).

The public API, what a notebook needs (nothing else here is promised):

    import eoq
    s = eoq.setup("resnet20", "fixup", "eoq", seed=0, lr=0.1)      # model + spec + optimizer
    images, labels = eoq.sample("embedded", split="test", n=16)     # class-balanced, classes interleaved
    loss, logits = eoq.train_step(s.model, s.optimizer, images, labels)   # detached tensors
    run = eoq.train(eoq.TrainConfig(data="embedded", epochs=1))     # in memory unless out= is given
    run.metrics, run.spec                                           # a table that renders; what ran

Data names: ``PRESETS`` (name -> QuantSpec: fp32, eoq, eoq-float-ends, eoq-shift, wageubn; ``eoq
presets`` prints them), ``MODELS`` (resnet20/32/44/56/110 in the CIFAR layout, resnet18/34/50 in the
ImageNet layout) and ``NORMS`` (bn, fixup, none). A custom spec: ``get_preset("eoq").with_changes(M=8)``
or ``load_spec({"base": "eoq", "M": 8})``, the same forms as a JSON spec file. The README's "API
tour" has five recipes.

Layers (each imports only those before it): ``kernels`` and ``distributed`` (leaves) -> ``quant``
(numerics: quantizers, spec, presets) -> ``engine`` (integer engine) -> ``nn`` (layers, Fixup,
prepare) -> ``models`` -> ``training`` (data, optimizer, loop) -> ``cli``. The analysis tools live in
the ``analysis`` package beside this one.
"""
from .engine import Engine
from .models import MODELS, NORMS, build_model
from .nn.prepare import grid_params, prepare
from .quant.formats import QuantizationError, QuantizerKind, Rounding
from .quant.presets import PRESETS, get_preset, load_spec
from .quant.spec import QuantSpec, SpecError, TensorQuant, WeightPolicy
from .training import data
from .training.config import ConfigError, TrainConfig
from .training.data import DataError, Dataset, load_cifar10, sample
from .training.loop import Run, TrainingDiverged, evaluate, train, train_step
from .training.optimizer import EOQSGD
from .training.setup import Setup, setup
from .training.trained import TrainedRun, load_trained

__all__ = [
    # quantization: specs, presets and their choices
    "QuantSpec", "TensorQuant", "WeightPolicy", "Rounding", "QuantizerKind", "Engine", "PRESETS", "get_preset",
    "load_spec",
    # models and their preparation
    "MODELS", "NORMS", "build_model", "prepare", "grid_params", "setup", "Setup", "EOQSGD",
    # data and training
    "data", "Dataset", "load_cifar10", "sample", "TrainConfig", "train", "train_step", "evaluate", "Run",
    "load_trained", "TrainedRun",
    # errors a user can meet (each has a one-line message)
    "SpecError", "ConfigError", "DataError", "QuantizationError", "TrainingDiverged",
]
