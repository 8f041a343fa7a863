"""Classifier architectures and device choice.

Every classifier exposes ``features(x)`` (penultimate activations) and
``head`` (the final ``nn.Linear``), so methods that work on the last layer
(LRA-NPP, concept poisoning) need no architecture-specific code.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .errors import InputError

MODELS = ("mnist_cnn", "cifar_cnn", "resnet18")


def pick_device(prefer: str = "auto") -> torch.device:
    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


class MnistCNN(nn.Module):
    """The LRA-NPP authors' MNIST CNN: conv1->32, conv32->64, maxpool, fc 12544->512, fc 512->10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 14 * 14, 512)
        self.head = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CifarCNN(nn.Module):
    """A CIFAR-10 CNN sized for CPU training (about 0.62M weights; ResNet-18 is the GPU choice):
    three conv 3x3 + max-pool blocks (32, 64, 128 channels), fc 2048->256, fc 256->10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.head = nn.Linear(256, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return F.relu(self.fc1(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ResNet18Small(nn.Module):
    """torchvision ResNet-18 adapted to 32x32 inputs (3x3 stem, no max-pool)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.backbone = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    if name == "mnist_cnn":
        return MnistCNN(num_classes, in_channels)
    if name == "cifar_cnn":
        return CifarCNN(num_classes, in_channels)
    if name == "resnet18":
        return ResNet18Small(num_classes, in_channels)
    raise InputError("model", f"unknown model {name!r}; known: {', '.join(MODELS)}")


def save_model(model: nn.Module, name: str, num_classes: int, in_channels: int, path) -> None:
    """Save weights plus what is needed to rebuild the architecture."""
    torch.save({"arch": name, "num_classes": num_classes, "in_channels": in_channels,
                "state_dict": model.state_dict()}, path)


def load_model(path, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    blob = torch.load(path, map_location=device or "cpu", weights_only=True)
    model = build_model(blob["arch"], blob["num_classes"], blob["in_channels"])
    model.load_state_dict(blob["state_dict"])
    meta = {k: blob[k] for k in ("arch", "num_classes", "in_channels")}
    return model.to(device or "cpu").eval(), meta
