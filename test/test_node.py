# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""vpr_node in its own process, as `ros2 run` starts it, talking real DDS with this process.

Frames are small (320x240 rgb8, 230 kB) and the image QoS is reliable on both sides, so Fast
DDS delivers every frame across processes. Re-ranking is RANSAC here so the tests do not
depend on which regressor weights are installed.
"""
import signal
import time

import cv2
import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import CompressedImage, Image

from conftest import textured_image
from ros_helpers import CONFIG, NodeProcess, Probe, node_command, write_params  # noqa: F401
from dhe_vpr_ros.image_conversion import to_rgb
from dhe_vpr_ros.method.identity import model_identity
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.records import Place, Pose
from dhe_vpr_ros.ros.parameters import PARAMETERS
from dhe_vpr_ros.runtime.loading import load_model

W, H = 320, 240
MAP_STAMP0 = 1_000.0


def scene(seed):
    return textured_image(seed, W)[:H].copy()


@pytest.fixture(scope="module")
def ros():
    rclpy.init()
    yield
    rclpy.shutdown()


@pytest.fixture(scope="module")
def model():
    return load_model(None)[0]


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory, model):
    """Four places with stamps 1000, 1100, 1200, 1300 s and poses x = 0, 10, 20, 30 m."""
    path = tmp_path_factory.mktemp("node") / "map"
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="none")
    places = [Place(-1, f"place_{i}", int((MAP_STAMP0 + 100 * i) * 1e9), Pose("map", (10.0 * i, 0.0, 0.0)))
              for i in range(4)]
    loc.add_images([scene(60 + i) for i in range(4)], places)
    loc.database.save(path)
    return path


def start(tmp_path, name="node", extra=(), **params):
    base = {"image_topics": ["/cam", "/cam/compressed"], "image_qos_reliability": "reliable",
            "reranker": "ransac", "diagnostics_period_sec": 0.25, "min_time_gap_sec": 30.0}
    base.update(params)
    return NodeProcess(write_params(tmp_path / f"{name}.yaml", **base), tmp_path / f"{name}.log", extra)


def test_config_file_lists_every_parameter_with_its_default():
    import yaml

    from dhe_vpr_ros.ros.parameters import config_yaml
    listed = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    assert listed == {name: spec.default for name, spec in PARAMETERS.items()}
    assert CONFIG.read_text() == config_yaml()  # regenerate: python -m dhe_vpr_ros.ros.parameters > config/vpr.yaml


def test_match_loop_closure_and_pose_reach_a_lio_sam_style_subscriber(ros, tmp_path, map_dir):
    node = start(tmp_path, map_path=str(map_dir), publish_debug_image=True, min_score=60.0, sequence_length=1,
                 verify_min_inliers=20)
    probe = Probe()
    try:
        probe.wait_connected(node)
        query_stamp = 5_000.25
        probe.publish_rgb(scene(62), query_stamp)  # place 2
        probe.wait_for(lambda: probe.got["match"] and probe.got["lio_sam"] and probe.got["pose"],
                       60, "~/match, ~/loop_closure, ~/matched_pose")
        match = probe.got["match"][0]
        assert len(match.data) == 23 and match.layout.dim[0].size == 23  # the 17 documented, then 5, then 1
        assert match.data[22] >= 20  # the place's two-view inliers: the map of build-map has its keypoints
        q_stamp, place_id, score, similarity, map_stamp = match.data[:5]
        assert q_stamp == pytest.approx(query_stamp) and place_id == 2 and map_stamp == pytest.approx(1200.0)
        assert score >= 100 and similarity > 0.99
        assert np.allclose(np.array(match.data[5:14]).reshape(3, 3), np.eye(3), atol=0.05)
        assert list(match.data[14:16]) == [W, H] and match.data[16] > 0
        loop = probe.got["lio_sam"][0]
        assert len(loop.data) == 2 and list(loop.data) == pytest.approx([query_stamp, 1200.0])
        probe.wait_for(lambda: probe.diag_values().get("loop_closures", "0") != "0", 10, "diagnostics of the loop")
        values = probe.diag_values()
        assert values["loop_closures_refused_two_view"] == "0"
        assert float(values["stage_embed_ms_p50"]) > 0 and float(values["stage_mutual_nn_ms_p50"]) > 0
        assert float(values["stage_estimator_ms_p50"]) > 0  # ransac's, as this node runs it
        probe.wait_for(lambda: float(probe.diag_values().get("cpu_ms_per_frame", "nan")) > 0, 15, "CPU per frame")
        values = probe.diag_values()  # what the node costs the robot: its CPU over the frames it answered
        assert float(values["cpu_cores"]) > 0 and float(values["cpu_share_percent"]) > 0
        probe.wait_for(lambda: probe.got["loop_closure"] and probe.got["top_k"] and probe.got["debug"], 10,
                       "the other outputs")
        top = probe.got["top_k"][0]
        assert [d.label for d in top.layout.dim] == ["candidates", "place_id,score,global_similarity,map_stamp_sec"]
        rows = np.array(top.data).reshape(-1, 4)
        assert rows[0, 0] == 2 and (rows[0, 1] > rows[1:, 1]).all()
        pose = probe.got["pose"][0]
        assert pose.header.frame_id == "map" and pose.pose.pose.position.x == 20.0
        assert pose.header.stamp.sec == 5000 and pose.header.stamp.nanosec == 250_000_000
        debug = probe.got["debug"][0]
        assert debug.height == 240 and debug.width > 2 * W * 240 / H - 2 and debug.header.stamp.sec == 5000
        # a query stamped within min_time_gap_sec of every place matches nothing usable: no loop
        before = len(probe.got["lio_sam"]) + len(probe.got["loop_closure"])
        n_match = len(probe.got["match"])
        probe.publish_rgb(scene(61), MAP_STAMP0 + 110)  # place 1 (1100 s) is within 30 s: not a candidate
        probe.wait_for(lambda: len(probe.got["match"]) > n_match, 60, "second ~/match")
        second = probe.got["match"][-1]
        assert second.data[1] != 1.0 and second.data[2] < 60
        probe.spin(1.0)
        assert len(probe.got["lio_sam"]) + len(probe.got["loop_closure"]) == before
    finally:
        probe.close()
        assert node.stop() == 0, node.text()


@pytest.fixture(scope="module")
def route_map(tmp_path_factory, model):
    """16 places along a route, stamps 1000 + 10 i s: place ids follow the route."""
    path = tmp_path_factory.mktemp("route") / "map"
    loc = Localizer(model, MapDatabase(model_identity(model)), reranker="none")
    loc.add_images([scene(200 + i) for i in range(16)],
                   [Place(-1, f"route_{i}", int((MAP_STAMP0 + 10 * i) * 1e9)) for i in range(16)])
    loc.database.save(path)
    return path


def test_a_topic_listed_twice_gives_one_match_per_frame(ros, tmp_path, map_dir):
    node = start(tmp_path, map_path=str(map_dir), image_topics=["/cam", "/cam", "cam"])
    probe = Probe()
    try:
        probe.wait_connected(node)
        for n in range(2):
            probe.publish_rgb(scene(61), 5000.0 + n)
            probe.wait_for(lambda n=n: len(probe.got["match"]) > n, 60, f"~/match of frame {n}")
        probe.spin(2.0)
        assert [m.data[0] for m in probe.got["match"]] == [5000.0, 5001.0]  # not four
        assert "more than once" in node.text()
    finally:
        probe.close()
        assert node.stop() == 0, node.text()


def test_loop_closures_wait_for_agreeing_frames_and_a_jump_closes_none(ros, tmp_path, route_map):
    """A second run along places 2, 3, 4 closes loops once two frames agree; a one-frame jump to
    place 14 (a look-alike far away) still publishes ~/match, flagged unverified, but no loop."""
    node = start(tmp_path, map_path=str(route_map), sequence_length=3, sequence_min_agreeing=2, min_score=40.0,
                 sequence_tolerance=1, sequence_max_speed=2.0)
    probe = Probe()
    warp = np.array([[1.02, 0.01, -4], [-0.01, 1.0, 3], [0, 0, 1.0]])
    try:
        probe.wait_connected(node)
        for n, place in enumerate([2, 3, 4, 14]):
            image = cv2.warpPerspective(scene(200 + place), warp, (W, H), borderMode=cv2.BORDER_REFLECT)
            probe.publish_rgb(image, 5000.0 + n)
            probe.wait_for(lambda n=n: len(probe.got["match"]) > n, 60, f"~/match of frame {n}")
        probe.spin(1.0)
        matches = [m.data for m in probe.got["match"]]
        assert [int(m[1]) for m in matches] == [2, 3, 4, 14]  # every frame is answered
        assert [m[17] for m in matches] == [0.0, 1.0, 1.0, 0.0]  # verified: the 18th value
        assert [int(m[18]) for m in matches[1:3]] == [3, 4] and matches[2][20] >= 2  # place and agreeing frames
        loops = [list(m.data) for m in probe.got["loop_closure"]]
        assert np.allclose(loops, [[5001.0, MAP_STAMP0 + 30], [5002.0, MAP_STAMP0 + 40]])
        assert len(probe.got["pose"]) == 0  # this map has no poses
    finally:
        probe.close()
        assert node.stop() == 0, node.text()


def _huge_png() -> bytes:
    ok, buffer = cv2.imencode(".png", np.zeros((8000, 8000), np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return buffer.tobytes()


BAD_INPUTS = [
    ("unsupported encoding", lambda: Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64))),
    ("64 megapixels", lambda: CompressedImage(format="png", data=_huge_png())),
    ("truncated", lambda: Image(height=240, width=320, encoding="rgb8", step=960, data=bytes(1000))),
    ("zero size", lambda: Image(height=0, width=0, encoding="rgb8", step=0, data=b"")),
    ("bad jpeg", lambda: CompressedImage(format="jpeg", data=b"\xff\xd8\xff garbage")),
]


def test_bad_inputs_are_logged_counted_and_the_node_keeps_answering(ros, tmp_path, map_dir):
    node = start(tmp_path, map_path=str(map_dir))
    probe = Probe()
    try:
        probe.wait_connected(node)
        probe.wait_for(lambda: probe.node.count_subscribers("/cam/compressed") > 0, 30, "compressed subscription")
        probe.spin(0.5)
        for i, (_, make) in enumerate(BAD_INPUTS):
            probe.publish_raw(make(), 2000.0 + i)
            probe.wait_for(lambda i=i: int(probe.diag_values().get("bad_messages", 0)) >= i + 1, 30,
                           f"bad message {i + 1} to be counted")
        probe.publish_jpeg(scene(61), 3000.0)  # a good compressed frame afterwards
        probe.wait_for(lambda: probe.got["match"], 60, "a match after the bad inputs")
        assert probe.got["match"][-1].data[1] == 1.0
        assert node.proc.poll() is None
        log = node.text()
        for reason in ("unsupported encoding '32FC1'", "over the limit of 50 MP", "truncated message", "empty image",
                       "cannot decode"):
            assert reason in log, reason
        assert "/cam/compressed" in log and "/cam:" in log.replace("/cam/compressed", "")
    finally:
        probe.close()
        assert node.stop() == 0


def test_burst_keeps_newest_frames_reports_drops_and_memory_is_bounded(ros, tmp_path, map_dir):
    """30 Hz for 20 s into a node that needs far more than 33 ms per frame on this CPU."""
    node = start(tmp_path, map_path=str(map_dir), top_k=4)
    probe = Probe()
    try:
        probe.wait_connected(node)
        frames = [scene(60 + i % 4) for i in range(4)]
        start_t = time.monotonic()
        rss, n = {}, 0
        while (elapsed := time.monotonic() - start_t) < 20.0:
            probe.publish_rgb(frames[n % 4], 10_000.0 + n / 30.0)
            n += 1
            for mark in (5, 19):
                if elapsed >= mark and mark not in rss:
                    rss[mark] = node.rss_mib()
            probe.spin(max(0.0, start_t + n / 30.0 - time.monotonic()))
        last_sent = 10_000.0 + (n - 1) / 30.0
        probe.spin(3.0)
        diag = probe.diag_values()
        processed, dropped = int(diag["frames_processed"]), int(diag["frames_dropped"])
        assert n >= 500 and int(diag["frames_received"]) >= 0.9 * n
        assert dropped > 0 and processed > 5 and processed + dropped <= int(diag["frames_received"])
        # the last frames answered are the newest ones, not a backlog
        assert probe.got["match"][-1].data[0] > last_sent - 2.0
        assert rss[19] - rss[5] < 64, rss
    finally:
        probe.close()
        assert node.stop() == 0


def test_loop_closure_within_one_run_and_save_map(ros, tmp_path):
    """Empty map, keyframes on: A B C D then A again; the revisit closes a loop to A."""
    saved = tmp_path / "grown_map"
    # remapped as a LIO-SAM user would: LIO-SAM listens on lio_loop/loop_closure_detection
    node = start(tmp_path, add_keyframes=True, keyframe_min_interval_sec=1.0, min_time_gap_sec=15.0,
                 save_map_path=str(saved), min_score=30.0, sequence_length=1,
                 extra=("-r", "/vpr_node/loop_closure:=/lio_loop/loop_closure_detection"))
    probe = Probe(lio_topic="/lio_loop/loop_closure_detection")
    try:
        probe.wait_connected(node)
        sequence = [(scene(70), 100.0), (scene(71), 110.0), (scene(72), 120.0), (scene(73), 130.0)]
        revisit = cv2.warpPerspective(scene(70), np.array([[1.03, 0.02, -6], [-0.01, 1.0, 4], [0, 0, 1.0]]), (W, H),
                                      borderMode=cv2.BORDER_REFLECT)
        for i, (img, stamp) in enumerate([*sequence, (revisit, 140.0)]):
            probe.publish_rgb(img, stamp)
            probe.wait_for(lambda i=i: int(probe.diag_values().get("frames_processed", 0)) >= i + 1, 60,
                           f"frame {i + 1} processed")
        probe.wait_for(lambda: probe.got["lio_sam"], 10, "loop closure")
        assert list(probe.got["lio_sam"][-1].data) == pytest.approx([140.0, 100.0])
        assert all(m.data[0] == 140.0 for m in probe.got["lio_sam"])  # no loop before the revisit
        assert not probe.got["loop_closure"]  # the remap moved the topic
        client = probe.node.create_client(__import__("std_srvs.srv", fromlist=["Trigger"]).Trigger,
                                          "/vpr_node/save_map")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(__import__("std_srvs.srv", fromlist=["Trigger"]).Trigger.Request())
        probe.wait_for(future.done, 30, "~/save_map")
        assert future.result().success, future.result().message
        db = MapDatabase.open(saved)
        assert len(db) == 5 and [p.timestamp_ns for p in db.places] == [int(s * 1e9) for s in (100, 110, 120, 130, 140)]
        assert db.places[0].source == "/cam"
    finally:
        probe.close()
        assert node.stop() == 0


@pytest.mark.parametrize("params,reason", [
    ({"map_path": "/nonexistent/map"}, "does not exist"),
    ({"reranker": "magic"}, "reranker 'magic' is not one of"),
    ({"backbone": "cct14"}, "built with another model"),
    ({"image_topics": [""]}, "image_topics must list at least one camera topic"),
    ({"diagnostics_period_sec": 0.0}, "diagnostics_period_sec out of range"),
    ({"image_qos_reliability": "sometimes"}, "image_qos_reliability must be"),
])
def test_parameter_errors_stop_startup_with_one_clear_line(tmp_path, map_dir, params, reason):
    import subprocess
    values = {"map_path": str(map_dir), **params}
    proc = subprocess.run(node_command(write_params(tmp_path / "bad.yaml", **values)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    fatal = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot start" in line]
    assert len(fatal) == 1 and reason in fatal[0], proc.stdout + proc.stderr


def test_an_empty_topic_list_is_a_clear_startup_error(tmp_path, map_dir):
    """`image_topics: []` in a parameters file has no type in ROS 2: the node says so (given
    alone; after another file that sets the list, rcl keeps that file's value)."""
    import subprocess
    bad = write_params(tmp_path / "bad.yaml", map_path=str(map_dir), image_topics=[])
    head = node_command(bad)[:node_command(bad).index("--ros-args")]
    proc = subprocess.run([*head, "--ros-args", "--params-file", str(bad)], capture_output=True, text=True,
                          timeout=120)
    fatal = [line for line in (proc.stdout + proc.stderr).splitlines() if "cannot start" in line]
    assert proc.returncode != 0 and len(fatal) == 1 and "'image_topics' has no value" in fatal[0], proc.stderr


def test_image_conversion_round_trips_every_encoding():
    from dhe_vpr_ros.image_conversion import SUPPORTED_ENCODINGS, rgb_to_fields
    img = cv2.GaussianBlur(scene(5)[:48, :64], (7, 7), 2)  # smooth: demosaicing and 4:2:2 are near-exact
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    for encoding in SUPPORTED_ENCODINGS:
        for padding in (0, 10):
            for bigendian in (False, True):
                fields = rgb_to_fields(img, encoding, padding, bigendian)
                msg = Image(**{**fields, "data": fields["data"]})
                out = to_rgb(msg)
                expected = np.stack([gray] * 3, -1) if encoding in ("mono8", "8UC1", "mono16", "16UC1") else img
                err = np.abs(out.astype(int) - expected)
                lossy = encoding.startswith(("bayer", "yuv", "uyvy", "yuyv"))
                assert out.shape == (48, 64, 3)
                assert (err.mean() < 4 and err.max() < 40) if lossy else err.max() == 0, (encoding, padding)
    jpeg = CompressedImage(format="jpeg", data=__import__("dhe_vpr_ros.image_conversion", fromlist=["x"])
                           .encode_compressed(img, "png"))
    assert np.array_equal(to_rgb(jpeg), img)


def test_cv_bridge_path_agrees_when_cv_bridge_exists():
    cv_bridge = pytest.importorskip("cv_bridge", reason="ROS 2 cv_bridge is not installable here (no wheel)")
    bridge = cv_bridge.CvBridge()
    img = scene(3)
    from dhe_vpr_ros.image_conversion import rgb_to_fields
    for encoding in ("rgb8", "bgr8", "mono8", "bayer_rggb8"):
        msg = Image(**rgb_to_fields(img, encoding, 4))
        assert np.abs(bridge.imgmsg_to_cv2(msg, "rgb8").astype(int) - to_rgb(msg)).max() <= 2, encoding


def test_mono16_big_endian_is_read_with_the_right_byte_order():
    values = np.array([[0x0100, 0xFF00]], np.uint16)
    msg = Image(height=1, width=2, encoding="mono16", is_bigendian=1, step=4, data=values.astype(">u2").tobytes())
    assert to_rgb(msg)[0, :, 0].tolist() == [1, 254]


def _call(probe, srv_type, name, request, timeout=30):
    client = probe.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"{name} not offered"
    future = client.call_async(request)
    probe.wait_for(future.done, timeout, name)
    probe.node.destroy_client(client)
    return future.result()


def _set_params(probe, **values):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as RclpyParameter
    params = [RclpyParameter(k, value=v).to_parameter_msg() for k, v in values.items()]
    return _call(probe, SetParameters, "/vpr_node/set_parameters", SetParameters.Request(parameters=params)).results


def _lifecycle(probe, transition_label):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    transition = Transition(id=getattr(Transition, f"TRANSITION_{transition_label.upper()}"))
    return _call(probe, ChangeState, "/vpr_node/change_state", ChangeState.Request(transition=transition)).success


def _state(probe):
    from lifecycle_msgs.srv import GetState
    return _call(probe, GetState, "/vpr_node/get_state", GetState.Request()).current_state.label


def test_lifecycle_transitions_through_change_state(ros, tmp_path, map_dir):
    """autostart false: unconfigured until told; deactivate stops answering, activate resumes."""
    node = start(tmp_path, map_path=str(map_dir), autostart=False)
    probe = Probe()
    try:
        probe.wait_for(lambda: probe.node.count_publishers("/vpr_node/transition_event") > 0
                       or node.proc.poll() is not None, 90, "the lifecycle node")
        assert _state(probe) == "unconfigured"
        assert probe.node.count_subscribers("/cam") == 0  # nothing loaded, nothing subscribed
        rejected = _set_params(probe, precision="int4")[0]
        assert not rejected.successful and "precision must be float or int8" in rejected.reason
        assert _set_params(probe, precision="int8")[0].successful  # unconfigured: for the next configure
        assert _set_params(probe, precision="float")[0].successful
        assert _lifecycle(probe, "configure") and _state(probe) == "inactive"
        rejected = _set_params(probe, precision="int8")[0]  # configured: the map holds float features
        assert not rejected.successful and "deactivate and clean up" in rejected.reason, rejected.reason
        assert _lifecycle(probe, "activate") and _state(probe) == "active"
        probe.wait_connected(node)
        probe.publish_rgb(scene(61), 3000.0)
        probe.wait_for(lambda: probe.got["match"], 60, "a match while active")
        assert _lifecycle(probe, "deactivate") and _state(probe) == "inactive"
        n = len(probe.got["match"])
        probe.publish_rgb(scene(62), 3001.0)
        probe.spin(3.0)
        assert len(probe.got["match"]) == n  # inactive: frames are not processed
        assert _lifecycle(probe, "activate")
        probe.wait_connected(node)
        probe.publish_rgb(scene(62), 3002.0)
        probe.wait_for(lambda: len(probe.got["match"]) > n, 60, "a match after re-activating")
        assert probe.got["match"][-1].data[1] == 2.0
        assert _lifecycle(probe, "deactivate") and _lifecycle(probe, "cleanup") and _state(probe) == "unconfigured"
    finally:
        probe.close()
        assert node.stop() == 0, node.text()


def test_live_parameters_are_validated_and_take_effect(ros, tmp_path, map_dir):
    new_save = tmp_path / "saved_here"
    node = start(tmp_path, map_path=str(map_dir), reranker="ransac", min_score=20.0, sequence_length=1)
    probe = Probe()
    try:
        probe.wait_connected(node)
        rejected = _set_params(probe, top_k=0)[0]
        assert not rejected.successful and "top_k" in rejected.reason
        rejected = _set_params(probe, reranker="magic")[0]
        assert not rejected.successful and "magic" in rejected.reason
        assert not _set_params(probe, map_path="/elsewhere")[0].successful  # read-only
        for name, bad in (("sequence_length", 0), ("min_distinctiveness", 0.5), ("min_score", -0.5),
                          ("sequence_max_speed", float("nan"))):
            rejected = _set_params(probe, **{name: bad})[0]
            assert not rejected.successful and name in rejected.reason, (name, rejected.reason)
        assert all(r.successful for r in _set_params(probe, sequence_length=3, min_distinctiveness=1.5))
        assert all(r.successful for r in _set_params(probe, sequence_length=1, min_distinctiveness=1.0))  # one frame
        # min_score high: the match is still published, the loop closure is not
        assert _set_params(probe, min_score=1e5)[0].successful
        probe.publish_rgb(scene(62), 5000.0)
        probe.wait_for(lambda: probe.got["match"], 60, "a match")
        probe.spin(1.0)
        assert not probe.got["loop_closure"]
        # magsac by name, live
        assert _set_params(probe, reranker="magsac")[0].successful
        probe.publish_rgb(scene(62), 5000.5)
        probe.wait_for(lambda: len(probe.got["match"]) >= 2, 60, "a magsac match")
        assert probe.got["match"][-1].data[1] == 2.0 and probe.got["match"][-1].data[2] > 20
        # reranker none: the score becomes the global similarity (at most 1)
        assert _set_params(probe, reranker="none", min_score=0.0)[0].successful
        probe.publish_rgb(scene(62), 5001.0)
        probe.wait_for(lambda: len(probe.got["match"]) >= 3, 60, "a third match")
        assert probe.got["match"][-1].data[2] <= 1.0 + 1e-6
        probe.wait_for(lambda: probe.got["loop_closure"], 10, "the loop closure min_score 0 lets through")
        # save_map_path set live is where ~/save_map writes
        from std_srvs.srv import Trigger
        assert _set_params(probe, save_map_path=str(new_save))[0].successful
        reply = _call(probe, Trigger, "/vpr_node/save_map", Trigger.Request())
        assert reply.success and str(new_save) in reply.message
        assert len(MapDatabase.open(new_save)) == 4
    finally:
        probe.close()
        assert node.stop() == 0, node.text()


def test_save_map_never_replaces_what_is_not_a_map(ros, tmp_path, map_dir):
    from std_srvs.srv import Trigger
    user_dir = tmp_path / "user_dir"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("mine")
    user_file = tmp_path / "user_file"
    user_file.write_text("also mine")
    node = start(tmp_path, map_path=str(map_dir), save_map_path=str(user_dir))
    probe = Probe()
    try:
        probe.wait_connected(node)
        reply = _call(probe, Trigger, "/vpr_node/save_map", Trigger.Request())
        assert not reply.success and "not a dhe_vpr_ros map" in reply.message
        assert [p.name for p in user_dir.iterdir()] == ["notes.txt"] and (user_dir / "notes.txt").read_text() == "mine"
        rejected = _set_params(probe, save_map_path=str(user_file))[0]
        assert not rejected.successful and "existing file" in rejected.reason
        assert user_file.read_text() == "also mine"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".user")]  # no temp leftovers
    finally:
        probe.close()
        code = node.stop()
    # the shutdown save fails the same way: reported, non-zero exit, the user's files intact
    assert code != 0 and "saving the map on shutdown failed" in node.text()
    assert (user_dir / "notes.txt").read_text() == "mine" and len(list(user_dir.iterdir())) == 1


