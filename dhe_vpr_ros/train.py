# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""``train``: the homography regressor, then optionally the backbone with it; resumable, DDP.

* stage ``dhe``: backbone frozen, the homography regressor learns. Labelled pairs (synthetic
  second views of photographs, ``views``) give the supervised corner loss; pairs without a
  label (geo datasets) give the paper's REI loss; ``--supervised-weight`` and ``--rei-weight``
  mix the two. The views grow from mild to the strongest perspective over
  ``--curriculum-epochs``.
* stage ``joint``: the backbone's last blocks and the regressor together; triplet loss with
  partial hard-negative mining on global descriptors + the homography losses through the
  backbone.

Output directory: ``last.pt`` (model + full training state, written every epoch and on
Ctrl-C / SIGTERM), ``best.pt`` (best validation Recall@1, ties broken by the corner error of
the published, refined homography), ``config.json`` (every setting, the view recipe included)
and ``history.jsonl`` beside them, TensorBoard events under ``tensorboard/``. Checkpoints are
ordinary dhe_vpr_ros checkpoints: ``build-map``, ``query`` and the node load them as they are.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .atomic import atomic_write
from .build_map import add_frames
from .datasets import Frame, bag_frames, folder_frames, geo_split
from .geometry import corner_error
from .localizer import Localizer, model_identity, normalise
from .losses import corner_loss, rei_loss, triplet_loss
from .mapdb import MapDatabase
from .matching import grid_keypoints, mutual_nearest_neighbours, robust_homographies
from .models import BACKBONES, VPRModel, build_model, load_checkpoint, save_checkpoint
from .rerank import make_reranker
from .runtime import resolve_device
from .training_data import GeoPairs, WarpedPairs, load_square, negatives_pool, sample_rng
from .arguments import count, number
from .views import ViewRecipe

log = logging.getLogger(__name__)

UNFREEZE_FROM = {"cct14": 6, "efficientnet_lite0": 8}  # paper: CCT blocks 0..5 stay frozen


