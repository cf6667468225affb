# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Nothing lost, nothing bypassed (issue 29): what the user protected stays protected, special
files are streams, odd names are read, options that make a run meaningless are refused, and every
error of the file system names its path. Real commands on real files; where permissions matter
the command also runs with root's override dropped (``setpriv`` without CAP_DAC_OVERRIDE), and
the read-only file system is a real read-only mount in a private mount namespace."""
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import yaml

from conftest import textured_image
from faults.matrix import snapshot
from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.sequence import MAX_WORK
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.ros.parameters import PARAMETERS, ParameterProblem, check_live

REPO = Path(__file__).resolve().parents[1]


def one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Eight 160x120 frames and two 240x120 ones (another camera)."""
    root = tmp_path_factory.mktemp("frames")
    for name, count, size in (("cam", 8, (160, 120)), ("wide", 2, (240, 120))):
        (root / name).mkdir()
        for i in range(count):
            image = cv2.resize(textured_image(700 + i, 256), size)
            cv2.imwrite(str(root / name / f"{i:04d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root


@pytest.fixture(scope="module")
def small_map(frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("maps") / "map"
    assert main(["build-map", "--images", str(frames / "cam"), "-o", str(out)]) == 0
    return out


def copy_map(small_map, tmp_path) -> Path:
    target = tmp_path / "map"
    shutil.copytree(small_map, target)
    return target


def cli(*argv, setpriv=False, cwd=None, timeout=300):
    """The command line in its own process (``setpriv``: without root's permission override)."""
    command = [sys.executable, "-m", "dhe_vpr_ros", *map(str, argv)]
    if setpriv:
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "TMPDIR": str(cwd or REPO)})


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "[ERROR]" in line or " error: " in line]


