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

import io
import logging
import math
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..atomic import atomic_write
from ..method.localizer import normalise
from ..method.models import BACKBONES, VPRModel, build_model, load_checkpoint, save_checkpoint
from ..runtime.distributed import setup_distributed
from .config import UNFREEZE_FROM, TrainConfig
from .data import make_datasets
from .mining import NegativeMiner, train_mode
from .pairs import WarpedPairs, negatives_pool
from .run_log import RunState, Stop, fmt, meta, tensorboard_writer, write_config, write_history
from .step import FeatureCache, StepOutput, TrainStep
from .validation import best_key, validate

__all__ = ["Trainer", "train"]

log = logging.getLogger(__name__)


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


class Trainer:
    """One training run: the model, its optimiser and data, one epoch at a time."""

    def __init__(self, cfg: TrainConfig, resume: bool):
        self.cfg = cfg
        self.dist = setup_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.state_path = self.out / "last.pt"
        if resume and not self.state_path.is_file():
            raise FileNotFoundError(f"--resume: no {self.state_path} to continue from")
        torch.manual_seed(cfg.seed)
        # data first: bad data is reported before a model is built
        self.size = BACKBONES[cfg.backbone].input_size if cfg.backbone in BACKBONES else 384
        self.train_set, self.val = make_datasets(cfg, self.size)
        self.model, saved = build_or_resume(cfg, self.dist.device, resume)
        train_mode(self.model)
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
        self.writer = tensorboard_writer(self.out, cfg) if self.dist.rank == 0 else None

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
        save_checkpoint(self.state_path, self.model, meta=meta(self.cfg, s.epoch, s.step),
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
        log.info("epoch %d: train %s | val %s", epoch, fmt(train_stats or {}), fmt(metrics))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"val/{k}", v, epoch)
            self.writer.flush()
        key = best_key(metrics)
        if due and epoch > 0 and (state.best is None or key > state.best):
            state.best = key
            save_checkpoint(self.out / "best.pt", self.model, meta={**meta(self.cfg, epoch, 0), "val": metrics})
        state.epoch, state.step = epoch, 0
        self.save_state()
        write_history(self.out, state.history)
        return metrics

    def run(self) -> dict:
        if self.dist.rank == 0:
            write_config(self.out, self.cfg)
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
            weights = io.BytesIO()
            torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, weights)
            with atomic_write(self.out / f"rank{self.dist.rank}_weights.pt") as handle:
                handle.write(weights.getbuffer())
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
