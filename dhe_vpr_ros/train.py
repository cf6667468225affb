"""``train``: the paper's two stages, resumable, single process or DDP (torchrun).

* stage ``dhe``: backbone frozen, the homography regressor learns from the REI loss.
* stage ``joint``: the backbone's last blocks and the regressor together; triplet loss with
  partial hard-negative mining on global descriptors + REI loss through the backbone.

Output directory: ``last.pt`` (model + full training state, written every epoch and on
Ctrl-C), ``best.pt`` (best validation Recall@1, ties broken by corner error), ``config.json``
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .atomic import atomic_write
from .build_map import add_frames
from .datasets import bag_frames, folder_frames, geo_split
from .geometry import corner_error
from .localizer import Localizer, model_identity, normalise
from .losses import rei_loss, triplet_loss
from .mapdb import MapDatabase
from .matching import grid_keypoints, mutual_nearest_neighbours, robust_homographies
from .models import BACKBONES, VPRModel, build_model, load_checkpoint, save_checkpoint
from .runtime import resolve_device
from .training_data import GeoPairs, WarpedPairs, load_square, negatives_pool, sample_rng

log = logging.getLogger(__name__)

UNFREEZE_FROM = {"cct14": 6, "efficientnet_lite0": 8}  # paper: CCT blocks 0..5 stay frozen


@dataclass
class TrainConfig:
    out: str
    stage: str = "dhe"
    dataset: str | None = None
    images: str | None = None
    bag: str | None = None
    topic: str | None = None
    backbone: str = "efficientnet_lite0"
    regressor: str | None = None
    init_checkpoint: str | None = None
    epochs: int = 5
    batch_size: int = 4
    lr: float = 1e-5
    lr_schedule: str = "none"
    margin: float = 0.1
    negatives: int = 2
    mining_pool: int = 1000
    cache_refresh: int = 1000
    rei_weight: float = 1.0
    warp_repeats: int | None = None
    unfreeze_from: int | None = None
    max_shift: float = 0.2
    positive_dist_train: float = 10.0
    positive_dist_val: float = 25.0
    val_fraction: float = 0.1
    val_top_k: int = 10
    max_samples: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    workers: int = 0
    tensorboard: bool = True
    extra: dict = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------
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
        frames = folder_frames(cfg.images)
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
    train = WarpedPairs(frames[:len(frames) - n_val], size, cfg.seed, cfg.max_shift)
    val = {"kind": "warped", "pairs": WarpedPairs(frames[len(frames) - n_val:], size, cfg.seed + 1, cfg.max_shift)}
    return train, val


# -- the differentiable step (what DDP wraps) ---------------------------------------------
class TrainStep(nn.Module):
    def __init__(self, model: VPRModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, query, positive, negatives=None, features=None):
        """``features``: precomputed (query, positive) local grids (frozen backbone only)."""
        model, cfg = self.model, self.cfg
        if features is not None:
            q_local, p_local = features
        else:
            with torch.set_grad_enabled(cfg.stage != "dhe" and torch.is_grad_enabled()):
                fq = model.embed(normalise(query, model))
                fp = model.embed(normalise(positive, model))
            q_local, p_local = fq.local, fp.local
        h = model.homographies(q_local, p_local)
        rei = rei_loss(h, q_local.float(), p_local.float(), model.backbone.stride)
        loss = cfg.rei_weight * rei.loss
        trip = torch.zeros((), device=h.device)
        if negatives is not None:
            b, m = negatives.shape[:2]
            fn = model.embed(normalise(negatives.flatten(0, 1), model)).global_.view(b, m, -1)
            trip = triplet_loss(fq.global_.float(), fp.global_.float(), fn.float(), cfg.margin)
            loss = loss + trip
        return loss, rei, trip, h


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
    """Recall@1 with and without DHE; on warped pairs also the corner error of DHE and of
    RANSAC on the same matches against the true warp, and the REI loss."""
    model.eval()
    db = MapDatabase(model_identity(model))
    loc = Localizer(model, db, device, reranker="dhe", top_k=cfg.val_top_k)
    metrics: dict = {}
    if val["kind"] == "geo":
        from .evaluate import evaluate
        add_frames(loc, val["database"], 16, len(val["database"]), desc="val database")
        report = evaluate(loc, val["queries"], ("none", "dhe"), cfg.val_top_k, cfg.positive_dist_val, (1, 5))
        metrics = {f"recall@{n}/{name}": r for name, rec in report["recall"].items() for n, r in rec.items()}
    else:
        pairs: WarpedPairs = val["pairs"]
        pairs.epoch = 0
        add_frames(loc, [_frame_of(pairs, i) for i in range(len(pairs))], 16, desc="val map")
        errs_dhe, errs_ransac, errs_id, rei, hits = [], [], [], [], {"none": 0, "dhe": 0}
        stride = model.backbone.stride
        for i in range(len(pairs)):
            s = pairs[i]
            q_local, q_global = loc.embed([s["query"].numpy()])  # once, for both re-rankers and the pair
            for name in hits:
                ranked = loc.rank(q_local[0], q_global[0], (pairs.size, pairs.size), name)
                hits[name] += int(ranked.best.place_id == i)
            p_local = model.embed(normalise(s["positive"][None].to(device), model)).local
            h = model.homographies(q_local, p_local)
            truth = s["h_true"][None].to(device)
            size = float(pairs.size)
            errs_dhe.append(corner_error(h.float(), truth, size, size).item())
            errs_id.append(corner_error(torch.eye(3, device=device)[None], truth, size, size).item())
            kps = grid_keypoints(*q_local.shape[-2:], stride, device=device)
            hr, _ = robust_homographies(kps, kps, mutual_nearest_neighbours(q_local[0], p_local),
                                        1.5 * stride, "ransac")
            errs_ransac.append(corner_error(torch.from_numpy(hr).float().to(device), truth, size, size).item())
            rei.append(rei_loss(h, q_local, p_local, stride).loss.item())
        n = max(len(pairs), 1)
        metrics = {"recall@1/none": 100.0 * hits["none"] / n, "recall@1/dhe": 100.0 * hits["dhe"] / n,
                   "corner_error/dhe": float(np.mean(errs_dhe)), "corner_error/ransac": float(np.mean(errs_ransac)),
                   "corner_error/identity": float(np.mean(errs_id)), "rei_loss": float(np.mean(rei))}
    _train_mode(model)
    return metrics


def _train_mode(model: VPRModel) -> None:
    """Regressor in training mode; the backbone's normalisation statistics stay frozen (small
    batches of one place would corrupt BatchNorm's running averages)."""
    model.train()
    model.backbone.eval()