# -- what the user protected -----------------------------------------------------------------
@pytest.mark.parametrize("override", ["root", "no override"])
def test_a_write_protected_map_is_refused_and_nothing_is_left(frames, small_map, tmp_path, override):
    if override == "no override" and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    target = copy_map(small_map, tmp_path)
    for path in [target, *target.iterdir()]:
        path.chmod(path.stat().st_mode & ~0o222)  # chmod -R a-w MAP
    before = snapshot(tmp_path)
    proc = cli("build-map", "--images", frames / "cam", "-o", target, "--append", setpriv=override != "root",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert f"refusing to replace the map {target}" in line and "write-protected" in line
    assert snapshot(tmp_path) == before  # no .map.tmp-*, no lock file, the map as it was
    for path in [target, *target.iterdir()]:
        path.chmod(path.stat().st_mode | 0o200)
    grids = next(p for p in target.iterdir() if p.name.startswith("local."))
    grids.chmod(0o444)  # one file protected is enough
    proc = cli("build-map", "--images", frames / "cam", "-o", target, "--append", cwd=tmp_path)
    assert proc.returncode == 2 and f"{grids.name} is write-protected" in proc.stderr


def test_a_write_protected_report_or_folder_is_refused(small_map, frames, tmp_path, caplog):
    report = tmp_path / "report.json"
    report.write_text("mine")
    report.chmod(0o444)
    assert main(["evaluate", "--reference", str(frames / "cam"), "--queries", str(frames / "cam"), "--map",
                 str(small_map), "--rerankers", "none", "--json", str(report)]) == 2
    assert f"{report}: is write-protected" in one_error(caplog) and report.read_text() == "mine"
    caplog.clear()
    out = tmp_path / "export"
    out.mkdir(mode=0o555)
    assert main(["export", "--out", str(out)]) == 2
    assert "write-protected" in one_error(caplog) and not any(out.iterdir())


def test_a_lock_file_that_is_a_link_is_never_written_through(frames, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / ".map.lock").symlink_to(victim)
    before = snapshot(tmp_path)
    proc = cli("build-map", "--images", frames / "cam", "-o", tmp_path / "map", cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert str(tmp_path / ".map.lock") in line and "symbolic link" in line
    assert snapshot(tmp_path) == before
    (tmp_path / ".map.lock").unlink()
    os.mkfifo(tmp_path / ".map.lock")
    proc = cli("build-map", "--images", frames / "cam", "-o", tmp_path / "map", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / ".map.lock").st_mode)


# -- special files are streams ---------------------------------------------------------------
def evaluate_args(frames, small_map):
    return ["evaluate", "--reference", frames / "cam", "--queries", frames / "cam", "--map", small_map,
            "--rerankers", "none"]


def test_special_files_are_written_as_streams_and_never_replaced(frames, small_map, tmp_path):
    proc = cli(*evaluate_args(frames, small_map), "--json", "-", cwd=tmp_path)
    assert proc.returncode == 0
    report = json.loads(proc.stdout[proc.stdout.index("\n{") + 1:])
    assert report["num_queries"] == 8
    proc = cli(*evaluate_args(frames, small_map), "--json", "/dev/stdout", cwd=tmp_path)
    assert proc.returncode == 0 and '"num_queries": 8' in proc.stdout
    assert os.path.islink("/dev/stdout") or stat.S_ISCHR(os.stat("/dev/stdout").st_mode)
    if os.path.exists("/dev/full"):
        proc = cli(*evaluate_args(frames, small_map), "--json", "/dev/full", cwd=tmp_path)
        assert proc.returncode == 2
        (line,) = error_lines(proc)
        assert "/dev/full" in line and "disk full" in line
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    proc = cli(*evaluate_args(frames, small_map), "--json", fifo, cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(reader.communicate(timeout=60)[0])["num_queries"] == 8
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_report_path_that_is_a_link_is_refused_and_the_link_kept(frames, small_map, tmp_path, caplog):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    assert main([str(a) for a in evaluate_args(frames, small_map)] + ["--json", str(tmp_path / "link.json")]) == 2
    assert "symbolic link" in one_error(caplog)
    assert os.path.islink(tmp_path / "link.json") and (tmp_path / "real.json").read_text() == "old"


def test_a_failed_plot_never_costs_the_report(frames, small_map, tmp_path, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    report = tmp_path / "report.json"
    argv = [str(a) for a in evaluate_args(frames, small_map)]
    assert main(argv + ["--json", str(report), "--plot", "/dev/full"]) == 2
    assert "/dev/full" in one_error(caplog)
    assert json.loads(report.read_text())["num_queries"] == 8
    caplog.clear()  # a plot that cannot be made at all is refused before the run, nothing written
    (tmp_path / "a_file").write_text("x")
    assert main(argv + ["--json", str(tmp_path / "r2.json"), "--plot", str(tmp_path / "a_file" / "p.png")]) == 2
    assert f"{tmp_path / 'a_file'}: is not a folder" in one_error(caplog)
    assert not (tmp_path / "r2.json").exists()


# -- options that make a run meaningless -----------------------------------------------------
def test_a_checkpoint_that_is_not_the_exports_is_refused(small_map, frames, tmp_path, caplog):
    from dhe_vpr_ros.method.models import build_model, save_checkpoint
    assert main(["export", "--out", str(tmp_path / "onnx")]) == 0
    other = tmp_path / "other.pt"
    save_checkpoint(other, build_model("efficientnet_lite0", pretrained=True))
    caplog.clear()
    image = next((frames / "cam").iterdir())
    assert main(["query", "--map", str(small_map), "--runtime", "onnxruntime", "--onnx", str(tmp_path / "onnx"),
                 "--checkpoint", str(other), str(image)]) == 2
    line = one_error(caplog)
    assert str(other) in line and "hashes differ" in line
    from dhe_vpr_ros.runtime.loading import default_checkpoint
    caplog.clear()  # the export's own checkpoint is accepted
    assert main(["query", "--map", str(small_map), "--runtime", "onnxruntime", "--onnx", str(tmp_path / "onnx"),
                 "--checkpoint", str(default_checkpoint()), str(image)]) == 0


def test_a_mask_that_leaves_too_few_cells_is_refused(frames, tmp_path, caplog):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(24):  # enough places to learn static cells
        src = frames / "cam" / f"{i % 8:04d}.png"
        image = cv2.imread(str(src))
        cv2.imwrite(str(many / f"{i:04d}.png"), image if i < 8 else cv2.flip(image, i % 3 - 1))
    assert main(["build-map", "--images", str(many), "-o", str(tmp_path / "map"), "--static-threshold", "1e-6"]) == 2
    line = one_error(caplog)
    assert "leaves 0 of 576 cells" in line and "--static-threshold" in line
    assert not (tmp_path / "map").exists()


def test_frames_of_another_shape_than_the_maps_mask_are_refused(frames, tmp_path, caplog):
    mask = tmp_path / "mask.png"
    picture = cv2.imread(str(frames / "cam" / "0000.png"))
    picture[:] = 255
    picture[-20:] = 0  # the hood
    cv2.imwrite(str(mask), picture)
    target = tmp_path / "map"
    assert main(["build-map", "--images", str(frames / "cam"), "-o", str(target), "--mask", str(mask)]) == 0
    before = snapshot(tmp_path)
    assert main(["build-map", "--images", str(frames / "wide"), "-o", str(target), "--append"]) == 2
    line = one_error(caplog)
    assert "240x120" in line and "160x120" in line and "mask.png" in line
    assert snapshot(tmp_path) == before


def test_sequence_settings_that_cannot_run_in_time_are_refused():
    values = {name: spec.default for name, spec in PARAMETERS.items()}
    check_live(values)  # the defaults run
    with pytest.raises(ParameterProblem, match="over the budget"):
        check_live({**values, "sequence_length": 100, "sequence_max_speed": 1000.0})
    with pytest.raises(ParameterProblem, match="lower top_k"):
        check_live({**values, "sequence_length": 2, "top_k": 1000})  # 9 speeds x 1000 x 1000 candidates
    settings = LoopPolicy(sequence_length=10, sequence_max_speed=10.0).sequence()
    assert settings.work(32) <= MAX_WORK  # a long window and a fast robot still fit at K = 32


def test_evaluate_refuses_a_sequence_search_over_its_budget(frames, small_map, caplog):
    argv = [str(a) for a in evaluate_args(frames, small_map)]
    assert main(argv + ["--sequence", "--sequence-length", "100", "--sequence-max-speed", "1000"]) == 2
    assert "over the budget" in one_error(caplog)


# -- names and text from the user ------------------------------------------------------------
def test_a_newline_in_a_run_folder_never_leaves_the_comment(frames, tmp_path):
    odd = tmp_path / "run\nsequence_length: 99"
    shutil.copytree(frames / "cam", odd / "reference")
    shutil.copytree(frames / "cam", odd / "queries")
    out = tmp_path / "params.yaml"
    assert main(["calibrate", "--reference", str(odd / "reference"), "--queries", str(odd / "queries"),
                 "--reranker", "none", "--target-precision", "0.5", "-o", str(out)]) == 0
    params = yaml.safe_load(out.read_text())["/**"]["ros__parameters"]
    assert params["sequence_length"] != 99
    assert sorted(params) == sorted(["reranker", "top_k", "min_score", "sequence_length", "sequence_tolerance",
                                     "sequence_max_speed", "sequence_min_agreeing", "min_distinctiveness",
                                     "distinctiveness_neighbourhood", "sequence_guided", "verify_min_inliers",
                                     "verify_features"])
    assert "run\\nsequence_length: 99" in out.read_text()


def test_a_file_name_that_is_not_utf8_is_read(frames, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for i, src in enumerate(sorted((frames / "cam").iterdir())[:3]):
        name = b"\xff\xfe" + str(i).encode() + b".png"
        shutil.copy(src, os.fsencode(folder) + b"/" + name)
    proc = cli("build-map", "--images", folder, "-o", tmp_path / "map", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # was: SIGSEGV inside cv2.imread (exit -11)
    sources = [place.source for place in MapDatabase.open(tmp_path / "map").places]
    names = [os.fsencode(s).rsplit(b"/", 1)[1] for s in sources]
    assert names == [b"\xff\xfe0.png", b"\xff\xfe1.png", b"\xff\xfe2.png"]


@pytest.mark.parametrize("field,value,words", [
    ("files_sha256", "abc", "files_sha256"), ("stride", 0, "'stride' is 0"), ("input_size", "384", "input_size"),
    ("mean", [0.5, 0.5], "'mean'"), ("identity", [], "identity"), ("regressor", {"layers": 10 ** 9}, "layers"),
])
def test_each_wrong_field_of_an_export_is_one_clear_line(small_map, frames, tmp_path_factory, field, value, words,
                                                         caplog):
    base = tmp_path_factory.getbasetemp() / "export_for_fields"
    if not base.exists():
        assert main(["export", "--out", str(base)]) == 0
    broken = tmp_path_factory.mktemp("broken") / "onnx"
    shutil.copytree(base, broken)
    meta = json.loads((broken / "model.json").read_text())
    meta[field] = value
    (broken / "model.json").write_text(json.dumps(meta))
    caplog.clear()
    image = next((frames / "cam").iterdir())
    assert main(["query", "--map", str(small_map), "--runtime", "onnxruntime", "--onnx", str(broken), str(image)]) == 2
    line = one_error(caplog)
    assert str(broken / "model.json") in line and words in line


def test_a_killed_exports_temporary_is_removed_by_the_next_export(tmp_path):
    from dhe_vpr_ros.atomic import Scratch
    dead = Scratch(tmp_path, "an export")  # what kill -9 during an export leaves: marked, its lock free
    (dead.path / "backbone.onnx").write_bytes(b"half")
    dead.release(remove=False)
    live = Scratch(tmp_path, "an export")  # another export at work: its lock is held
    lookalike = tmp_path / ".onnx.export-dead1"  # named like an older version's temporary: not ours to remove
    lookalike.mkdir()
    (lookalike / "backbone.onnx").write_bytes(b"mine")
    try:
        assert main(["export", "--out", str(tmp_path / "onnx")]) == 0
        assert not dead.path.exists() and live.path.exists() and (lookalike / "backbone.onnx").read_bytes() == b"mine"
    finally:
        live.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".onnx.export-dead1", "onnx"]


# -- every error of the file system names its path -------------------------------------------
def test_special_and_missing_places_are_named(frames, small_map, tmp_path, caplog):
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dir.json").mkdir()
    cases = [
        (["build-map", "--images", str(frames / "cam"), "-o", str(tmp_path / "m"), "--mask",
          str(tmp_path / "fifo.png")], [str(tmp_path / "fifo.png"), "not a regular file"]),
        ([str(a) for a in evaluate_args(frames, small_map)] + ["--json", str(tmp_path / "dir.json")],
         [str(tmp_path / "dir.json"), "is a folder"]),
        (["info", "--checkpoint", str(tmp_path / "fifo.png")], [str(tmp_path / "fifo.png"), "not a regular file"]),
        (["train", "--images", str(frames / "cam"), "--out", str(tmp_path / "fifo.png")],
         [str(tmp_path / "fifo.png"), "not a new folder"]),
    ]
    for argv, words in cases:
        caplog.clear()
        assert main(argv) == 2, argv
        line = one_error(caplog)
        assert all(w in line for w in words), (argv, line)


def test_a_read_only_file_system_is_named(frames, small_map, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode().strip()}")
    media = tmp_path / "media"
    media.mkdir()
    shutil.copytree(small_map, media / "map")
    script = (f"mount --bind {media} {media} && mount -o remount,bind,ro {media} && "
              f"{sys.executable} -m dhe_vpr_ros build-map --images {frames / 'cam'} -o {media / 'map'} --append; "
              f"echo rc=$?; {sys.executable} -m dhe_vpr_ros {' '.join(map(str, evaluate_args(frames, small_map)))} "
              f"--json {media / 'r.json'}; echo rc=$?")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.stdout.count("rc=2") == 2, proc.stdout + proc.stderr
    errors = error_lines(proc)
    assert len(errors) == 2, proc.stderr
    assert str(media) in errors[0] and str(media) in errors[1]
    assert len(MapDatabase.open(media / "map")) == 8
