#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Training throughput: optimiser steps per second of stage dhe and stage joint.

Runs the real ``Trainer`` (the code ``python -m dhe_vpr_ros train`` runs) on generated
photographs for a fixed number of steps after a warm-up, per stage, and reports steps/s and
pairs/s. Stage dhe embeds fresh synthetic views every step (frozen backbone); stage joint
back-propagates through the backbone's last blocks with triplet mining.

    python benchmarks/train_speed.py --device cuda --backbone cct14 --batch-size 8

Prints a table, then ``train_<stage>_steps_per_s=`` lines.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dhe_vpr_ros.training.config import TrainConfig
from dhe_vpr_ros.training.trainer import Trainer


def make_photos(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (48, 64, 3), np.uint8)
        photo = cv2.resize(small, (512, 384), interpolation=cv2.INTER_CUBIC)
        for _ in range(30):
            x, y = (int(v) for v in rng.integers(0, 480, 2))
            cv2.circle(photo, (x, y), int(rng.integers(5, 60)), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        cv2.imwrite(str(folder / f"photo_{i:03d}.png"), photo)


def steps_per_second(stage: str, args, photos: Path, out: Path) -> float:
    cfg = TrainConfig(out=str(out / stage), stage=stage, images=[str(photos)], backbone=args.backbone,
                      batch_size=args.batch_size, epochs=1, lr=1e-5, device=args.device, val_fraction=0.05,
                      tensorboard=False, negatives=2, mining_pool=16, cache_refresh=10 ** 6)
    trainer = Trainer(cfg, resume=False)
    loader = torch.utils.data.DataLoader(trainer.train_set, batch_size=args.batch_size, shuffle=False)
    batches = iter(loader)
    for _ in range(args.warmup):
        trainer._step(next(batches), 0)
    if trainer.dist.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer._step(next(batches), 0)
    if trainer.dist.device.type == "cuda":
        torch.cuda.synchronize()
    trainer.close()
    return args.steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--stages", default="dhe,joint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos, args.batch_size * (args.steps + args.warmup) + 4)
        rates = {stage: steps_per_second(stage, args, photos, Path(tmp)) for stage in args.stages.split(",")}
    print(f"{'stage':<8}{'backbone':<20}{'device':<8}{'batch':>6}{'steps/s':>9}{'pairs/s':>9}")
    for stage, rate in rates.items():
        print(f"{stage:<8}{args.backbone:<20}{args.device:<8}{args.batch_size:>6}{rate:>9.2f}"
              f"{rate * args.batch_size:>9.1f}")
    for stage, rate in rates.items():
        print(f"train_{stage}_steps_per_s={rate:.3f}")


if __name__ == "__main__":
    main()
