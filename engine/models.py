"""Models by name or import path: a small CNN for the built-in data, every torchvision
classification model, or a user's `build(num_classes)` (the forms: engine/sources.py).

torchvision's ResNets get a 3x3 stride-1 stem without max-pool on small images (`small_input_stem`):
the usual CIFAR / Tiny ImageNet setup, which keeps a 64 px image from shrinking to 2x2 before the
last stage. `resnet18` on 64 px images is the ResNet-18 adt always trained.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Callable, Sequence
from functools import cache

import torch
from torch import nn

from .config import ConfigError, RunConfig
from .sources import FORMS, parse_model, resnet_family

SMALL_INPUT = 64  # px: images up to this size get the small-input stem when it is "auto"


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


@cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (detection, segmentation, video live in submodules)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


# Their auxiliary heads make the forward return a tuple while training; init_weights=True is
# their own initialisation (torchvision warns when it is left unset).
_TORCHVISION_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
                       "inception_v3": {"aux_logits": False, "init_weights": True}}


def _torchvision(name: str, num_classes: int, size: tuple[int, int] | None) -> nn.Module:
    import torchvision

    kwargs = dict(_TORCHVISION_KWARGS.get(name, {}))
    if size and name.startswith("vit_") and size[0] == size[1]:
        kwargs["image_size"] = size[0]  # position embeddings for the data's size, not 224
    if size and name.startswith("maxvit"):
        kwargs["input_size"] = size
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def with_small_input_stem(model: nn.Module) -> nn.Module:
    """A ResNet with a 3x3 stride-1 first convolution and no max-pool."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def uses_small_stem(name: str, size: tuple[int, int] | None, setting: str = "auto") -> bool:
    """Whether model `name` gets the small-input stem: ResNets only; auto = images <= SMALL_INPUT
    px (or of unknown size, as adt's resnet18 always was)."""
    if not resnet_family(name) or setting == "off":
        return False
    return setting == "on" or size is None or max(size) <= SMALL_INPUT


def model_builder(spec: str) -> Callable[[int, tuple[int, int] | None], nn.Module]:
    """The builder `--model` names, called as builder(num_classes, (h, w) or None). ConfigError
    naming `model` for an unknown name or a user's builder that cannot be imported."""
    source = parse_model(spec)
    if source.function:
        build = source.load()
        return lambda num_classes, _size: _users_model(spec, source.function, build, num_classes)
    if spec == "cnn":
        return lambda num_classes, _size: SmallCNN(num_classes)
    if spec not in torchvision_names():
        close = difflib.get_close_matches(spec, ["cnn", *torchvision_names()], n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError("model", f"is {spec!r}, which is neither cnn nor a torchvision "
                          f"classification model{hint}", f"use {FORMS}")
    return lambda num_classes, size: _torchvision(spec, num_classes, size)


def _users_model(spec: str, function: str, build: Callable, num_classes: int) -> nn.Module:
    try:
        model = build(num_classes)
    except Exception as exc:
        raise ConfigError("model", f"is {spec!r}, but {function}({num_classes}) raised "
                          f"{_one_line(exc)}", f"make {function}(num_classes) return the "
                          "model for that many classes") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError("model", f"is {spec!r}, but {function}({num_classes}) returned "
                          f"{reprlib.repr(model)} ({type(model).__name__}), not a torch.nn.Module",
                          f"return the model itself from {function}(num_classes)")
    return model


def _one_line(exc: BaseException) -> str:
    """'RuntimeError: its first line': a message fit for one paragraph."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def build_model(name: str, num_classes: int, image_size: int | Sequence[int] | None = None,
                small_input_stem: str = "auto") -> nn.Module:
    """The model `name` (any `--model` form) for `num_classes` and the data's (h, w) image size."""
    size = _size(image_size)
    builder = model_builder(name)
    try:
        model = builder(num_classes, size)
    except ConfigError:
        raise
    except Exception as exc:  # e.g. a torchvision model that cannot take this image size
        raise ConfigError("model", f"is {name!r}, but building it for {num_classes} classes raised "
                          f"{_one_line(exc)}", "pick a model that fits the data") from exc
    if uses_small_stem(name, size, small_input_stem):
        with_small_input_stem(model)
    return model


def build_for(config: RunConfig, num_classes: int, image_size: int | Sequence[int] | None) -> nn.Module:
    """The run's model: `config.model` with its stem setting, for the data's classes and size."""
    return build_model(config.model, num_classes, image_size, config.small_input_stem)


def check_model(config: RunConfig, num_classes: int, image_size: Sequence[int]) -> str:
    """Build the run's model and run one batch of 2 through it (CPU, eval, no grad); ConfigError
    naming `model` unless it gives `num_classes` logits. Returns a line for the preflight report."""
    h, w = _size(image_size)  # type: ignore[misc]
    model = build_for(config, num_classes, (h, w)).eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, h, w))
    except Exception as exc:
        raise ConfigError("model", f"is {config.model!r}, but its forward pass on a batch of 2 "
                          f"{w}x{h} images (the data's size) raised {_one_line(exc)}",
                          "use a model that takes images of this size, or prepare the data at "
                          "another size (adt data prepare --size)") from exc
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (2, num_classes):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ConfigError("model", f"is {config.model!r}, but its output for a batch of 2 {w}x{h} "
                          f"images is {got}, not (2, {num_classes}): one logit per class of the data",
                          f"give the last layer {num_classes} outputs (build(num_classes) is called "
                          f"with the data's class count)")
    params = sum(p.numel() for p in model.parameters())
    count = f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"
    stem = ", small-input stem" if uses_small_stem(config.model, (h, w), config.small_input_stem) else ""
    return f"model ok: {config.model} ({count} parameters{stem}), {w}x{h} -> {num_classes} classes"


# ImageNet statistics: inputs are normalised the same way for every model and data set.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
_on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> normalised float, on the images' device."""
    # The statistics are copied to each device once: a copy from pageable host memory makes the
    # host wait for the GPU, and twice per step that kept the GPU idle between steps.
    if images.device not in _on_device:
        _on_device[images.device] = (MEAN.to(images.device), STD.to(images.device))
    mean, std = _on_device[images.device]
    return (images.float() - mean) / std
