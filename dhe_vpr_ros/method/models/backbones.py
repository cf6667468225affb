# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Backbones behind one interface: images -> dense local grid + global descriptor.

Everything downstream (DHE, matching, map database, node) sees only ``Features`` and the
attributes of ``Backbone``; which network produced them is a name in the checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cct import CCT
from .efficientnet_lite import EfficientNetLite0, packaged_weights_path
from .pooling import GeM, global_descriptor

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Features:
    """local: (B, C, H, W), L2-normalised per position; global_: (B, D), L2-normalised."""

    local: torch.Tensor
    global_: torch.Tensor


class Backbone(nn.Module):
    """Common attributes: the input frame and the geometry of the dense grid."""

    name: str
    input_size: int  # square input side in pixels
    stride: int  # pixels per grid cell
    local_dim: int
    global_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_blocks: int  # blocks that joint fine-tuning may unfreeze, counted from the input

    @property
    def grid_size(self) -> int:
        return self.input_size // self.stride

    def forward(self, images: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_pretrained(self) -> bool:
        """Load ImageNet weights available offline; returns False when there are none."""
        return False

    def blocks(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_trainable_from(self, first_block: int) -> None:
        """Freeze everything but blocks ``first_block`` onwards and the GeM exponent."""
        for p in self.parameters():
            p.requires_grad_(False)
        for block in self.blocks()[first_block:]:
            for p in block.parameters():
                p.requires_grad_(True)
        self.pool.p.requires_grad_(True)


class CCTBackbone(Backbone):
    """The paper's backbone: CCT-14/7x2 at 384, first 8 blocks; 384x24x24 grid, 384-d global."""

    name = "cct14"
    input_size = 384
    stride = 16
    local_dim = 384
    global_dim = 384
    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    num_blocks = 8

    def __init__(self):
        super().__init__()
        self.encoder = CCT(input_size=self.input_size, num_blocks=self.num_blocks)
        self.pool = GeM()

    def forward(self, images: torch.Tensor) -> Features:
        grid = self.encoder(images)
        return Features(local=F.normalize(grid, dim=1), global_=global_descriptor(grid, self.pool))

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder.classifier.blocks)

    def load_pretrained(self) -> bool:
        log.warning("no offline ImageNet weights for CCT-14/7x2; give a checkpoint "
                    "(e.g. the DHE-VPR release) or the network starts untrained")
        return False


class EfficientNetLiteBackbone(Backbone):
    """CPU backbone: EfficientNet-Lite0 at 384; stride-16 112x24x24 grid, 320-d global.

    The dense grid comes from the stride-16 stage (fine enough for patch matching); the
    global descriptor is GeM over the deeper stride-32 stage, which is more invariant.
    """

    name = "efficientnet_lite0"
    input_size = 384
    stride = 16
    local_dim = 112
    global_dim = 320
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    num_blocks = 16

    def __init__(self):
        super().__init__()
        self.encoder = EfficientNetLite0()
        self.pool = GeM()

    CPU_CHUNK = 1  # images per pass on a CPU: measured 31 ms/image alone, 58 ms/image in pairs
    cpu_chunking = True  # off while exporting to ONNX: a traced split would fix the batch size

    def forward(self, images: torch.Tensor) -> Features:
        # Depthwise convolutions run about 1.8x faster on channels-last input on a CPU, and
        # single images stay in cache; on a GPU the whole batch goes through at once.
        if images.device.type == "cpu" and self.cpu_chunking:
            images = images.contiguous(memory_format=torch.channels_last)
            parts = [self.encoder(chunk) for chunk in images.split(self.CPU_CHUNK)]
            dense, deep = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            dense, deep = self.encoder(images)
        return Features(local=F.normalize(dense, dim=1), global_=global_descriptor(deep, self.pool))

    def blocks(self) -> list[nn.Module]:
        return list(self.encoder._blocks)

    def load_pretrained(self) -> bool:
        path = packaged_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        unused = ("_conv_head.", "_bn1.", "_fc.")
        state = {k: v for k, v in state.items() if not k.startswith(unused)}
        self.encoder.load_state_dict(state, strict=True)
        log.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)
        return True


BACKBONES: dict[str, type[Backbone]] = {
    CCTBackbone.name: CCTBackbone,
    EfficientNetLiteBackbone.name: EfficientNetLiteBackbone,
}


def create_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]()
