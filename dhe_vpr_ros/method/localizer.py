# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The query API: images in, ranked map places with homographies out.

``Localizer`` ties a model, a map and the re-rankers together. It is what ``query``,
``evaluate``, ``build-map`` and the ROS node call; none of them touch tensors themselves.

Frames: the network sees every image resized to ``input_size`` squared. Homographies are
returned between the ORIGINAL images (query pixels -> map image pixels), using the original
sizes stored with each place.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch

from .geometry import scale_homography
from .matching import Matches, grid_keypoints, reprojection_errors
from .models import VPRModel
from .rerank import DEFAULT_REFINE_ROUNDS, DEFAULT_REGRESSED, RERANKERS, Reranker, make_reranker
from .timing import Stages, clock

__all__ = ["Candidate", "Localizer", "PlaceStore", "QueryResult", "clock", "image_size", "normalise", "prepare"]

log = logging.getLogger(__name__)


class PlaceStore(Protocol):
    """What the Localizer needs of a map (``map.MapDatabase`` is one): the method defines it, the
    map implements it, so the method never imports the map. ``places[i]`` has ``place_id``,
    ``source``, ``timestamp_ns``, ``pose`` and ``image_size`` (width, height) of its original image;
    ``add`` may keep more of each place's RGB frame (``images``) than the method needs."""

    places: list
    preview: np.ndarray | None

    def search(self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None) -> tuple: ...

    def similarities(self, query: np.ndarray, ids) -> np.ndarray: ...

    def local_features(self, ids) -> np.ndarray: ...

    def usable_cells(self) -> np.ndarray | None: ...

    def add(self, global_descriptors: np.ndarray, local_grids: np.ndarray, places: list,
            images: list | None = None) -> list[int]: ...