@dataclass
class TrainConfig:
    out: str
    stage: str = "dhe"
    dataset: str | None = None
    images: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    bag: str | None = None
    topic: str | None = None
    backbone: str = "efficientnet_lite0"
    regressor: str | None = None
    init_checkpoint: str | None = None
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-5
    lr_schedule: str = "none"
    clip_grad: float = 10.0
    margin: float = 0.1
    negatives: int = 2
    mining_pool: int = 1000
    cache_refresh: int = 1000
    supervised_weight: float = 1.0
    robust_px: float = 64.0
    rei_weight: float = 1.0
    warp_repeats: int | None = None
    difficulty: float = 1.0
    curriculum_epochs: int = 0
    curriculum_start: float = 0.25
    views: dict = field(default_factory=lambda: ViewRecipe().to_dict())
    unfreeze_from: int | None = None
    positive_dist_train: float = 10.0
    positive_dist_val: float = 25.0
    val_fraction: float = 0.1
    val_top_k: int = 10
    val_every: int = 1
    max_samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    workers: int = 0
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from config.json, ignoring (and naming) settings this version no longer has."""
        known = {f.name for f in fields(cls)}
        dropped = sorted(set(data) - known)
        if dropped:
            log.warning("config.json: ignoring settings this version does not have: %s", ", ".join(dropped))
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("images"), str):  # before 0.2: one folder
            values["images"] = [values["images"]]
        return cls(**values)

    def recipe(self) -> ViewRecipe:
        views = dict(self.views)
        views["crop"] = tuple(views.get("crop", ViewRecipe().crop))
        return ViewRecipe(**views)

    def band(self, epoch: int) -> tuple[float, float]:
        """The difficulty band of an epoch's views: its top grows linearly from
        ``curriculum_start`` to ``difficulty`` over ``curriculum_epochs``."""
        if self.curriculum_epochs <= 0:
            return (0.0, self.difficulty)
        progress = min(1.0, epoch / self.curriculum_epochs)
        start = min(self.curriculum_start, self.difficulty)
        return (0.0, start + (self.difficulty - start) * progress)


# -- data ---------------------------------------------------------------------------------
def _image_frames(cfg: TrainConfig) -> list[Frame]:
    import fnmatch
    frames = [f for folder in cfg.images for f in folder_frames(folder)]
    if cfg.exclude:
        frames = [f for f in frames if not any(fnmatch.fnmatch(Path(f.source).name, p) for p in cfg.exclude)]
        if not frames:
            raise ValueError(f"--exclude {cfg.exclude} leaves no images")
    return frames


def make_datasets(cfg: TrainConfig, size: int):
    """(train dataset, validation spec). Errors on empty or unlabelled data come from here,
    before any model is built."""
    if cfg.dataset:
        root = Path(cfg.dataset)
        train_q = folder_frames(geo_split(root / "train", "queries"), with_utm=True)
        train_db = folder_frames(geo_split(root / "train", "database"), with_utm=True)
        train = GeoPairs(train_q, train_db, size, cfg.positive_dist_train, cfg.positive_dist_val, cfg.seed)
        val = {"kind": "geo", "queries": folder_frames(geo_split(root / "val", "queries"), with_utm=True),
               "database": folder_frames(geo_split(root / "val", "database"), with_utm=True)}
        return train, val
    if cfg.images:
        frames = _image_frames(cfg)
    elif cfg.bag:
        if not cfg.topic:
            raise ValueError("--bag needs --topic")
        frames = list(bag_frames(cfg.bag, cfg.topic))
        if not frames:
            raise ValueError(f"no decodable images on {cfg.topic} in {cfg.bag}")
    else:
        raise ValueError("give training data: --dataset (geo-localisation layout), --images or --bag")
    if cfg.max_samples:
        frames = frames[:cfg.max_samples]
    n_val = max(1, int(round(len(frames) * cfg.val_fraction))) if len(frames) > 1 else 0
    if len(frames) - n_val < 1:
        raise ValueError("need at least 2 images (training and validation)")
    # validation: every n-th image, so that each source folder is represented
    val_ids = set(np.linspace(0, len(frames) - 1, n_val).round().astype(int).tolist())
    recipe = cfg.recipe()
    train = WarpedPairs([f for i, f in enumerate(frames) if i not in val_ids], size, cfg.seed, cfg.band(0), recipe)
    val_pairs = WarpedPairs([frames[i] for i in sorted(val_ids)], size, cfg.seed + 1, (0.0, cfg.difficulty), recipe)
    return train, {"kind": "warped", "pairs": val_pairs}


# -- the differentiable step (what DDP wraps) ---------------------------------------------
@dataclass
class StepOutput:
    loss: torch.Tensor
    corner: torch.Tensor  # (B,) 4-point error of each pair, NaN where unlabelled
    rei: torch.Tensor  # scalar REI loss (0 when not used)
    triplet: torch.Tensor
    homographies: torch.Tensor


class TrainStep(nn.Module):
    def __init__(self, model: VPRModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, query, positive, h_true, negatives=None, features=None) -> tuple:
        """The fields of a ``StepOutput`` as a tuple (what DDP can look into).
        ``features``: precomputed (query, positive) local grids (frozen backbone only)."""
        model, cfg = self.model, self.cfg
        fq = fp = None
        if features is not None:
            q_local, p_local = features
        else:
            with torch.set_grad_enabled(cfg.stage != "dhe" and torch.is_grad_enabled()):
                fq = model.embed(normalise(query, model))
                fp = model.embed(normalise(positive, model))
            q_local, p_local = fq.local, fp.local
        h = model.homographies(q_local, p_local)
        zero = torch.zeros((), device=h.device)
        loss, rei = zero, zero
        labelled = torch.isfinite(h_true).flatten(1).all(1) & torch.isfinite(h).flatten(1).all(1)
        corner = torch.full((h.shape[0],), float("nan"), device=h.device)
        if labelled.any():
            size = float(model.backbone.input_size)
            corner = corner.masked_scatter(labelled, corner_loss(h[labelled].detach(), h_true[labelled], size))
            if cfg.supervised_weight:
                robust = corner_loss(h[labelled], h_true[labelled], size, robust_px=cfg.robust_px)
                loss = loss + cfg.supervised_weight * robust.mean()
        if cfg.rei_weight:
            rei = rei_loss(torch.nan_to_num(h), q_local.float(), p_local.float(), model.backbone.stride).loss
            loss = loss + cfg.rei_weight * rei
        trip = zero
        if negatives is not None:
            b, m = negatives.shape[:2]
            fn = model.embed(normalise(negatives.flatten(0, 1), model)).global_.view(b, m, -1)
            trip = triplet_loss(fq.global_.float(), fp.global_.float(), fn.float(), cfg.margin)
            loss = loss + trip
        if not loss.requires_grad:  # nothing to learn from this batch: keep backward() valid
            loss = loss + 0.0 * h.sum()
        return loss, corner, rei, trip, h


# -- triplet mining -----------------------------------------------------------------------
class NegativeMiner:
    """Partial hard-negative mining: the hardest ``negatives`` of ``pool`` random candidates,
    by cached global descriptors refreshed every ``refresh`` queries."""

    def __init__(self, images, excluded, cfg: TrainConfig, size: int):
        self.images, self.excluded, self.cfg, self.size = images, excluded, cfg, size
        self.cache: torch.Tensor | None = None
        self.queries_since_refresh = 0

    @torch.no_grad()
    def refresh(self, model: VPRModel, device: torch.device) -> None:
        model.eval()
        out = []
        for start in range(0, len(self.images), 16):
            batch = torch.stack([torch.from_numpy(load_square(f, self.size))
                                 for f in self.images[start:start + 16]]).to(device)
            out.append(model.embed(normalise(batch, model)).global_.float().cpu())
        self.cache = torch.cat(out)
        self.queries_since_refresh = 0
        _train_mode(model)

    def negatives(self, model, device, query_global: torch.Tensor, indices, epoch: int) -> torch.Tensor:
        if self.cache is None or self.queries_since_refresh >= self.cfg.cache_refresh:
            self.refresh(model, device)
        chosen = []
        for q, index in zip(query_global.detach().float().cpu(), indices):
            rng = sample_rng(self.cfg.seed + 7, epoch, int(index))
            allowed = np.setdiff1d(np.arange(len(self.images)), self.excluded[int(index)])
            if len(allowed) < self.cfg.negatives:
                raise ValueError("not enough negatives for triplet mining; add more images/places")
            pool = rng.choice(allowed, size=min(self.cfg.mining_pool, len(allowed)), replace=False)
            sims = self.cache[pool] @ q
            chosen.append(pool[torch.topk(sims, self.cfg.negatives).indices.numpy()])
        self.queries_since_refresh += len(indices)
        return torch.stack([torch.stack([torch.from_numpy(load_square(self.images[j], self.size)) for j in row])
                            for row in chosen]).to(device)


# -- validation ---------------------------------------------------------------------------
@torch.no_grad()
def validate(model: VPRModel, val: dict, cfg: TrainConfig, device: torch.device) -> dict:
    """Recall@1 with and without DHE; on labelled views also the corner error of DHE (as
    regressed and refined), of RANSAC on the same matches and of the identity."""
    model.eval()
    loc = Localizer(model, MapDatabase(model_identity(model)), device, reranker="dhe", top_k=cfg.val_top_k)
    if val["kind"] == "geo":
        from .evaluate import evaluate
        add_frames(loc, val["database"], 16, len(val["database"]), desc="val database")
        report = evaluate(loc, val["queries"], ("none", "dhe"), cfg.val_top_k, cfg.positive_dist_val, (1, 5))
        metrics = {f"recall@{n}/{name}": r for name, rec in report["recall"].items() for n, r in rec.items()}
    else:
        metrics = _validate_views(model, loc, val["pairs"], device)
    _train_mode(model)
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


def _train_mode(model: VPRModel) -> None:
    """Regressor in training mode; the backbone's normalisation statistics stay frozen (small
    batches of one place would corrupt BatchNorm's running averages)."""
    model.train()
    model.backbone.eval()


