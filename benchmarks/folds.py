#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The folds loop-closure defaults are chosen and judged on: real runs (``benchmarks/sequences.py``)
played the ways a robot meets them. ``calibrate_defaults.py`` records each fold once and chooses
settings by leaving one run out; ``loop_replay.py --fold NAME`` plays the same fold through the node.

Runs (each a source: every fold that uses it is held out with it):

* ``gardens`` (GardensPoint crops, ~100 x 56 px) and ``nordland`` (64 x 32 px): thumbnails; they bind
  precision and far, not recall;
* ``kitti07`` (1226 x 370) and ``euroc`` (752 x 480, a camera resting on the floor: every place is the
  right one): camera resolution; their revisit folds' recall is the objective.

Fold kinds:

* (a) ``revisit``: a reference run against a query run of the same route in other conditions;
* (b) ``shifted`` / ``stereo``: the same route from a shifted viewpoint (a map of every 4th frame,
  queries the frames 2 later), and a stereo pair's other camera;
* (c) ``never_returns``: KITTI 07 as one drive through an empty map that grows with keyframes (the
  node's online mode, real 10 Hz stamps, ``min_time_gap_sec`` 5): a loop closure to a frame more than
  50 frames back is false (and there is no other kind);
* (d) ``off_map``: each run's queries against every other run's map: every loop closure is false;
* (e) ``one_drive``: a reference run and its query run played as one drive through an empty map
  (the node's online mode, ``loop_replay.py --online``): a second-traverse frame is right at the
  first-traverse keyframes of its place; anything else is false.

Each fold is recorded once (``record``: for every query frame the node's top 16 places in retrieval
order, their DHE scores and the two-view inliers of each with the frame) and cached as ``NAME.npz``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dhe_vpr_ros.image_conversion import read_image
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.recognizer import PlaceRecognizer
from dhe_vpr_ros.loop.sequence import SequenceSettings, SequenceVerifier
from dhe_vpr_ros.loop.transfer import FoldSpec
from dhe_vpr_ros.loop.two_view import TwoViewCheck, place_inliers
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.keypoints import describe
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.method.rerank import MIN_VERIFIED_INLIERS, _order, _verified_order
from dhe_vpr_ros.runtime.loading import load_any_model, load_model
from dhe_vpr_ros.runtime.threads import ThreadGovernor, configure_threads

TOP_K = 16  # the node's top_k: what it retrieves and re-ranks
RERANKERS = ("dhe", "magsac")  # recorded: each one's scores of the same candidates (RANSAC: 0.5 s a frame)
TOLERANCE, FAR = 2, 5  # frames: right within 2, far beyond 5
NEVER_RETURNS_FAR = 50  # frames back (about 50 m on KITTI): a loop closure there is false
KINDS = {"revisit": "a", "shifted": "b", "stereo": "b", "never_returns": "c", "off_map": "d", "one_drive": "e"}


@dataclass(frozen=True)
class Fold:
    """How a fold is played and judged. Prebuilt: ``reference`` frames make the map (the first
    ``map_limit``), ``queries`` are played against it (the first ``query_limit``). Online (``drive``):
    frames in order with ``stamps`` (seconds) through an empty map grown with keyframes. ``truth``:
    tolerance (frame i at place i), static (every place right), none (every loop closure false),
    never_returns, one_drive (``first``: frames of the first traverse; ``static``: every place right)."""

    name: str
    kind: str
    spec: FoldSpec
    truth: str
    reference: Path | None = None
    queries: Path | None = None
    map_limit: int | None = None
    query_limit: int | None = None
    drive: tuple[Path, ...] = ()
    stamps: tuple[float, ...] = ()
    first: int = 0
    gap_sec: float = 30.0
    interval_sec: float = 1.0
    static: bool = False
    still_map: bool = False  # the map's frames come from a camera that stood still (build-map --static-threshold 1)

    @property
    def online(self) -> bool:
        return bool(self.drive)


@dataclass(frozen=True)
class Source:
    name: str
    pair: str  # the folder pair (reference/ and queries/) its revisit, off-map and one-drive folds use
    camera: bool
    static: bool = False
    limit: int | None = None  # frames of each part used (Nordland: its first N)
    period: float = 0.5  # seconds between frames when played as one drive


SOURCES = (Source("gardens", "gardens", camera=False), Source("nordland", "nordland", camera=False, limit=1000),
           Source("kitti07", "kitti07_shifted", camera=True, period=1.0),
           Source("euroc", "euroc_stereo", camera=True, static=True))


def _images(folder: Path, limit: int | None) -> list[Path]:
    return [Path(f.source) for f in folder_frames(folder)][:limit]


def folds(seq: Path, off_map_queries: int = 300, nordland: int = 1000) -> list[Fold]:
    """Every fold of the runs under ``seq`` (``sequences.py --out``); runs not there are left out."""
    sources = [Source(s.name, s.pair, s.camera, s.static, nordland if s.name == "nordland" else s.limit, s.period)
               for s in SOURCES if (seq / s.pair).is_dir()]
    out = []
    for s in sources:
        kind = "stereo" if s.name == "euroc" else "shifted" if s.camera else "revisit"
        out.append(Fold(s.pair, kind, FoldSpec((s.name,), objective=s.camera), "static" if s.static else "tolerance",
                        seq / s.pair / "reference", seq / s.pair / "queries", s.limit, s.limit, static=s.static,
                        still_map=s.static))
    if (seq / "euroc_shifted").is_dir() and any(s.name == "euroc" for s in sources):
        out.append(Fold("euroc_shifted", "shifted", FoldSpec(("euroc",)), "static", seq / "euroc_shifted" / "reference",
                        seq / "euroc_shifted" / "queries", static=True, still_map=True))
    if (seq / "kitti07_drive").is_dir():
        drive = seq / "kitti07_drive"
        stamps = tuple(float(v) for v in (drive / "stamps.txt").read_text().split())
        out.append(Fold("kitti07_drive", "never_returns", FoldSpec(("kitti07",), objective=False, silent=True),
                        "never_returns", drive=tuple(_images(drive / "frames", None)), stamps=stamps, gap_sec=5.0))
    for q in sources:
        for m in sources:
            if q is not m:
                out.append(Fold(f"off_map:{q.name}_on_{m.name}", "off_map",
                                FoldSpec((q.name, m.name), objective=False, silent=True), "none",
                                seq / m.pair / "reference", seq / q.pair / "queries", m.limit,
                                min(off_map_queries, q.limit or off_map_queries), still_map=m.static))
    for s in sources:
        first = _images(seq / s.pair / "reference", s.limit)
        second = _images(seq / s.pair / "queries", s.limit)
        n = len(first) + len(second)
        out.append(Fold(f"drive:{s.name}", "one_drive", FoldSpec((s.name,), objective=s.camera), "one_drive",
                        drive=tuple(first + second), stamps=tuple(i * s.period for i in range(n)), first=len(first),
                        static=s.static))
    return out


# -- recording ---------------------------------------------------------------------------------
class Recorder:
    """The model once, each prebuilt map once; records folds as the node would rank their frames."""

    def __init__(self, onnx: str | None = None, precision: str = "float"):
        configure_threads()  # as every command: threads from the free cores
        self.governor = ThreadGovernor()
        torch.set_grad_enabled(False)
        if onnx:  # the export's float or int8 backbone in onnxruntime
            self.model, _ = load_any_model(None, None, "cpu", None, "onnxruntime", onnx, None, precision)
        else:
            self.model, _ = load_model(None)
        self.check = TwoViewCheck()
        self._maps: dict[tuple, Localizer] = {}

    def localizer(self) -> Localizer:
        return Localizer(self.model, MapDatabase(model_identity(self.model)), "cpu", "dhe", top_k=TOP_K)

    def prebuilt(self, folder: Path, limit: int | None) -> Localizer:
        key = (folder, limit)
        if key not in self._maps:
            loc = self.localizer()
            refs = folder_frames(folder)[:limit]
            for start in tqdm(range(0, len(refs), 16), desc=f"map {folder.parent.name}", unit="batch"):
                batch = [f.load() for f in refs[start:start + 16]]
                loc.add_images(batch, [Place(-1, f.source) for f in refs[start:start + 16]])
            self._maps[key] = loc
        return self._maps[key]

    def _row(self, loc: Localizer, candidates, image, local, global_) -> tuple:
        """ids, similarities (retrieval order, padded to TOP_K), each re-ranker's scores of them and each
        candidate's two-view inliers (-1: the place has no keypoints)."""
        ranked = sorted(candidates, key=lambda c: -c.global_similarity)[:TOP_K]
        pad = TOP_K - len(ranked)
        ids = np.array([c.place_id for c in ranked] + [-1] * pad, np.int64)
        sims = np.array([c.global_similarity for c in ranked] + [math.nan] * pad)
        scores = {"dhe": [c.score for c in ranked]}
        retrieved = (sims[:len(ranked)].astype(np.float32), ids[:len(ranked)])
        for name in RERANKERS[1:]:
            found = {c.place_id: c.score for c in loc.rank(local, global_, (image.shape[1], image.shape[0]), name,
                                                           TOP_K, retrieved=retrieved).candidates} if ranked else {}
            scores[name] = [found.get(c.place_id, math.nan) for c in ranked]
        keypoints = describe(image)
        inliers = [place_inliers(self.check, loc.database, c.place_id, keypoints) for c in ranked]
        return (ids, sims, {k: v + [math.nan] * pad for k, v in scores.items()},
                [-1 if n is None else n for n in inliers] + [-1] * pad)

    def record(self, fold: Fold) -> dict:
        rows, query_frames, extra = [], [], {}
        if fold.online:
            loc = self.localizer()
            policy = LoopPolicy(min_time_gap_sec=fold.gap_sec, add_keyframes=True,
                                keyframe_min_interval_sec=fold.interval_sec, sequence_guided=0)
            recognizer = PlaceRecognizer(loc, policy)
            keyframes = []
            for i, (path, stamp) in enumerate(tqdm(list(zip(fold.drive, fold.stamps)), desc=fold.name, unit="frame")):
                self.governor.adjust()
                image = read_image(path)
                local, global_ = loc.embed([image])
                out = recognizer.recognize(image, int(round(stamp * 1e9)), str(path), embedded=(local, global_))
                rows.append(self._row(loc, out.result.candidates, image, local[0], global_[0]))
                query_frames.append(i)
                if out.keyframe_id is not None:
                    keyframes.append(i)
            extra["place_frames"] = np.array(keyframes, dtype=np.int64)
        else:
            loc = self.prebuilt(fold.reference, fold.map_limit)
            for i, frame in enumerate(tqdm(folder_frames(fold.queries)[:fold.query_limit], desc=fold.name,
                                           unit="frame")):
                self.governor.adjust()
                image = frame.load()
                local, global_ = loc.embed([image])
                result = loc.rank(local[0], global_[0], (image.shape[1], image.shape[0]), "dhe", TOP_K)
                rows.append(self._row(loc, result.candidates, image, local[0], global_[0]))
                query_frames.append(i)
            extra["place_frames"] = np.arange(len(loc.database), dtype=np.int64)
        ids, sims, scores, inliers = zip(*rows)
        by_reranker = {f"scores_{name}": np.array([s[name] for s in scores], np.float64) for name in RERANKERS}
        return {"ids": np.array(ids, np.int64), "sims": np.array(sims, np.float64), **by_reranker,
                "inliers": np.array(inliers, np.int64), "query_frames": np.array(query_frames, np.int64), **extra}


def cached(recorder_factory, fold: Fold, cache: Path) -> dict:
    """The fold's recording from ``cache/NAME.npz``, else recorded now and cached."""
    path = cache / (fold.name.replace(":", "__") + ".npz")
    if path.is_file():
        return dict(np.load(path))
    data = recorder_factory().record(fold)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return data


# -- judging ------------------------------------------------------------------------------------
def truth(fold: Fold, query_frame: np.ndarray, place_frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, far) of loop closures from query frames to places (both as frame indices of the fold)."""
    q, p = np.asarray(query_frame), np.asarray(place_frame)
    if fold.truth in ("static",) or fold.truth == "one_drive" and fold.static:
        return np.ones(q.shape, bool), np.zeros(q.shape, bool)
    if fold.truth == "none":
        return np.zeros(q.shape, bool), np.ones(q.shape, bool)
    if fold.truth == "never_returns":
        return np.zeros(q.shape, bool), q - p > NEVER_RETURNS_FAR
    if fold.truth == "one_drive":
        revisit = (q >= fold.first) & (p < fold.first)
        error = np.where(revisit, np.abs(q - fold.first - p), np.abs(q - p))
        return revisit & (error <= TOLERANCE), error > FAR
    error = np.abs(q - p)
    return error <= TOLERANCE, error > FAR


def has_true_place(fold: Fold, data: dict) -> np.ndarray:
    """(Q,) whether a query frame has a true place to be found (recall's denominator)."""
    q = data["query_frames"]
    if fold.truth in ("none", "never_returns"):
        return np.zeros(q.shape, bool)
    if fold.truth == "one_drive":
        return q >= fold.first
    return np.ones(q.shape, bool)


def node_frames(data: dict, reranker: str = "dhe") -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each query's candidates as the node orders them under ``reranker``: ids, scores, inliers."""
    out = []
    for ids, scores, inliers in zip(data["ids"], data[f"scores_{reranker}"], data["inliers"]):
        keep = ids >= 0
        ids, scores, inliers = ids[keep], scores[keep], inliers[keep]
        values = torch.from_numpy(np.nan_to_num(scores, nan=-1.0))
        order = (_verified_order(values, MIN_VERIFIED_INLIERS) if reranker == "dhe" else _order(values)).numpy()
        out.append((ids[order], scores[order], inliers[order]))
    return out


@dataclass
class Verdicts:
    """One sequence setting on one fold: each frame's verified place (or -1), its sequence score (-inf:
    no answer) and that place's two-view inliers (-1: none recorded)."""

    places: np.ndarray
    scores: np.ndarray
    inliers: np.ndarray
    extra: dict = field(default_factory=dict)


def sequence_verdicts(frames, settings: SequenceSettings) -> Verdicts:
    verifier = SequenceVerifier(settings)
    places, scores, inliers = [], [], []
    for ids, values, pair_inliers in frames:
        verdict = verifier.observe(ids, values)
        passed = verdict.place_id >= 0 and verdict.passes(settings, -math.inf)
        places.append(verdict.place_id)
        scores.append(verdict.score if passed else -math.inf)
        inliers.append(int(pair_inliers[verdict.candidate]) if passed else -1)
    return Verdicts(np.array(places, np.int64), np.array(scores), np.array(inliers, np.int64))


def verdict_table(fold: Fold, data: dict, verdicts: Verdicts, min_inliers: int) -> np.ndarray:
    """(Q, 4) [score (-inf: refused), right, far, has a true place]: the two-view check with ``min_inliers``
    applied to the verified places (a place without keypoints is not checked, as in the node)."""
    scores = verdicts.scores.copy()
    if min_inliers > 0:
        scores[(verdicts.inliers >= 0) & (verdicts.inliers < min_inliers)] = -math.inf
    place_frames = data["place_frames"]
    safe = np.clip(verdicts.places, 0, max(len(place_frames) - 1, 0))
    frames = place_frames[safe] if len(place_frames) else np.zeros_like(safe)
    right, far = truth(fold, data["query_frames"], frames)
    answered = verdicts.places >= 0
    return np.stack([scores, right & answered, far & answered, has_true_place(fold, data)], axis=1).astype(np.float64)


def describe_fold(fold: Fold) -> str:
    return f"({KINDS[fold.kind]}) {fold.kind}"


def fold_sources(folds_: list[Fold]) -> dict:
    return {f.name: {"kind": f.kind, "sources": list(f.spec.sources)} for f in folds_}


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=Path, required=True, help="the folder sequences.py wrote")
    args = parser.parse_args()
    for fold in folds(args.seq):
        frames = len(fold.drive) if fold.online else "prebuilt"
        print(f"{fold.name:<34}{describe_fold(fold):<20}{','.join(fold.spec.sources):<20}"
              f"{'objective' if fold.spec.objective else 'silent' if fold.spec.silent else 'precision'}  {frames}")
    print(json.dumps({"folds": len(folds(args.seq))}))
