"""The networks of the paper's Table 1 (and appendix A.3/A.5), in PyTorch layout.

Where the paper is silent (placement of dropout and BatchNorm in Conv2/4/13) we follow the
reference repository's Keras models: conv -> BN -> ReLU, dropout after each pooling stage and
between dense layers. Parameter counts match Table 1 (see ``tests/test_trainer_models.py``).

=============  =====================================================  ============  ==========
name           layers                                                 data          params
=============  =====================================================  ============  ==========
``f1``         784 -> 10, no bias (§5.5)                              MNIST         7,840
``f2``         784-128-64-10, ReLU, no output bias (§5.5)             MNIST         109,376
``mlp``        784-100-100-10, ReLU (section 3, appendix A.3)         MNIST         89,610
``conv7``      2x32, 32(5x5/2), 2x64, 64(5x5/2), 128(4x4), 10         MNIST         325,578
``conv2``      2x64, pool, 256, 256, 10 (BN, dropout)                 CIFAR-10      4.3M
``conv4``      2x64, pool, 2x128, pool, 256, 256, 10                  CIFAR-10      2.4M
``mlp300``     784-300-100-10, ReLU (LeNet-300-100)                    Fashion-MNIST 266,610
``conv2-28``   Conv2 on 28x28x1 inputs                                Fashion-MNIST 3.3M
``conv4-28``   Conv4 on 28x28x1 inputs                                Fashion-MNIST 1.9M
``conv13``     VGG-like 13 conv (64..512), 512, 10                    CIFAR-10      14.9M
``resnet20``   Keras CIFAR ResNet v1, depth 20, 16/32/64 filters      CIFAR-10      0.27M
``resnet50``   the same, depth 50 (the paper's "ResNet50")             CIFAR-10      0.76M
=============  =====================================================  ============  ==========
"""

from __future__ import annotations

from torch import nn

__all__ = ["build", "MODELS", "INPUT", "PERMUTE_BIAS", "DECAY", "ResNetV1"]


def _mlp(sizes: list[int], dropout: float = 0.0, out_bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, bias=out_bias or i < len(sizes) - 2))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _vgg(stages: list[list[int]], dense: list[int], *, in_ch=3, size=32, drop=0.25, drop_fc=0.5):
    layers: list[nn.Module] = []
    c = in_ch
    for stage in stages:
        for width in stage:
            layers += _conv_bn(c, width)
            c = width
        layers += [nn.MaxPool2d(2), nn.Dropout(drop)]
        size //= 2
    layers.append(nn.Flatten())
    d = c * size * size
    for width in dense:
        layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Dropout(drop_fc)]
        d = width
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def conv7(dropout: float = 0.4) -> nn.Sequential:
    """Conv7 (LeNet5-like, MNIST): only dropout as regularization, no BN (appendix A.5.2)."""
    r = nn.ReLU
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), r(), nn.Conv2d(32, 32, 3), r(),
        nn.Conv2d(32, 32, 5, stride=2, padding=2), r(), nn.Dropout(dropout),
        nn.Conv2d(32, 64, 3), r(), nn.Conv2d(64, 64, 3), r(),
        nn.Conv2d(64, 64, 5, stride=2, padding=2), r(), nn.Dropout(dropout),
        nn.Conv2d(64, 128, 4), r(), nn.Flatten(), nn.Dropout(dropout), nn.Linear(128, 10))


class _Block(nn.Module):
    """Keras ``resnet_v1`` basic block: conv-BN-ReLU-conv-BN, 1x1 conv shortcut when strided."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
        return (y + (x if self.shortcut is None else self.shortcut(x))).relu()


class ResNetV1(nn.Module):
    """The Keras CIFAR-10 example's ResNet v1: depth = 6n + 2, 16/32/64 filters, conv biases on."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet v1 depth must be 6n+2 (20, 32, 44, 50, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        blocks, c = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(_Block(c, width, 2 if stage and i == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.blocks(self.bn(self.conv(x)).relu())
        return self.fc(nn.functional.avg_pool2d(x, 8).flatten(1))


MODELS = {
    "f1": lambda: _mlp([784, 10], out_bias=False),  # §5.5: softmax outputs without bias
    "f2": lambda: _mlp([784, 128, 64, 10], out_bias=False),
    "mlp": lambda: _mlp([784, 100, 100, 10]),
    "conv7": conv7,
    "conv2": lambda: _vgg([[64, 64]], [256, 256]),
    "conv4": lambda: _vgg([[64, 64], [128, 128]], [256, 256]),
    "mlp300": lambda: _mlp([784, 300, 100, 10]),
    "conv2-28": lambda: _vgg([[64, 64]], [256, 256], in_ch=1, size=28),
    "conv4-28": lambda: _vgg([[64, 64], [128, 128]], [256, 256], in_ch=1, size=28),
    "conv13": lambda: _vgg([[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], [512]),
    "resnet20": lambda: ResNetV1(20),
    "resnet50": lambda: ResNetV1(50),
}

#: Input shape (C, H, W) each model expects.
INPUT = {"f1": (1, 28, 28), "f2": (1, 28, 28), "mlp": (1, 28, 28), "conv7": (1, 28, 28),
         "conv2": (3, 32, 32), "conv4": (3, 32, 32),
         "mlp300": (1, 28, 28), "conv2-28": (1, 28, 28), "conv4-28": (1, 28, 28), "conv13": (3, 32, 32),
         "resnet20": (3, 32, 32), "resnet50": (3, 32, 32)}

#: The paper's choice of permuting biases (Conv7, F1, F2 permute each bias as one vector).
PERMUTE_BIAS = {"f1": True, "f2": True, "conv7": True}

#: The paper's L2 where it is not "every weight" (``Config.decay``): F2 decays its hidden layers.
DECAY = {"f2": "hidden"}


def build(name: str) -> nn.Module:
    """A fresh model by name (PyTorch's default init; the trainer re-initializes it)."""
    try:
        return MODELS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
