"""Flattening a model into the one vector peers exchange, and the layout they must agree on.

Only floating-point parameters are exchanged, in the module's registration order. Buffers (e.g.
BatchNorm running statistics) stay local: they are not gradients, and averaging integer counters
like `num_batches_tracked` corrupts them (aggregation-spec §7.12).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from fednode.proto.v1 import model_pb2, tensor_pb2

_DTYPES = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
}


def exchanged_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.dtype.is_floating_point]


def model_layout(model: nn.Module) -> model_pb2.ModelLayout:
    layout = model_pb2.ModelLayout()
    for name, param in exchanged_parameters(model):
        layout.parameters.add(name=name, shape=list(param.shape), dtype=_DTYPES[param.dtype])
        layout.numel += param.numel()
    layout.digest = hashlib.sha256(layout.SerializeToString(deterministic=True)).hexdigest()
    return layout


def flatten_parameters(model: nn.Module) -> torch.Tensor:
    """All exchanged parameters as one float32 CPU vector (a copy)."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for _, p in exchanged_parameters(model)])


def assign_parameters(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a flat vector (as produced by `flatten_parameters`) into the model in place."""
    params = exchanged_parameters(model)
    expected = sum(p.numel() for _, p in params)
    if vector.ndim != 1 or vector.numel() != expected:
        raise ValueError(f"model has {expected} parameters, vector has shape {tuple(vector.shape)}")
    offset = 0
    with torch.no_grad():
        for _, param in params:
            count = param.numel()
            param.copy_(vector[offset : offset + count].view_as(param).to(param.device, param.dtype))
            offset += count