def normalise(images: torch.Tensor, model: VPRModel) -> torch.Tensor:
    """(B, S, S, 3) uint8 tensor -> the backbone's normalised (B, 3, S, S) float input."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(model.backbone.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def prepare(images: Sequence[np.ndarray], model: VPRModel, device: torch.device) -> torch.Tensor:
    """RGB uint8 images of any size -> normalised (B, 3, S, S) network input."""
    size = model.backbone.input_size
    batch = np.stack([cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA)
                      for img in images])
    return normalise(torch.from_numpy(batch).to(device), model)


def image_size(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[1]), int(image.shape[0])


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Candidate:
    """One ranked map place. ``homography`` maps query pixels to map-image pixels."""

    place: object  # a map place record (see PlaceStore)
    score: float
    global_similarity: float
    homography: np.ndarray

    @property
    def place_id(self) -> int:
        return self.place.place_id

    def to_json(self) -> dict:
        """A JSON-ready dict; numbers that are not finite become None (null), never NaN."""
        return {"place_id": self.place.place_id, "source": self.place.source, "score": _finite(self.score),
                "global_similarity": _finite(self.global_similarity),
                "homography": [[_finite(v) for v in row] for row in self.homography],
                "timestamp_ns": self.place.timestamp_ns,
                "pose": self.place.pose.to_dict() if self.place.pose is not None else None}


@dataclass
class QueryResult:
    """Candidates best first; timings in ms (``stages_ms``: the re-ranking's parts: ``read`` the
    candidates' grids read and decoded, then the re-ranker's own, e.g. ``mutual_nn``, ``regressor``,
    ``refine``, ``inliers``); for the best candidate, its inlier matches as (N, 2, 2) [[query x, y],
    [map x, y]] in original pixels (empty for re-ranker 'none'); ``skipped``: retrieved places left
    out because their grid or result was not finite."""

    candidates: list[Candidate]
    timings_ms: dict = field(default_factory=dict)
    inliers: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 2), np.float32))
    skipped: int = 0
    stages_ms: dict = field(default_factory=dict)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


class Localizer:
    """Embed, retrieve top-K by global similarity, re-rank, and report in original pixels."""

    def __init__(self, model: VPRModel, database: PlaceStore, device: torch.device | str = "cpu",
                 reranker: str = "dhe", top_k: int = 32, refine_rounds: int = DEFAULT_REFINE_ROUNDS,
                 regressor_candidates: int = DEFAULT_REGRESSED):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.database = database
        self._rerankers: dict[str, Reranker] = {}
        self._usable: tuple | None = None  # (numpy mask, the same on the device)
        self._size_warned = False
        self.configure(reranker, top_k, refine_rounds, regressor_candidates)

    def configure(self, reranker: str | None = None, top_k: int | None = None,
                  refine_rounds: int | None = None, regressor_candidates: int | None = None) -> None:
        """Change how queries are ranked (live: the node's parameters); ValueError on a bad value."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        if refine_rounds is not None and refine_rounds < 0:
            raise ValueError(f"refine_rounds must be 0 or more, not {refine_rounds}")
        if regressor_candidates is not None and regressor_candidates < 0:
            raise ValueError(f"regressor_candidates must be 0 (all) or more, not {regressor_candidates}")
        if reranker is not None and reranker not in RERANKERS:
            raise ValueError(f"unknown re-ranker {reranker!r}; choose from {', '.join(RERANKERS)}")
        if top_k is not None:
            self.top_k = top_k
        for name, value in (("refine_rounds", refine_rounds), ("regressor_candidates", regressor_candidates)):
            if value is not None and value != getattr(self, name, None):
                setattr(self, name, value)
                self._rerankers.pop("dhe", None)
        if reranker is not None:
            self.default_reranker = reranker

    def reranker(self, name: str) -> Reranker:
        if name not in self._rerankers:  # make_reranker refuses an unknown name
            options = {"refine_rounds": self.refine_rounds, "regressed": self.regressor_candidates} \
                if name == "dhe" else {}
            self._rerankers[name] = make_reranker(name, self.model, stride=self.model.backbone.stride, **options)
        return self._rerankers[name]

    # -- embedding -------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, np.ndarray]:
        """RGB images -> (local grids (B, C, H, W) on the device, global descriptors (B, D))."""
        features = self.model.embed(prepare(images, self.model, self.device))
        return features.local, features.global_.float().cpu().numpy()

    def add_images(self, images: Sequence[np.ndarray], places: Sequence) -> list[int]:
        """Embed images and append them as places (their original sizes are recorded)."""
        local, global_ = self.embed(images)
        for place, img in zip(places, images):
            place.image_size = image_size(img)
        if self.database.preview is None and len(images):  # what static_mask.png is drawn over: the
            self.database.preview = np.ascontiguousarray(max(images, key=lambda im: float(np.std(im))))  # clearest
        return self.database.add(global_, local.half().cpu().numpy(), list(places), images=list(images))

    # -- querying --------------------------------------------------------------------------
    def query(self, image: np.ndarray, reranker: str | None = None, top_k: int | None = None,
              exclude_ids: np.ndarray | None = None) -> QueryResult:
        """One RGB image -> ranked candidates (see ``rank``)."""
        start = clock(self.device)
        local, global_ = self.embed([image])
        embed_ms = (clock(self.device) - start) * 1e3
        result = self.rank(local[0], global_[0], image_size(image), reranker, top_k, exclude_ids)
        result.timings_ms = {"embed": embed_ms, **result.timings_ms}
        return result

    def retrieve(self, global_descriptor: np.ndarray, k: int, exclude_ids: np.ndarray | None = None,
                 include_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the top ``k`` places by global similarity, best first; places in
        ``include_ids`` (e.g. where a sequence hypothesis says the robot is) are added when retrieval
        missed them and they are neither excluded nor unknown, in order of similarity."""
        sims, ids = self.database.search(global_descriptor[None], k, exclude_ids=exclude_ids)
        keep = ids[0] >= 0  # FAISS pads with -1 when fewer than k places are eligible
        sims, ids = sims[0][keep], ids[0][keep]
        if include_ids is not None and len(include_ids):
            extra = np.setdiff1d(np.asarray(include_ids, dtype=np.int64), ids)
            extra = extra[(extra >= 0) & (extra < len(self.database.places))]
            if exclude_ids is not None and len(exclude_ids):
                extra = np.setdiff1d(extra, np.asarray(exclude_ids, dtype=np.int64))
            if extra.size:
                sims = np.concatenate([sims, self.database.similarities(global_descriptor, extra)])
                ids = np.concatenate([ids, extra])
                order = np.argsort(-sims, kind="stable")
                sims, ids = sims[order], ids[order]
        return sims, ids

    @torch.no_grad()
    def rank(self, query_local: torch.Tensor, query_global: np.ndarray, query_size: tuple[int, int],
             reranker: str | None = None, top_k: int | None = None,
             exclude_ids: np.ndarray | None = None, retrieved: tuple | None = None,
             include_ids=None) -> QueryResult:
        """Embedded query -> top-K by global similarity -> re-ranked candidates.

        Only the K candidates' grids are read from the map. ``retrieved`` passes a precomputed
        (similarities, ids) so that several re-rankers can share one retrieval; ``include_ids``
        adds places retrieval missed (``retrieve``) to the candidates.
        """
        name = reranker or self.default_reranker
        k = top_k or self.top_k
        start = clock(self.device)
        if retrieved is None:
            retrieved = self.retrieve(query_global, k, exclude_ids, include_ids)
            k = max(k, len(retrieved[1]))  # the included places are re-ranked too
        sims, ids = retrieved
        sims, ids = sims[:k], ids[:k]
        retrieve_ms = (clock(self.device) - start) * 1e3
        if len(ids) == 0:
            return QueryResult([], {"retrieve": retrieve_ms, "rerank": 0.0})
        start = clock(self.device)
        stages = Stages(self.device)
        with stages("read"):
            grids = self.database.local_features(ids)
            finite = np.isfinite(grids.reshape(len(ids), -1)).all(axis=1)
        if not finite.all():  # a corrupt map row: never let it match
            log.warning("map places %s have non-finite local features; skipped", ids[~finite].tolist())
            grids, sims, ids = grids[finite], sims[finite], ids[finite]
        if len(ids) == 0:
            return QueryResult([], {"retrieve": retrieve_ms, "rerank": 0.0}, skipped=int((~finite).sum()))
        query_local = query_local.float()
        rer = self.reranker(name)
        with stages("read"):
            candidates_local = torch.from_numpy(grids).to(self.device).float()
        result = rer(query_local, candidates_local, torch.from_numpy(sims).to(self.device),
                     self._usable_cells(query_size, ids), stages)
        scores = result.scores.float().cpu()
        homographies = self._to_original_pixels(result.homographies.double().cpu(), ids, query_size)
        usable = [i for i in result.order.cpu().tolist()
                  if math.isfinite(float(scores[i])) and np.isfinite(homographies[i]).all()]
        inliers = self._best_inliers(result, rer, usable[0], ids, query_size, query_local) if usable else \
            np.zeros((0, 2, 2), np.float32)
        rerank_ms = (clock(self.device) - start) * 1e3
        places = self.database.places
        candidates = [Candidate(places[int(ids[i])], float(scores[i]), float(sims[i]), homographies[i])
                      for i in usable]
        skipped = int((~finite).sum()) + len(ids) - len(usable)
        return QueryResult(candidates, {"retrieve": retrieve_ms, "rerank": rerank_ms}, inliers, skipped, stages.ms)

    def _usable_cells(self, query_size: tuple[int, int], ids) -> torch.Tensor | None:
        """The map's mask (static and user cells out) as a tensor, or None when every cell may vote.
        A camera whose frames have another shape than the map's is told once: the mask was made on those."""
        usable = self.database.usable_cells()
        if usable is None:
            return None
        map_size = self.database.places[int(ids[0])].image_size
        if map_size is not None and not self._size_warned and \
                abs((query_size[0] / query_size[1]) / (map_size[0] / map_size[1]) - 1) > 0.02:
            self._size_warned = True  # the mask lives in the resized frame: only another shape moves it
            log.warning("the camera's images are %dx%d but the map's were %dx%d: its static-cell mask was "
                        "learned on frames of another shape and may not fit this camera", *query_size, *map_size)
        if self._usable is None or not np.array_equal(self._usable[0], usable):
            self._usable = (usable, torch.from_numpy(usable).to(self.device))
        return self._usable[1]

    def _frame_scales(self, ids, query_size):
        frame = float(self.model.backbone.input_size)
        q_scale = (query_size[0] / frame, query_size[1] / frame)
        places = self.database.places
        m_scales = [(s[0] / frame, s[1] / frame) if (s := places[int(i)].image_size) else (1.0, 1.0)
                    for i in ids]
        return q_scale, m_scales

    def _to_original_pixels(self, homographies: torch.Tensor, ids, query_size) -> np.ndarray:
        q_scale, m_scales = self._frame_scales(ids, query_size)
        return np.stack([scale_homography(h, q_scale, m).numpy() for h, m in zip(homographies, m_scales)])

    def _best_inliers(self, result, rer, best: int, ids, query_size, query_local) -> np.ndarray:
        if result.matches is None:
            return np.zeros((0, 2, 2), np.float32)
        h, w = query_local.shape[-2:]
        kps = grid_keypoints(h, w, self.model.backbone.stride, device=self.device)
        one = Matches(result.matches.partner[best:best + 1], result.matches.valid[best:best + 1])
        errors = reprojection_errors(result.homographies[best:best + 1].float(), kps, kps, one)[0]
        keep = torch.nonzero(errors < rer.threshold_px).flatten()
        pairs = torch.stack([kps[keep], kps[one.partner[0, keep]]], dim=1).cpu().numpy()
        q_scale, m_scales = self._frame_scales(ids[best:best + 1], query_size)
        pairs[:, 0] *= np.asarray(q_scale, np.float32)
        pairs[:, 1] *= np.asarray(m_scales[0], np.float32)
        return pairs
