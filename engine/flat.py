"""Flat buffers: a model whose parameters, gradients and float buffers are views into one tensor each.

Worker and parameter server both hold one; a push or a reply moves one tensor instead of one per
layer.
"""

from __future__ import annotations

import torch
from torch import nn


class FlatModel:
    """A model whose parameters, gradients and float buffers are views into one flat tensor each.

    4-D weights are laid out channels_last inside the buffer (on every device), so GPU
    convolutions need no copies.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        params = list(model.parameters())
        device = params[0].device
        self.params = torch.zeros(sum(p.numel() for p in params), device=device)
        self.grads = torch.zeros_like(self.params)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = _view(self.params[offset:offset + n], p.shape).copy_(p.detach())
            p.grad = _view(self.grads[offset:offset + n], p.shape)
            offset += n
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.buffers = (torch.cat([b.reshape(-1) for b in buffers]) if buffers
                        else torch.zeros(0, device=device))
        offset = 0
        for module in model.modules():
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None and b.is_floating_point():
                    n = b.numel()
                    setattr(module, name, self.buffers[offset:offset + n].view_as(b))
                    offset += n
        self.named_params = dict(model.named_parameters())

    def zero_grad(self) -> None:
        self.grads.zero_()


def _view(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # The layout inside the buffer must not depend on the device: a CPU PS and GPU workers
    # exchange raw buffers.
    if len(shape) == 4:
        o, i, h, w = shape
        return flat.view(o, h, w, i).permute(0, 3, 1, 2)
    return flat.view(shape)