def best_key(metrics: dict) -> tuple:
    """Recall@1 first, then the median corner error of the published (refined) homography,
    then that of the regressed one (refinement often ties at the matches' grid accuracy):
    medians, because a few very hard views dominate any mean."""
    def error(name):
        value = metrics.get(f"corner_error_median/{name}", metrics.get(f"corner_error/{name}", 1e9))
        return -(value if math.isfinite(value) else 1e9)
    return (metrics.get("recall@1/dhe", 0.0), error("dhe+refine"), error("dhe"))


# -- the run ------------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a run stands; saved in last.pt so that --resume continues at the exact step."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best: tuple | None = None
    history: list = field(default_factory=list)
    stop_requested: bool = False  # set by SIGINT / SIGTERM; the loop saves and stops

    def last_metrics(self) -> dict:
        """The latest validation in the history ({} before the first)."""
        return next((h["val"] for h in reversed(self.history) if h["val"]), {})


class Stop(Exception):
    pass


@dataclass
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(cfg: TrainConfig) -> Distributed:
    """One process, or one rank of a torchrun launch (NCCL on GPUs, gloo on CPUs)."""
    device = resolve_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(device, dist.get_rank(), dist.get_world_size())


def build_or_resume(cfg: TrainConfig, device: torch.device, resume: bool) -> tuple[VPRModel, dict | None]:
    """The model to train and, when resuming, the saved training state (else None)."""
    state_path = Path(cfg.out) / "last.pt"
    if resume:
        model, payload = load_checkpoint(state_path, device=device)
        return model, payload["training"]
    if cfg.init_checkpoint:
        model, _ = load_checkpoint(cfg.init_checkpoint, expect_backbone=cfg.backbone, device=device)
    else:
        model = build_model(cfg.backbone, cfg.regressor, pretrained=True).to(device)
    return model, None


