# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""build-map under torchrun (issue 28): two processes (gloo, on this CPU) build the map one process
builds, and a rank that dies leaves no map and no temporary behind."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import textured_image
from dhe_vpr_ros.map.database import MapDatabase

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this Python")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(11):  # an odd count: the ranks get different shares
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(textured_image(500 + i, 256)[:192], cv2.COLOR_RGB2BGR))
    (folder / "005.png").write_bytes(b"not an image")  # skipped the same way by both builds
    return folder


def build(tmp_path, out, *args, processes=None):
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dhe_vpr_ros", "build-map", "-o", str(out), *map(str, args)]
    if processes:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(29500 + os.getpid() % 1000),
               "-m", "dhe_vpr_ros", "build-map", "-o", str(out), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_two_processes_build_the_map_one_process_builds(tmp_path, photos):
    for name, processes in (("one", None), ("two", 2)):
        proc = build(tmp_path, tmp_path / name, "--images", photos, "--grids", "float16", "--batch-size", "2",
                     processes=processes)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    one, two = MapDatabase.open(tmp_path / "one"), MapDatabase.open(tmp_path / "two")
    assert [p.source for p in two.places] == [p.source for p in one.places] and len(one) == 10
    assert [p.image_size for p in two.places] == [p.image_size for p in one.places]
    ids = np.arange(len(one))
    assert np.allclose(two.similarities(np.ones(one.identity.global_dim), ids),
                       one.similarities(np.ones(one.identity.global_dim), ids), atol=1e-5)
    assert np.allclose(two.local_features(ids).astype(np.float32), one.local_features(ids).astype(np.float32),
                       atol=2e-3)
    proc = build(tmp_path, tmp_path / "two", "--images", photos, "--append", processes=2)  # --append the same way
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert len(MapDatabase.open(tmp_path / "two")) == 20


def test_a_rank_that_dies_leaves_no_map_and_no_debris(tmp_path, photos):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(200):
        shutil.copy(photos / f"{i % 5:03d}.png", many / f"{i:04d}.png")
    work = tmp_path / "work"
    work.mkdir()
    proc = build(work, work / "map", "--images", many, "--batch-size", "1", processes=2)
    deadline = time.monotonic() + 300
    ranks = []
    while time.monotonic() < deadline and proc.poll() is None:
        ranks = [int(p) for p in subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "dhe_vpr_ros"],
                                                capture_output=True, text=True).stdout.split()]
        if len(ranks) == 2 and _has_loaded(ranks):
            break
        time.sleep(0.2)
    assert len(ranks) == 2, "the two ranks did not start"
    time.sleep(2.0)  # well into the embedding
    os.kill(max(ranks), signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert not (work / "map").exists()
    leftovers = sorted(p.name for p in work.iterdir() if not p.name.startswith("torchelastic_"))
    assert leftovers in ([], [".map.lock"]), leftovers  # a lock file, free, goes with the next writer
    assert not our_frames(out)  # rank 0: one line, the other rank is gone (issue 33)


def _has_loaded(pids) -> bool:
    """Both ranks hold the model (their resident memory has grown past 150 MB)."""
    try:
        return all(int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") > 150e6
                   for p in pids)
    except OSError:
        return False


_OTHER_INPUTS = """
import os, sys
from dhe_vpr_ros.commands.cli import main
folders = sys.argv[1:3]
sys.exit(main(["build-map", "--images", folders[int(os.environ["RANK"])], "-o", sys.argv[3]]))
"""


def test_ranks_given_other_inputs_refuse_before_any_work(tmp_path, photos):
    """Two machines of one launch with different copies of the images would mix them into one map."""
    other = tmp_path / "other"
    shutil.copytree(photos, other)
    (other / "010.png").unlink()
    launcher = tmp_path / "launch.py"
    launcher.write_text(_OTHER_INPUTS)
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(29600 + os.getpid() % 1000),
                           str(launcher), str(photos), str(other), str(tmp_path / "map")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "map").exists()
    assert "the torchrun ranks were given different arguments and inputs" in proc.stdout + proc.stderr
    assert not our_frames(proc.stdout + proc.stderr)


def our_frames(output: str) -> list[str]:
    """Traceback lines from the package's code (torchrun prints a report of its own when a rank fails)."""
    return [line for line in output.splitlines() if line.strip().startswith("File ") and "dhe_vpr_ros" in line]
