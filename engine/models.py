"""Models by name: a small CNN for the built-in data, ResNet-18 adapted to 64x64 inputs."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three conv blocks with BatchNorm and a linear head; learns the built-in data in a minute on a CPU."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18_64(num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool, the usual Tiny ImageNet setup."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int) -> nn.Module:
    if name == "cnn":
        return SmallCNN(num_classes)
    if name == "resnet18":
        return resnet18_64(num_classes)
    raise ValueError(f"unknown model {name!r}")


# ImageNet statistics: inputs are normalised the same way for every model and data set.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalised float, on the images' device."""
    return (images.float() - MEAN.to(images.device)) / STD.to(images.device)
