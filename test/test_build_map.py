# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""build-map / query / evaluate end to end: real backbone (ImageNet EfficientNet-Lite0), real
FAISS maps on disk, real rosbag2 files written with ``rosbags``, the CLI as users run it."""
import json
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import textured_image
from dhe_vpr_ros.map.building import add_frames
from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.map.sources import Frame, folder_frames
from dhe_vpr_ros.loop.evaluation import evaluate
from dhe_vpr_ros.loop.groundtruth import GroundTruthError, LabelledRun
from dhe_vpr_ros.method.geometry import corner_error
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import MapError, fingerprint
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.map.records import Pose as MapPose
from dhe_vpr_ros.method.models import build_model, save_checkpoint

W, H = 320, 240


@pytest.fixture(scope="module")
def model():
    return build_model("efficientnet_lite0", pretrained=True).eval()


def scene(seed):
    return textured_image(seed, W)[:H].copy()


def write_images(folder, seeds, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds):
        name = names[i] if names else f"place_{i:02d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(scene(seed), cv2.COLOR_RGB2BGR))
    return folder


def warp(image, homography):
    return cv2.warpPerspective(image, homography, (image.shape[1], image.shape[0]),
                               borderMode=cv2.BORDER_REFLECT)


TRUE_WARP = np.array([[1.05, 0.04, -12.0], [-0.03, 1.02, 6.0], [2e-5, 1e-5, 1.0]])


def test_build_reopen_query_identical_and_warped(tmp_path, model):
    write_images(tmp_path / "imgs", range(8))
    assert main(["build-map", "--images", str(tmp_path / "imgs"), "-o", str(tmp_path / "map")]) == 0
    db = MapDatabase.open(tmp_path / "map", expect=model_identity(model))
    assert len(db) == 8 and db.places[5].source.endswith("place_05.png") and db.places[5].image_size == (W, H)
    loc = Localizer(model, db, reranker="ransac", top_k=8)
    result = loc.query(scene(5))
    assert result.best.place_id == 5
    assert all(result.best.score > c.score for c in result.candidates[1:])
    eye = torch.eye(3, dtype=torch.float64)
    assert corner_error(torch.from_numpy(result.best.homography), eye, H, W) < 2.0
    # a warped copy: the query->map homography is the inverse of the warp, in original pixels
    query = warp(scene(5), TRUE_WARP)
    for name in ("ransac", "none"):
        result = loc.query(query, reranker=name)
        assert result.best.place_id == 5, name
    result = loc.query(query, reranker="ransac")
    err = corner_error(torch.from_numpy(result.best.homography), torch.from_numpy(np.linalg.inv(TRUE_WARP)), H, W)
    identity_err = corner_error(eye, torch.from_numpy(np.linalg.inv(TRUE_WARP)), H, W)
    assert err < 8.0 and err < identity_err / 2, (float(err), float(identity_err))
    assert len(result.inliers) >= 20  # inlier matches of the best candidate, original pixels
    q_proj = cv2.perspectiveTransform(result.inliers[:, :1].astype(np.float64), np.linalg.inv(TRUE_WARP))
    assert np.median(np.linalg.norm(q_proj[:, 0] - result.inliers[:, 1], axis=1)) < 16


def test_query_cli_json_and_append_keeps_ids(tmp_path, model, capsys):
    write_images(tmp_path / "a", range(3))
    write_images(tmp_path / "b", range(10, 12))
    out = str(tmp_path / "map")
    assert main(["build-map", "--images", str(tmp_path / "a"), "-o", out]) == 0
    assert main(["build-map", "--images", str(tmp_path / "b"), "-o", out]) == 2  # exists, no --append
    assert main(["build-map", "--images", str(tmp_path / "b"), "-o", out, "--append"]) == 0
    capsys.readouterr()
    assert main(["query", "--map", out, "--reranker", "ransac", "--top-k", "4", "--json",
                 str(tmp_path / "a" / "place_01.png"), str(tmp_path / "b" / "place_01.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert len(first) == 4 and first[0]["place_id"] == 1 and second[0]["place_id"] == 4
    assert set(first[0]) == {"place_id", "source", "score", "global_similarity", "homography", "timestamp_ns", "pose"}
    assert np.allclose(first[0]["homography"], np.eye(3), atol=1e-3) and first[0]["pose"] is None
    assert second[0]["source"].endswith("b/place_01.png")


def test_map_from_another_model_is_refused(tmp_path, model, caplog):
    write_images(tmp_path / "imgs", range(2))
    assert main(["build-map", "--images", str(tmp_path / "imgs"), "-o", str(tmp_path / "map")]) == 0
    other = build_model("efficientnet_lite0", pretrained=True)
    with torch.no_grad():
        other.backbone.encoder._blocks[3]._project_conv.weight.mul_(1.1)
    save_checkpoint(tmp_path / "other.pt", other)
    assert main(["query", "--map", str(tmp_path / "map"), "--checkpoint", str(tmp_path / "other.pt"),
                 str(tmp_path / "imgs" / "place_00.png")]) == 2
    assert "built with another model" in caplog.text and "weights_sha256" in caplog.text
    # a checkpoint that differs only in the regressor queries the same map fine
    regressor_only = build_model("efficientnet_lite0", pretrained=True)
    save_checkpoint(tmp_path / "regressor.pt", regressor_only)
    assert main(["query", "--map", str(tmp_path / "map"), "--checkpoint", str(tmp_path / "regressor.pt"),
                 "--reranker", "none", str(tmp_path / "imgs" / "place_00.png")]) == 0


def _utm_name(i, east, north):
    return f"@{east:.2f}@{north:.2f}@17@T@{i:03d}@.png"


def test_evaluate_recall_matches_hand_computation(tmp_path, model, capsys):
    """5 places 100 m apart. q0, q1: warped copies of places 0 and 3 at their positions
    (found at rank 1); q2: looks like place 1 but stands at place 4 (a miss at 1, found within
    5 since the map has 5 places); q3: 10 km away (no positive: a miss everywhere).
    So R@1 = 2/4 = 50 %, R@5 = R@10 = R@20 = 3/4 = 75 %."""
    write_images(tmp_path / "ds" / "database", range(20, 25),
                 [_utm_name(i, 500000 + 100 * i, 4e6) for i in range(5)])
    q_dir = tmp_path / "ds" / "queries"
    q_dir.mkdir()
    queries = [(20, 0, (500005, 4e6)), (23, 1, (500303, 4e6)), (21, 2, (500400, 4e6)), (22, 3, (510000, 4e6))]
    for seed, i, (east, north) in queries:
        cv2.imwrite(str(q_dir / _utm_name(i, east, north)),
                    cv2.cvtColor(warp(scene(seed), TRUE_WARP), cv2.COLOR_RGB2BGR))
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--dataset", str(tmp_path / "ds"), "--rerankers", "none,ransac,magsac,dhe",
                 "--top-k", "5", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    for name in ("none", "ransac", "magsac"):
        assert report["recall"][name] == {"1": 50.0, "5": 75.0, "10": 75.0, "20": 75.0}, name
    assert report["schema_version"] == 2
    assert set(report["latency_ms"]) == {"embed", "retrieve", "rerank", "rerank_stages"}
    stages = {"magsac": {"read", "mutual_nn", "estimator"}, "ransac": {"read", "mutual_nn", "estimator"},
              "dhe": {"read", "mutual_nn", "shift_start", "regressor", "refine", "inliers"}}
    for name, expected in stages.items():  # each re-ranker's total (a number, as before stages) and its stages
        total, timing = report["latency_ms"]["rerank"][name], report["latency_ms"]["rerank_stages"][name]
        assert isinstance(total, float) and total > 0, (name, total)
        assert set(timing) == expected, (name, timing)
        assert all(ms > 0 for ms in timing.values()) and sum(timing.values()) <= total
    assert report["queries_without_positive"] == 1
    assert "R@1" in capsys.readouterr().out
    # the same with a map built beforehand (UTM kept as place metadata)
    assert main(["build-map", "--geo-split", str(tmp_path / "ds"), "-o", str(tmp_path / "map")]) == 0
    db = MapDatabase.open(tmp_path / "map")
    assert db.places[2].utm == (500200.0, 4e6)
    assert main(["evaluate", "--dataset", str(tmp_path / "ds"), "--map", str(tmp_path / "map"),
                 "--rerankers", "none", "--json", str(report_path)]) == 0
    assert json.loads(report_path.read_text())["recall"]["none"]["1"] == 50.0


def test_geo_split_without_utm_names_is_a_clear_error(tmp_path, caplog):
    write_images(tmp_path / "ds" / "database", range(2))
    assert main(["build-map", "--geo-split", str(tmp_path / "ds"), "-o", str(tmp_path / "map")]) == 2
    assert "no UTM coordinates" in caplog.text
    assert main(["build-map", "--images", str(tmp_path / "empty"), "-o", str(tmp_path / "map")]) == 2


def test_build_map_output_an_empty_folder_is_used_and_a_user_path_is_refused_untouched(tmp_path, caplog):
    write_images(tmp_path / "imgs", range(2))
    empty = tmp_path / "made_by_hand"
    empty.mkdir()
    assert main(["build-map", "--images", str(tmp_path / "imgs"), "-o", str(empty)]) == 0
    assert len(MapDatabase.open(empty)) == 2
    user_file, user_dir = tmp_path / "notes.txt", tmp_path / "photos"
    user_file.write_text("mine")
    user_dir.mkdir()
    (user_dir / "a.jpg").write_bytes(b"mine too")
    for target in (user_file, user_dir):
        caplog.clear()
        assert main(["build-map", "--images", str(tmp_path / "imgs"), "-o", str(target)]) == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "not a dhe_vpr_ros map" in errors[0].getMessage(), caplog.text
    assert user_file.read_text() == "mine" and [p.name for p in user_dir.iterdir()] == ["a.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "made_by_hand", "notes.txt", "photos"]


# -- rosbag2 -------------------------------------------------------------------------------
def _write_bag(path, storage, compressed, pose_type, nan_pose_at=None):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    geo = "geometry_msgs/msg/"
    Pose, Point, Quat = store.types[geo + "Pose"], store.types[geo + "Point"], store.types[geo + "Quaternion"]
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    stamps = [1_700_000_000_000_000_000 + i * 200_000_000 for i in range(6)]  # 5 Hz
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        img_type = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        cam = writer.add_connection("/cam/image_raw" + ("/compressed" if compressed else ""), img_type, typestore=store)
        pose_conn = writer.add_connection("/odom", geo.replace("geometry", "nav") + "Odometry" if pose_type == "odom"
                                          else geo + "PoseStamped", typestore=store)
        for i, stamp in enumerate(stamps):
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="camera")
            rgb = scene(40 + i)
            if compressed:
                ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                msg = store.types[img_type](header=header, format="jpeg", data=buf.ravel())
            else:
                msg = store.types[img_type](header=header, height=H, width=W, encoding="rgb8", is_bigendian=0,
                                            step=W * 3, data=rgb.ravel())
            writer.write(cam, stamp, store.serialize_cdr(msg, img_type))
            x = float("nan") if i == nan_pose_at else float(i)
            pose = Pose(position=Point(x=x, y=2.0, z=0.0), orientation=Quat(x=0.0, y=0.0, z=0.0, w=1.0))
            odom_header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9 + 1000), frame_id="odom")
            if pose_type == "odom":
                PwC, Twc = store.types[geo + "PoseWithCovariance"], store.types[geo + "TwistWithCovariance"]
                Twist, Vec = store.types[geo + "Twist"], store.types[geo + "Vector3"]
                msg = store.types["nav_msgs/msg/Odometry"](
                    header=odom_header, child_frame_id="base_link",
                    pose=PwC(pose=pose, covariance=np.zeros(36)),
                    twist=Twc(twist=Twist(linear=Vec(x=0.0, y=0.0, z=0.0), angular=Vec(x=0.0, y=0.0, z=0.0)),
                              covariance=np.zeros(36)))
                writer.write(pose_conn, stamp, store.serialize_cdr(msg, "nav_msgs/msg/Odometry"))
            else:
                msg = store.types[geo + "PoseStamped"](header=odom_header, pose=pose)
                writer.write(pose_conn, stamp, store.serialize_cdr(msg, geo + "PoseStamped"))
    return stamps


@pytest.mark.parametrize("storage,compressed,pose_type", [("sqlite3", False, "odom"), ("mcap", True, "posestamped")])
def test_map_from_rosbag_carries_stamps_and_poses(tmp_path, model, storage, compressed, pose_type):
    stamps = _write_bag(tmp_path / "bag", storage, compressed, pose_type)
    topic = "/cam/image_raw" + ("/compressed" if compressed else "")
    bag_arg = str(next((tmp_path / "bag").glob("*.mcap" if storage == "mcap" else "*.db3")))  # a file inside works
    assert main(["build-map", "--bag", bag_arg, "--topic", topic, "--pose-topic", "/odom",
                 "-o", str(tmp_path / "map"), "--batch-size", "4"]) == 0
    db = MapDatabase.open(tmp_path / "map")
    assert [p.timestamp_ns for p in db.places] == stamps
    assert db.places[3].pose == MapPose("odom", (3.0, 2.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert db.places[3].source == f"{topic}@{stamps[3]}"
    # subsampling: every 0.35 s keeps frames 0, 2, 4; 1.5 m keeps 0, 2, 4 as well (1 m apart each)
    for flag, value in (("--min-interval-sec", "0.35"), ("--min-distance-m", "1.5")):
        assert main(["build-map", "--bag", str(tmp_path / "bag"), "--topic", topic, "--pose-topic", "/odom",
                     flag, value, "-o", str(tmp_path / "sub"), "--overwrite"]) == 0
        assert [p.timestamp_ns for p in MapDatabase.open(tmp_path / "sub").places] == stamps[0::2], flag
    assert main(["build-map", "--bag", str(tmp_path / "bag"), "--topic", "/nope", "-o", str(tmp_path / "x")]) == 2


def test_console_script_build_map_with_ros_args(tmp_path):
    """What `ros2 run dhe_vpr_ros build_map ...` executes (ROS appends --ros-args)."""
    write_images(tmp_path / "imgs", range(2))
    code = ("import sys; from dhe_vpr_ros.commands.cli import build_map_main; sys.argv = ['build_map'] + sys.argv[1:]; "
            "sys.exit(build_map_main())")
    proc = subprocess.run([sys.executable, "-c", code, "--images", str(tmp_path / "imgs"), "-o",
                           str(tmp_path / "map"), "--ros-args", "-r", "__node:=x"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(MapDatabase.open(tmp_path / "map")) == 2


def test_add_frames_skips_unreadable_images(tmp_path, model):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="none")
    frames = [Frame("good", lambda: scene(1)), *folder_frames(tmp_path)]
    assert add_frames(loc, frames) == [0]
    with pytest.raises(GroundTruthError, match="without UTM"):
        evaluate(loc, LabelledRun("no UTM", [], []))


def test_sigterm_of_build_map_cleans_up_like_ctrl_c(tmp_path):
    """A real build-map process, terminated while it embeds: no spill, no temp dir, no map."""
    import signal
    import time
    photos = write_images(tmp_path / "photos", range(200, 260))
    proc = subprocess.Popen([sys.executable, "-m", "dhe_vpr_ros", "build-map", "--images", str(photos),
                             "-o", str(tmp_path / "map"), "--batch-size", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".map.lock").exists():  # it holds the map's writer lock: it is at work
        assert proc.poll() is None and time.monotonic() < deadline, "build-map ended before it could be stopped"
        time.sleep(0.05)
    time.sleep(2.0)  # into the embedding (its grids go to an unnamed spill file)
    assert proc.poll() is None, "build-map ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "interrupted" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_query_refuses_unusable_images_and_prints_strict_json(tmp_path, model, capsys, caplog):
    write_images(tmp_path / "photos", range(300, 303))
    assert main(["build-map", "--images", str(tmp_path / "photos"), "-o", str(tmp_path / "map")]) == 0
    tiny, flat = tmp_path / "tiny.png", tmp_path / "flat.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(flat), np.full((240, 320, 3), 90, np.uint8))
    for path, reason in ((tiny, "too small"), (flat, "constant colour")):
        caplog.clear()
        assert main(["query", "--map", str(tmp_path / "map"), str(path)]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0] and reason in errors[0]
    capsys.readouterr()
    assert main(["query", "--map", str(tmp_path / "map"), "--json", "--reranker", "magsac",
                 str(tmp_path / "photos" / "place_01.png")]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)[0]["place_id"] == 1


def test_non_finite_candidates_are_skipped_and_never_returned(tmp_path, model):
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="ransac", top_k=3)
    images = [scene(400 + i) for i in range(3)]
    loc.add_images(images, [Place(-1, f"p{i}") for i in range(3)])
    loc.database.save(tmp_path / "map")
    grids = np.fromfile(tmp_path / "map" / "local.f16", np.float16).reshape(3, -1)
    grids[1, 7] = np.nan  # place 1's stored grid is damaged on disk
    grids.tofile(tmp_path / "map" / "local.f16")
    with pytest.raises(MapError, match="local.f16 is not the file this map was written with"):
        MapDatabase.open(tmp_path / "map")  # the manifest's fingerprint of the file tells
    # damage between the blocks a fingerprint samples (a large map): the query still never returns it
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    manifest["files"]["local.f16"]["fingerprint"] = fingerprint(tmp_path / "map" / "local.f16")
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(manifest))
    loc.database = MapDatabase.open(tmp_path / "map", expect=model_identity(model))
    result = loc.query(images[1])
    assert 1 not in [c.place_id for c in result.candidates] and result.skipped == 1
    assert all(np.isfinite(c.homography).all() and np.isfinite(c.score) for c in result.candidates)