DEGENERATE = [
    ("odd-width yuv", lambda: Image(height=480, width=641, encoding="yuv422", step=1282, data=bytes(1282 * 480))),
    ("1x1 bayer", lambda: Image(height=1, width=1, encoding="bayer_rggb8", step=1, data=bytes(1))),
    ("1x1 rgb", lambda: Image(height=1, width=1, encoding="rgb8", step=3, data=bytes([10, 20, 30]))),
    ("constant colour", lambda: Image(height=64, width=64, encoding="mono8", step=64, data=bytes([128]) * 4096)),
]


def test_degenerate_frames_are_counted_bad_and_never_stop_inference(ros, tmp_path, map_dir):
    node = start(tmp_path, map_path=str(map_dir))
    probe = Probe()
    try:
        probe.wait_connected(node)
        for i, (_, make) in enumerate(DEGENERATE):
            probe.publish_raw(make(), 2000.0 + i)
            probe.wait_for(lambda i=i: int(probe.diag_values().get("bad_messages", 0)) >= i + 1, 30,
                           f"degenerate frame {i + 1} to be counted")
        assert not probe.got["match"]  # none of them matched anything
        probe.publish_rgb(scene(63), 3000.0)  # the worker still runs
        probe.wait_for(lambda: probe.got["match"], 60, "a match after the degenerate frames")
        assert probe.got["match"][-1].data[1] == 3.0
        probe.wait_for(lambda: int(probe.diag_values().get("frames_processed", 0)) >= 1, 10, "diagnostics")
        assert int(probe.diag_values()["processing_errors"]) == 0
        assert "must be even" in node.text() and "too small" in node.text() and "constant colour" in node.text()
    finally:
        probe.close()
        assert node.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_end_the_node_cleanly_and_save_the_map(ros, tmp_path, map_dir, sig):
    saved = tmp_path / "saved"
    node = start(tmp_path, map_path=str(map_dir), save_map_path=str(saved))
    probe = Probe()
    try:
        probe.wait_connected(node)
    finally:
        probe.close()
    node.proc.send_signal(sig)
    code = node.proc.wait(60)
    node.stop()
    assert code == 0, node.text()
    assert "Traceback" not in node.text() and "saved 4 places" in node.text()
    assert len(MapDatabase.open(saved)) == 4