def _frame_of(pairs: WarpedPairs, index: int):
    from .datasets import Frame
    return Frame(f"val-{index}", lambda i=index: pairs.image(i))


def best_key(metrics: dict) -> tuple:
    return (metrics.get("recall@1/dhe", 0.0), -metrics.get("corner_error/dhe", 0.0))


# -- the loop -----------------------------------------------------------------------------
class Stop(Exception):
    pass


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


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run (or continue) a training; returns the last validation metrics."""
    if cfg.stage not in ("dhe", "joint"):
        raise ValueError(f"unknown stage {cfg.stage!r}; use dhe or joint")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(cfg.device)
    if distributed and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    out = Path(cfg.out)
    state_path = out / "last.pt"
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"--resume: no {state_path} to continue from")

    torch.manual_seed(cfg.seed)
    # data first: bad data is reported before a model is built
    backbone_size = BACKBONES[cfg.backbone].input_size if cfg.backbone in BACKBONES else 384
    train_set, val = make_datasets(cfg, backbone_size)
    if resume:
        model, payload = load_checkpoint(state_path, device=device)
        state = payload["training"]
    else:
        if cfg.init_checkpoint:
            model, _ = load_checkpoint(cfg.init_checkpoint, expect_backbone=cfg.backbone, device=device)
        else:
            model = build_model(cfg.backbone, cfg.regressor, pretrained=True).to(device)
        state = None
    _train_mode(model)
    params = _set_trainable(model, cfg)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / world) / cfg.batch_size)
    scheduler = _schedule(optimizer, cfg, steps_per_epoch * cfg.epochs)
    miner = None
    if cfg.stage == "joint":
        miner = NegativeMiner(*negatives_pool(train_set), cfg, backbone_size)
    start_epoch, start_step, global_step, best, history = 0, 0, 0, None, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        best, history = (tuple(state["best"]) if state["best"] is not None else None), list(state["history"])
        if miner is not None and state.get("mining_cache") is not None:
            miner.cache, miner.queries_since_refresh = state["mining_cache"], state["mining_seen"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming %s at epoch %d step %d", state_path, start_epoch + 1, start_step)

    step_module = TrainStep(model, cfg)
    runner = step_module
    if distributed:
        runner = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
    writer = _tensorboard(out, cfg) if rank == 0 else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.json", mode="w") as handle:
            json.dump(asdict(cfg), handle, indent=2)
    amp = cfg.amp and device.type == "cuda"
    # stage dhe with a frozen backbone and a fixed set of warps: embed each pair once
    feature_cache = {} if cfg.stage == "dhe" and cfg.warp_repeats and isinstance(train_set, WarpedPairs) else None

    def save_state(epoch: int, step: int) -> None:
        if rank != 0:
            return
        training = {"epoch": epoch, "step": step, "global_step": global_step,
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "best": list(best) if best is not None else None, "history": history,
                    "torch_rng": torch.get_rng_state(),
                    "mining_cache": miner.cache if miner is not None else None,
                    "mining_seen": miner.queries_since_refresh if miner is not None else 0}
        save_checkpoint(state_path, model, meta=_meta(cfg, epoch, step), extra={"training": training})

    interrupted = {"flag": False}

    def on_signal(signum, frame):
        interrupted["flag"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if state is None and rank == 0:  # the starting point of the curve
        metrics = validate(model, val, cfg, device)
        history.append({"epoch": 0, "train": {}, "val": metrics})
        log.info("before training: val %s", _fmt(metrics))
    metrics: dict = history[-1]["val"] if history else {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_set.epoch = epoch % cfg.warp_repeats if cfg.warp_repeats else epoch
            sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(epoch)
            indices = list(sampler)
            batches = [indices[i:i + cfg.batch_size] for i in range(0, len(indices), cfg.batch_size)]
            first = start_step if epoch == start_epoch else 0
            loader = DataLoader(train_set, batch_sampler=batches[first:], num_workers=cfg.workers)
            sums = {"loss": 0.0, "rei": 0.0, "triplet": 0.0, "corner_error": 0.0, "n": 0, "n_truth": 0}
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", initial=first, total=len(batches),
                       disable=None if rank == 0 else True)
            for step, batch in enumerate(bar, start=first):
                q, p = batch["query"].to(device), batch["positive"].to(device)
                negs = None
                if miner is not None:
                    with torch.no_grad():
                        q_global = model.embed(normalise(q, model)).global_
                    negs = miner.negatives(model, device, q_global, batch["index"], epoch)
                features = None
                if feature_cache is not None:
                    features = _cached_features(feature_cache, model, train_set.epoch, batch["index"], q, p)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss, rei, trip, h = runner(q, p, negs, features)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                global_step += 1
                truth = batch["h_true"].to(device)
                known = ~torch.isnan(truth).flatten(1).any(1)
                ce = corner_error(h.detach().float()[known], truth[known], backbone_size, backbone_size) \
                    if known.any() else torch.zeros(0)
                sums["loss"] += loss.item()
                sums["rei"] += rei.loss.item()
                sums["triplet"] += float(trip)
                sums["corner_error"] += ce.sum().item()
                sums["n"] += 1
                sums["n_truth"] += int(known.sum())
                bar.set_postfix(loss=f"{loss.item():.3f}", rei=f"{rei.loss.item():.2f}")
                if writer is not None:
                    writer.add_scalar("train/loss", loss.item(), global_step)
                    writer.add_scalar("train/rei_loss", rei.loss.item(), global_step)
                    if miner is not None:
                        writer.add_scalar("train/triplet_loss", float(trip), global_step)
                    if known.any():
                        writer.add_scalar("train/corner_error_px", ce.mean().item(), global_step)
                if interrupted["flag"]:
                    save_state(epoch, step + 1)
                    raise Stop
            epoch_stats = {"loss": sums["loss"] / max(sums["n"], 1), "rei_loss": sums["rei"] / max(sums["n"], 1),
                           "triplet_loss": sums["triplet"] / max(sums["n"], 1)}
            if sums["n_truth"]:
                epoch_stats["corner_error_px"] = sums["corner_error"] / sums["n_truth"]
            if rank == 0:
                metrics = validate(model, val, cfg, device)
                history.append({"epoch": epoch + 1, "train": epoch_stats, "val": metrics})
                log.info("epoch %d: train %s | val %s", epoch + 1, _fmt(epoch_stats), _fmt(metrics))
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(f"val/{k}", v, epoch + 1)
                    writer.flush()
                key = best_key(metrics)
                if best is None or key > best:
                    best = key
                    save_checkpoint(out / "best.pt", model, meta={**_meta(cfg, epoch + 1, 0), "val": metrics})
                save_state(epoch + 1, 0)
                with atomic_write(out / "history.jsonl", mode="w") as handle:
                    handle.write("".join(json.dumps(h) + "\n" for h in history))
            if distributed:
                dist.barrier()
        if cfg.extra.get("dump_rank_weights"):
            out.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"rank{rank}_weights.pt")
    except Stop:
        log.info("interrupted: state saved to %s; continue with --resume", state_path)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if writer is not None:
            writer.close()
        if distributed:
            dist.destroy_process_group()
    return metrics


@torch.no_grad()
def _cached_features(cache: dict, model: VPRModel, warp_epoch: int, indices, q, p):
    keys = [(warp_epoch, int(i)) for i in indices]
    missing = [j for j, key in enumerate(keys) if key not in cache]
    if missing:
        fq = model.embed(normalise(q[missing], model)).local.half().cpu()
        fp = model.embed(normalise(p[missing], model)).local.half().cpu()
        for n, j in enumerate(missing):
            cache[keys[j]] = (fq[n], fp[n])
    return (torch.stack([cache[k][0] for k in keys]).to(q.device).float(),
            torch.stack([cache[k][1] for k in keys]).to(q.device).float())


def _fmt(values: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def _meta(cfg: TrainConfig, epoch: int, step: int) -> dict:
    return {"trained_by": "dhe_vpr_ros train", "stage": cfg.stage, "epoch": epoch, "step": step,
            "seed": cfg.seed, "data": cfg.dataset or cfg.images or f"{cfg.bag}:{cfg.topic}"}


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
    data.add_argument("--images", help="any image folder: self-supervised warped pairs")
    data.add_argument("--bag", help="rosbag2 (with --topic): self-supervised warped pairs")
    parser.add_argument("--topic")
    parser.add_argument("--backbone", default=d.backbone)
    parser.add_argument("--regressor", help="regressor preset (paper|light); default: the backbone's")
    parser.add_argument("--init-checkpoint", help="start from these weights (e.g. stage dhe's best.pt)")
    parser.add_argument("--resume", action="store_true", help="continue OUT/last.pt at its exact step")
    for name, kind, help_text in [
        ("epochs", int, ""), ("batch-size", int, "pairs per step (per process under DDP)"),
        ("lr", float, "Adam learning rate (paper: 1e-5)"), ("margin", float, "triplet margin (paper: 0.1)"),
        ("negatives", int, "negatives per query (paper: 2)"),
        ("mining-pool", int, "random candidates per query for partial hard-negative mining"),
        ("cache-refresh", int, "queries between refreshes of the mining descriptor cache"),
        ("rei-weight", float, "weight of the REI loss next to the triplet loss"),
        ("warp-repeats", int, "warped pairs: reuse N fixed sets of warps (stage dhe then embeds each pair "
                              "once and trains the regressor on cached features: much faster on a CPU)"),
        ("unfreeze-from", int, "joint stage: first trainable backbone block (default: cct14 6, efficientnet 8)"),
        ("max-shift", float, "warped pairs: corner shift as a fraction of the image"),
        ("positive-dist-train", float, "metres (paper: 10)"), ("positive-dist-val", float, "metres (paper: 25)"),
        ("val-fraction", float, "warped pairs: images held back for validation"),
        ("val-top-k", int, "candidates re-ranked in validation"), ("max-samples", int, "use at most N images"),
        ("seed", int, ""), ("workers", int, "data loader processes")]:
        parser.add_argument(f"--{name}", type=kind, default=getattr(d, name.replace("-", "_")), help=help_text or None)
    parser.add_argument("--lr-schedule", choices=("none", "cosine"), default=d.lr_schedule)
    parser.add_argument("--device", default=d.device, help="cpu, cuda (mixed precision bf16 on GPU)")
    parser.add_argument("--no-amp", action="store_true", help="full fp32 on GPU")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--dump-rank-weights", action="store_true",
                        help="debug DDP: every rank writes its final weights to OUT/rankN_weights.pt")


def run(args: argparse.Namespace) -> int:
    keys = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
    cfg.amp = not args.no_amp
    cfg.tensorboard = not args.no_tensorboard
    cfg.extra = {"dump_rank_weights": args.dump_rank_weights}
    if args.resume:
        saved = Path(args.out) / "config.json"
        if saved.is_file():  # the run's own settings win, except how many epochs to reach
            stored = json.loads(saved.read_text())
            cfg = TrainConfig(**{**stored, "epochs": args.epochs, "device": args.device})
    metrics = train(cfg, resume=args.resume)
    if metrics:
        log.info("final validation: %s", _fmt(metrics))
    return 0
