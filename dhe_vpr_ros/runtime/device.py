# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The device the networks run on."""
from __future__ import annotations

import logging

import torch

__all__ = ["resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(name: str | None, logger=None) -> torch.device:
    """'cuda' without a usable GPU falls back to the CPU with a warning instead of failing."""
    logger = logger or log
    name = (name or "cpu").strip() or "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %r requested but CUDA is not available; running on the CPU", name)
        return torch.device("cpu")
    return device
