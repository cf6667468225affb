# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Validation of a training run: Recall@1 with and without DHE, and on labelled views the corner
error of the regressed and refined homographies against RANSAC and the identity."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..loop.evaluation import evaluate
from ..map.building import add_frames
from ..map.database import MapDatabase
from ..map.sources import Frame
from ..method.geometry import corner_error
from ..method.identity import model_identity
from ..method.localizer import Localizer
from ..method.matching import grid_keypoints, mutual_nearest_neighbours, robust_homographies
from ..method.models import VPRModel
from ..method.rerank import make_reranker
from .config import TrainConfig
from .losses import rei_loss
from .mining import train_mode
from .pairs import WarpedPairs

__all__ = ["best_key", "validate"]


@torch.no_grad()
def validate(model: VPRModel, val: dict, cfg: TrainConfig, device: torch.device) -> dict:
    """Recall@1 with and without DHE; on labelled views also the corner error of DHE (as
    regressed and refined), of RANSAC on the same matches and of the identity."""
    model.eval()
    loc = Localizer(model, MapDatabase(model_identity(model)), device, reranker="dhe", top_k=cfg.val_top_k)
    if val["kind"] == "geo":
        run = val["run"]
        add_frames(loc, run.references, 16, len(run.references), desc="val database")
        report = evaluate(loc, run, ("none", "dhe"), cfg.val_top_k, (1, 5))
        metrics = {f"recall@{n}/{name}": r for name, rec in report["recall"].items() for n, r in rec.items()}
    else:
        metrics = _validate_views(model, loc, val["pairs"], device)
    train_mode(model)
    return metrics


def _validate_views(model: VPRModel, loc: Localizer, pairs: WarpedPairs, device: torch.device) -> dict:
    pairs.epoch = 0
    samples = [pairs[i] for i in range(len(pairs))]
    add_frames(loc, [Frame(f"val-{i}", lambda s=s: s["positive"].numpy()) for i, s in enumerate(samples)],
               16, desc="val map")
    stride, size = model.backbone.stride, float(pairs.size)
    dhe = make_reranker("dhe", model, stride=stride)  # its refinement is what the node publishes
    errors: dict[str, list[float]] = {"dhe": [], "dhe+refine": [], "ransac": [], "identity": []}
    hits, rei = {"none": 0, "dhe": 0}, []
    for i, s in enumerate(samples):
        q_local, q_global = loc.embed([s["query"].numpy()])  # once, for both re-rankers and the pair
        for name in hits:
            ranked = loc.rank(q_local[0], q_global[0], (pairs.size, pairs.size), name)
            hits[name] += int(ranked.best.place_id == i)
        p_local = torch.from_numpy(loc.database.local_features([i])).to(device).float()
        q_local = q_local.float()
        kps = grid_keypoints(*q_local.shape[-2:], stride, device=device)
        matches = mutual_nearest_neighbours(q_local[0], p_local)
        h = model.homographies(q_local, p_local).float()
        refined = dhe.refine(h, kps, matches)
        h_ransac, _ = robust_homographies(kps, kps, matches, 1.5 * stride, "ransac")
        truth = s["h_true"][None].to(device)
        for name, estimate in (("dhe", h), ("dhe+refine", refined), ("identity", torch.eye(3, device=device)[None]),
                               ("ransac", torch.from_numpy(h_ransac).float().to(device))):
            errors[name].append(corner_error(estimate, truth, size, size).item())
        rei.append(rei_loss(torch.nan_to_num(h), q_local, p_local, stride).loss.item())
    n = max(len(samples), 1)
    metrics = {"recall@1/none": 100.0 * hits["none"] / n, "recall@1/dhe": 100.0 * hits["dhe"] / n}
    metrics.update({f"corner_error/{name}": float(np.nanmean(v)) for name, v in errors.items()})
    metrics.update({f"corner_error_median/{name}": float(np.nanmedian(v)) for name, v in errors.items()})
    metrics["rei_loss"] = float(np.mean(rei))
    return metrics


def best_key(metrics: dict) -> tuple:
    """Recall@1 first, then the median corner error of the published (refined) homography,
    then that of the regressed one (refinement often ties at the matches' grid accuracy):
    medians, because a few very hard views dominate any mean."""
    def error(name):
        value = metrics.get(f"corner_error_median/{name}", metrics.get(f"corner_error/{name}", 1e9))
        return -(value if math.isfinite(value) else 1e9)
    return (metrics.get("recall@1/dhe", 0.0), error("dhe+refine"), error("dhe"))
