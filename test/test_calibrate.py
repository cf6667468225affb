# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""evaluate (precision, --sequence, --plot) and calibrate, end to end on a route made here: real
backbone, real map, real OpenCV re-ranking, real files; the commands run as a user runs them."""
import json
import logging

import cv2
import numpy as np
import pytest
import yaml

from conftest import textured_image

from dhe_vpr_ros.commands.cli import main

PLACES = 12
LOOK_ALIKE = 7  # query 7 shows place 0 exactly: a far look-alike that beats every true answer in one frame
WARP = np.array([[1.03, 0.02, -6], [-0.01, 1.0, 4], [0, 0, 1.0]])


def scene(seed):
    return textured_image(seed, 320)[:240].copy()


@pytest.fixture(scope="module")
def route(tmp_path_factory):
    """reference/0000.png.. (one place each) and queries/ (warped second views, in route order)."""
    root = tmp_path_factory.mktemp("route")
    for part in ("reference", "queries"):
        (root / part).mkdir()
    for i in range(PLACES):
        reference = scene(300 + i)
        cv2.imwrite(str(root / "reference" / f"{i:04d}.png"), cv2.cvtColor(reference, cv2.COLOR_RGB2BGR))
        query = scene(300) if i == LOOK_ALIKE else cv2.warpPerspective(reference, WARP, (320, 240),
                                                                       borderMode=cv2.BORDER_REFLECT)
        cv2.imwrite(str(root / "queries" / f"{i:04d}.png"), cv2.cvtColor(query, cv2.COLOR_RGB2BGR))
    return root


def run_args(route):
    return ["--reference", str(route / "reference"), "--queries", str(route / "queries"), "--tolerance", "1"]


SEQUENCE = ["--sequence-length", "3", "--sequence-min-agreeing", "2", "--sequence-tolerance", "1",
            "--sequence-max-speed", "1", "--min-distinctiveness", "1"]


def test_evaluate_reports_precision_and_what_sequence_verification_changes(route, tmp_path):
    report_path, plot = tmp_path / "report.json", tmp_path / "curves.png"
    assert main(["evaluate", *run_args(route), "--rerankers", "none,ransac", "--min-score", "0", "--sequence",
                 *SEQUENCE, "--json", str(report_path), "--plot", str(plot)]) == 0
    report = json.loads(report_path.read_text())
    single = report["precision"]["ransac"]
    assert set(single) >= {"recall_at_100_precision", "average_precision", "threshold_at_100_precision",
                           "wrong_above_min_score"}
    # the look-alike is the highest-scoring answer and it is wrong: nothing is accepted at 100 % precision
    assert single["recall_at_100_precision"] == 0 and single["threshold_at_100_precision"] is None
    assert single["wrong_above_min_score"] >= 1 and single["far_above_min_score"] >= 1
    assert report["recall"]["ransac"]["1"] == pytest.approx(100 * (PLACES - 1) / PLACES)  # recall is unchanged
    after = report["sequence"]["precision"]["ransac"]
    # the look-alike has no agreeing frame before it: never verified; the route is, once 2 frames agree
    assert after["far_above_min_score"] == 0 and after["wrong_above_min_score"] == 0
    assert after["recall_at_100_precision"] > single["recall_at_100_precision"]
    # every frame but the first (no frame before it) and the look-alike (none agrees with it)
    assert after["recall_at_100_precision"] == pytest.approx((PLACES - 2) / PLACES)
    assert report["sequence"]["settings"]["sequence_length"] == 3
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300


def test_calibrate_writes_a_params_file_that_reaches_its_target_on_its_run(route, tmp_path):
    params = tmp_path / "calibrated.yaml"
    assert main(["calibrate", *run_args(route), "--reranker", "ransac", "-o", str(params)]) == 0
    text = params.read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert values["reranker"] == "ransac" and values["sequence_length"] >= 2  # one frame cannot reach 100 %
    assert isinstance(values["min_score"], float) and isinstance(values["sequence_max_speed"], float)
    assert "precision 1.000" in text and "single-frame score alone reaches recall 0.000" in text
    # evaluate with exactly those settings: the calibrated precision on the data it was computed from
    report_path = tmp_path / "report.json"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in values.items() if k not in ("reranker", "top_k")]
    assert main(["evaluate", *run_args(route), "--rerankers", "ransac", "--top-k", str(values["top_k"]),
                 "--sequence", *options, "--json", str(report_path)]) == 0
    after = json.loads(report_path.read_text())["sequence"]["precision"]["ransac"]
    assert after["wrong_above_min_score"] == 0 and after["recall_at_100_precision"] > 0
    # a file this command wrote may be replaced; one a user wrote may not
    assert main(["calibrate", *run_args(route), "--reranker", "none", "-o", str(params)]) == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text("my: settings\n")
    assert main(["calibrate", *run_args(route), "--reranker", "none", "-o", str(mine)]) == 2
    assert mine.read_text() == "my: settings\n"


@pytest.mark.parametrize("command", ["calibrate", "evaluate"])
def test_bad_labelled_runs_end_in_one_clear_line(tmp_path, route, caplog, command):
    out = ["-o", str(tmp_path / "x.yaml")] if command == "calibrate" else ["--sequence"]
    unordered = tmp_path / "unordered"
    unordered.mkdir()
    for name in ("1.png", "2.png", "10.png"):
        cv2.imwrite(str(unordered / name), scene(5))
    single = tmp_path / "single"
    single.mkdir()
    cv2.imwrite(str(single / "0.png"), scene(5))
    cases = [
        (["--reference", str(route / "reference")], "needs --queries"),
        (["--reference", str(unordered), "--queries", str(unordered)], "not in sequence order"),
        (["--reference", str(single), "--queries", str(single)], "at least 2 frames"),
        (["--reference", str(route / "reference"), "--queries", str(single)], "one query frame per reference"),
    ]
    for args, reason in cases:
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([command, *args, *out]) == 2, args
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and reason in errors[0].getMessage(), (args, caplog.text)
        assert "Traceback" not in caplog.text
    assert not (tmp_path / "x.yaml").exists()