def _set_trainable(model: VPRModel, cfg: TrainConfig) -> list[nn.Parameter]:
    if cfg.stage == "dhe":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    else:
        first = cfg.unfreeze_from if cfg.unfreeze_from is not None else UNFREEZE_FROM.get(model.backbone.name, 0)
        model.backbone.set_trainable_from(first)
    for p in model.regressor.parameters():
        p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _schedule(optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1))))
    if cfg.lr_schedule != "none":
        raise ValueError(f"unknown --lr-schedule {cfg.lr_schedule!r}; use none or cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


class FeatureCache:
    """Local grids of a frozen backbone: each photo's map view once, and each query view once
    per warp set when ``--warp-repeats`` fixes the sets (stage dhe on WarpedPairs only)."""

    def __init__(self, cache_queries: bool):
        self.positives: dict[int, torch.Tensor] = {}
        self.queries: dict[tuple[int, int], torch.Tensor] | None = {} if cache_queries else None

    def has_all(self, warp_set: int, indices) -> bool:
        """Whether every view of ``indices`` in ``warp_set`` is cached (images then not needed)."""
        return self.queries is not None and all(
            (warp_set, int(i)) in self.queries and int(i) in self.positives for i in indices)

    @torch.no_grad()
    def grids(self, model: VPRModel, warp_set: int, indices, query, positive):
        ids = [int(i) for i in indices]
        self._fill(self.positives, ids, positive, model)
        if self.queries is None:
            q = model.embed(normalise(query, model)).local.float()
        else:
            self._fill(self.queries, [(warp_set, i) for i in ids], query, model)
            q = torch.stack([self.queries[(warp_set, i)] for i in ids]).to(query.device).float()
        return q, torch.stack([self.positives[i] for i in ids]).to(query.device).float()

    @staticmethod
    def _fill(store: dict, keys: list, images: torch.Tensor, model: VPRModel) -> None:
        missing = [j for j, key in enumerate(keys) if key not in store]
        if missing:
            local = model.embed(normalise(images[missing], model)).local.half().cpu()
            for n, j in enumerate(missing):
                store[keys[j]] = local[n]


class Trainer:
    """One training run: the model, its optimiser and data, one epoch at a time."""

    def __init__(self, cfg: TrainConfig, resume: bool):
        self.cfg = cfg
        self.dist = setup_distributed(cfg)
        self.out = Path(cfg.out)
        self.state_path = self.out / "last.pt"
        if resume and not self.state_path.is_file():
            raise FileNotFoundError(f"--resume: no {self.state_path} to continue from")
        torch.manual_seed(cfg.seed)
        # data first: bad data is reported before a model is built
        self.size = BACKBONES[cfg.backbone].input_size if cfg.backbone in BACKBONES else 384
        self.train_set, self.val = make_datasets(cfg, self.size)
        self.model, saved = build_or_resume(cfg, self.dist.device, resume)
        _train_mode(self.model)
        self.optimizer = torch.optim.Adam(_set_trainable(self.model, cfg), lr=cfg.lr)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.train_set) / self.dist.world) / cfg.batch_size)
        self.scheduler = _schedule(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs)
        self.miner = NegativeMiner(*negatives_pool(self.train_set), cfg, self.size) if cfg.stage == "joint" else None
        self.state = RunState()
        if saved is not None:
            self._restore(saved)
        self.step_module = TrainStep(self.model, cfg)
        self.runner = self.step_module
        if self.dist.enabled:
            device = self.dist.device
            self.runner = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.amp = cfg.amp and self.dist.device.type == "cuda"
        frozen_views = cfg.stage == "dhe" and isinstance(self.train_set, WarpedPairs)
        self.features = FeatureCache(bool(cfg.warp_repeats)) if frozen_views else None
        self.writer = _tensorboard(self.out, cfg) if self.dist.rank == 0 else None

    def _restore(self, saved: dict) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = RunState(saved["epoch"], saved["step"], saved["global_step"],
                              tuple(saved["best"]) if saved["best"] is not None else None, list(saved["history"]))
        if self.miner is not None and saved.get("mining_cache") is not None:
            self.miner.cache, self.miner.queries_since_refresh = saved["mining_cache"], saved["mining_seen"]
        torch.set_rng_state(saved["torch_rng"])
        log.info("resuming %s at epoch %d step %d", self.state_path, self.state.epoch + 1, self.state.step)

    # -- persistence ---------------------------------------------------------------------
    def save_state(self) -> None:
        if self.dist.rank != 0:
            return
        s, miner = self.state, self.miner
        training = {"epoch": s.epoch, "step": s.step, "global_step": s.global_step,
                    "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "best": list(s.best) if s.best is not None else None, "history": s.history,
                    "torch_rng": torch.get_rng_state(),
                    "mining_cache": miner.cache if miner is not None else None,
                    "mining_seen": miner.queries_since_refresh if miner is not None else 0}
        save_checkpoint(self.state_path, self.model, meta=_meta(self.cfg, s.epoch, s.step),
                        extra={"training": training})

    # -- one epoch -----------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[list[int]]:
        sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world, rank=self.dist.rank,
                                     shuffle=True, seed=self.cfg.seed)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        return [indices[i:i + self.cfg.batch_size] for i in range(0, len(indices), self.cfg.batch_size)]

    def _prepare_views(self, epoch: int) -> None:
        """Which views this epoch sees: with --warp-repeats, warp set ``epoch % N`` at the
        difficulty of its first epoch (so cached grids stay valid); else fresh views."""
        cfg = self.cfg
        warp_set = epoch % cfg.warp_repeats if cfg.warp_repeats else epoch
        self.train_set.epoch = warp_set
        if isinstance(self.train_set, WarpedPairs):
            self.train_set.band = cfg.band(warp_set)

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch (from the saved step when resuming); returns its mean losses."""
        self._prepare_views(epoch)
        batches = self._batches(epoch)
        first = self.state.step if epoch == self.state.epoch else 0
        if self.features is not None:
            self.train_set.labels_only = self.features.has_all(self.train_set.epoch,
                                                               [i for b in batches[first:] for i in b])
        loader = DataLoader(self.train_set, batch_sampler=batches[first:], num_workers=self.cfg.workers)
        sums = {"loss": 0.0, "rei_loss": 0.0, "triplet_loss": 0.0, "corner_error_px": 0.0, "n": 0, "n_truth": 0}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", initial=first, total=len(batches),
                   disable=None if self.dist.rank == 0 else True)
        for step, batch in enumerate(bar, start=first):
            out = self._step(batch, epoch)
            known = torch.isfinite(out.corner)
            sums["loss"] += out.loss.item()
            sums["rei_loss"] += float(out.rei.detach())
            sums["triplet_loss"] += float(out.triplet.detach())
            sums["corner_error_px"] += out.corner[known].sum().item()
            sums["n"] += 1
            sums["n_truth"] += int(known.sum())
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
            self._log_step(out, known)
            if self.state.stop_requested:
                self.state.epoch, self.state.step = epoch, step + 1
                self.save_state()
                raise Stop
        n = max(sums["n"], 1)
        stats = {k: sums[k] / n for k in ("loss", "rei_loss", "triplet_loss")}
        if sums["n_truth"]:
            stats["corner_error_px"] = sums["corner_error_px"] / sums["n_truth"]
        return stats

    def _step(self, batch: dict, epoch: int) -> StepOutput:
        device, model = self.dist.device, self.model
        q, p, h_true = batch["query"].to(device), batch["positive"].to(device), batch["h_true"].to(device)
        negs = None
        if self.miner is not None:
            with torch.no_grad():
                q_global = model.embed(normalise(q, model)).global_
            negs = self.miner.negatives(model, device, q_global, batch["index"], epoch)
        features = None
        if self.features is not None:
            features = self.features.grids(model, self.train_set.epoch, batch["index"], q, p)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = StepOutput(*self.runner(q, p, h_true, negs, features))
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.cfg.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        self.state.global_step += 1
        return out

    def _log_step(self, out: StepOutput, known: torch.Tensor) -> None:
        if self.writer is None:
            return
        step = self.state.global_step
        self.writer.add_scalar("train/loss", out.loss.item(), step)
        if self.cfg.rei_weight:
            self.writer.add_scalar("train/rei_loss", float(out.rei), step)
        if self.miner is not None:
            self.writer.add_scalar("train/triplet_loss", float(out.triplet), step)
        if known.any():
            self.writer.add_scalar("train/corner_error_px", out.corner[known].mean().item(), step)

    # -- validation and checkpoints ------------------------------------------------------
    def validate_and_checkpoint(self, epoch: int, train_stats: dict | None) -> dict:
        """Rank 0: validate (every ``val_every`` epochs and at the end), append to the history,
        keep best.pt and last.pt current."""
        state = self.state
        if self.dist.rank != 0:
            return {}
        due = epoch % max(self.cfg.val_every, 1) == 0 or epoch == self.cfg.epochs
        metrics = validate(self.model, self.val, self.cfg, self.dist.device) if due else {}
        state.history.append({"epoch": epoch, "train": train_stats or {},
                              "band": list(self.cfg.band(epoch)), "val": metrics})
        log.info("epoch %d: train %s | val %s", epoch, _fmt(train_stats or {}), _fmt(metrics))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, epoch)
            self.writer.flush()
        key = best_key(metrics)
        if due and epoch > 0 and (state.best is None or key > state.best):
            state.best = key
            save_checkpoint(self.out / "best.pt", self.model, meta={**_meta(self.cfg, epoch, 0), "val": metrics})
        state.epoch, state.step = epoch, 0
        self.save_state()
        with atomic_write(self.out / "history.jsonl", mode="w") as handle:
            handle.write("".join(json.dumps(h) + "\n" for h in state.history))
        return metrics

    def run(self) -> dict:
        if self.dist.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.out / "config.json", mode="w") as handle:
                json.dump(asdict(self.cfg), handle, indent=2)
        metrics = self.state.last_metrics()
        if not self.state.history and self.dist.rank == 0:  # the starting point of the curve
            metrics = self.validate_and_checkpoint(0, None)
        for epoch in range(self.state.epoch, self.cfg.epochs):
            stats = self.run_epoch(epoch)
            if self.dist.rank == 0:
                metrics = self.validate_and_checkpoint(epoch + 1, stats)
            if self.dist.enabled:
                dist.barrier()
        if self.cfg.extra.get("dump_rank_weights"):
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                       self.out / f"rank{self.dist.rank}_weights.pt")
        return metrics

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.dist.enabled:
            dist.destroy_process_group()


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or continue) a training; returns the last validation metrics. SIGINT and SIGTERM
    save the exact state and stop cleanly (continue with ``resume=True``)."""
    if cfg.stage not in ("dhe", "joint"):
        raise ValueError(f"unknown stage {cfg.stage!r}; use dhe or joint")
    trainer = Trainer(cfg, resume)

    def on_signal(signum, frame):
        trainer.state.stop_requested = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return trainer.run()
    except Stop:
        log.info("interrupted: state saved to %s; continue with --resume", trainer.state_path)
        return trainer.state.last_metrics()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        trainer.close()


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def _meta(cfg: TrainConfig, epoch: int, step: int) -> dict:
    data = cfg.dataset or (",".join(cfg.images) if cfg.images else None) or f"{cfg.bag}:{cfg.topic}"
    return {"trained_by": "dhe_vpr_ros train", "stage": cfg.stage, "epoch": epoch, "step": step,
            "seed": cfg.seed, "data": data}


