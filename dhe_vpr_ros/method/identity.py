# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""What a map must record about the model that embedded it, and how that is computed."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..json_fields import field, numbers

__all__ = ["PRECISIONS", "ModelIdentity", "model_identity"]

PRECISIONS = ("float", "int8")  # what the backbone computes in; an int8 backbone embeds other features


@dataclass(frozen=True)
class ModelIdentity:
    """What must match between a map and the model that queries it.

    ``weights_sha256`` hashes the backbone's weights, not the checkpoint file: the stored
    features depend only on them, so a checkpoint that retrains just the homography regressor
    can query a map built before it, while any change to the backbone is caught. An int8 backbone
    (``export --int8``) has ``precision`` int8 and the hash of its quantised graph: its features differ
    from the float ones, so a map records which of the two embedded it.
    """

    backbone: str
    weights_sha256: str
    input_size: int
    local_shape: tuple[int, int, int]  # (C, H, W)
    global_dim: int
    precision: str = "float"

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "weights_sha256": self.weights_sha256,
                "input_size": self.input_size, "local_shape": list(self.local_shape),
                "global_dim": self.global_dim, "precision": self.precision}

    @classmethod
    def from_dict(cls, data) -> "ModelIdentity":
        """ValueError naming the field for anything that is not a model identity."""
        if not isinstance(data, dict):
            raise ValueError(f"is {type(data).__name__}, not an object")
        shape = numbers(data, "local_shape", 3, optional=False, kind=int)
        dims = {"input_size": field(data, "input_size", int), "global_dim": field(data, "global_dim", int)}
        for name, value in {**dims, "local_shape": min(shape)}.items():
            if not 0 < value <= 65536:
                raise ValueError(f"field {name!r} is out of range ({data[name]!r})")
        precision = field(data, "precision", str, optional=True) or "float"  # maps before int8: float
        if precision not in PRECISIONS:
            raise ValueError(f"field 'precision' is {precision!r}, not one of {', '.join(PRECISIONS)}")
        return cls(field(data, "backbone", str), field(data, "weights_sha256", str), dims["input_size"],
                   shape, dims["global_dim"], precision)


def model_identity(model) -> ModelIdentity:
    """The identity a map built with this model records (hash of the backbone weights)."""
    cached = getattr(model, "_identity", None)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    bb = model.backbone
    identity = ModelIdentity(bb.name, digest.hexdigest(), bb.input_size,
                             (bb.local_dim, bb.grid_size, bb.grid_size), bb.global_dim)
    object.__setattr__(model, "_identity", identity)
    return identity