def _tensorboard(out: Path, cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed (pip install tensorboard); scalars are only in history.jsonl")
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- command line -------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(out="")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, config, logs)")
    parser.add_argument("--stage", choices=("dhe", "joint"), default=d.stage)
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", help="geo-localisation layout: DIR/train/ and DIR/val/ with database/, queries/")
    data.add_argument("--images", nargs="+", metavar="DIR",
                      help="image folder(s), searched recursively: labelled synthetic second views")
    data.add_argument("--bag", help="rosbag2 (with --topic): labelled synthetic second views of its frames")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="with --images: leave out files whose name matches a pattern (e.g. 'graf*')")
    parser.add_argument("--topic")
    parser.add_argument("--backbone", default=d.backbone)
    parser.add_argument("--regressor", help="regressor preset (paper|light); default: the backbone's")
    parser.add_argument("--init-checkpoint", help="start from these weights (e.g. stage dhe's best.pt)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/last.pt at its exact step")
    for name, kind, help_text in [
        ("epochs", count(1, 1_000_000), ""), ("batch-size", count(1, 4096), "pairs per step (per process under DDP)"),
        ("lr", number(0.0, 1.0, above=True), "Adam learning rate (paper: 1e-5)"),
        ("clip-grad", number(0.0), "clip the gradient norm to this (0: off)"),
        ("margin", number(0.0, 10.0), "triplet margin (paper: 0.1)"),
        ("negatives", count(1, 100), "negatives per query (paper: 2)"),
        ("mining-pool", count(1), "random candidates per query for partial hard-negative mining"),
        ("cache-refresh", count(1), "queries between refreshes of the mining descriptor cache"),
        ("supervised-weight", number(0.0), "weight of the corner loss on labelled pairs (synthetic views)"),
        ("robust-px", number(0.0), "corner loss: distances beyond this many pixels count logarithmically "
                                   "(0: linearly)"),
        ("rei-weight", number(0.0), "weight of the label-free REI loss (0: off)"),
        ("warp-repeats", count(1, 100_000), "synthetic views: reuse N fixed sets (stage dhe then embeds each view "
                                            "once and trains the regressor on cached features: faster, less varied)"),
        ("difficulty", number(0.0, 1.0), "synthetic views: strongest change, 0..1 of the recipe's maxima "
                                         "(1: tilt 60 deg, rotation 30, zoom 0.5-2, overlap 50 %%, dusk)"),
        ("curriculum-epochs", count(0), "grow the views' difficulty over this many epochs (0: all at once)"),
        ("curriculum-start", number(0.0, 1.0), "difficulty at the first epoch of the curriculum"),
        ("unfreeze-from", count(0, 1000), "joint stage: first trainable backbone block (default: cct14 6, "
                                          "efficientnet 8)"),
        ("positive-dist-train", number(0.0, above=True), "metres (paper: 10)"),
        ("positive-dist-val", number(0.0, above=True), "metres (paper: 25)"),
        ("val-fraction", number(0.0, 0.9), "synthetic views: images held back for validation"),
        ("val-top-k", count(1, 1000), "candidates re-ranked in validation"),
        ("val-every", count(1), "validate every N epochs (and after the last)"),
        ("max-samples", count(1), "use at most N images"), ("seed", count(0), ""),
        ("workers", count(0, 256), "data loader processes"),
    ]:
        parser.add_argument(f"--{name}", type=kind, default=getattr(d, name.replace("-", "_")), help=help_text or None)
    parser.add_argument("--lr-schedule", choices=("none", "cosine"), default=d.lr_schedule)
    parser.add_argument("--device", default=d.device, help="cpu, cuda (mixed precision bf16 on GPU)")
    parser.add_argument("--threads", type=count(0, 256), default=0,
                        help="CPU threads per process (0: the CPUs available, at most 4)")
    parser.add_argument("--no-amp", action="store_true", help="full fp32 on GPU")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--dump-rank-weights", action="store_true",
                        help="debug DDP: every rank writes its final weights to OUT/rankN_weights.pt")


def run(args: argparse.Namespace) -> int:
    from .threads import configure_threads
    configure_threads(args.threads)
    keys = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
    cfg.amp = not args.no_amp
    cfg.tensorboard = not args.no_tensorboard
    cfg.extra = {"dump_rank_weights": args.dump_rank_weights}
    out = Path(args.out)
    if args.resume:
        saved = out / "config.json"
        if saved.is_file():  # the run's own settings win, except how many epochs to reach and where it is now
            stored = TrainConfig.from_dict(json.loads(saved.read_text()))
            stored.epochs, stored.device, stored.out = args.epochs, args.device, str(out)
            cfg = stored
    elif out.is_file() or out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else []
        raise ValueError(f"train --out {out} is not a new folder ({', '.join(names) or 'a file'}): nothing was "
                         "changed; choose a new folder, or --resume to continue the run in it")
    metrics = train(cfg, resume=args.resume)
    if metrics:
        log.info("final validation: %s", _fmt(metrics))
    return 0
