# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Every command that writes x every fault (``matrix.WRITERS``): a full disk at each write in turn, kill -9
and SIGTERM at several writes, an output that is a link, a device, a FIFO, on a read-only file system, a
250-byte name, and a second writer at the same time. The promise: one line naming the path (or success),
nothing of the user's replaced or deleted, an older output intact, nothing left after the next run."""
import os
import signal
import subprocess
import sys
import threading

import pytest

from .matrix import (REPO, WRITERS, debris, error_lines, killed, no_traceback, run_apart, run_here, snapshot,
                     writes_of)

IDS = [w.name for w in WRITERS]
# a run folder of ``train`` fills as the run goes (each file written whole): a fault leaves what was
# done, which --resume continues; every other output is all or nothing
INCREMENTAL = {"train", "train --resume"}


def target(writer, tmp_path, name="out"):
    return tmp_path / name / ("out.yaml" if writer.name == "calibrate" else "out.json" if "json" in writer.name
                              else "out.png" if "plot" in writer.name else "out.pt" if "checkpoint" in writer.name
                              else "out")


def prepared(writer, inputs, tmp_path, name="out"):
    out = target(writer, tmp_path, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    if writer.prepare:
        writer.prepare(inputs, out)
    return out


def whole(writer, out) -> bool:
    """Whether ``out`` is a complete output of ``writer``, read back as its readers read it."""
    from dhe_vpr_ros.commands.evaluate import written_by_evaluate
    from dhe_vpr_ros.loop.calibration import MARKER
    from dhe_vpr_ros.map.database import MapDatabase
    from dhe_vpr_ros.method.models.checkpoint import read_checkpoint
    from dhe_vpr_ros.runtime.onnx import load_onnx_model
    readers = {"build-map": MapDatabase.open, "build-map --append": MapDatabase.open, "export": load_onnx_model,
               "calibrate": lambda p: p.read_text().startswith(MARKER) or 1 / 0,
               "evaluate --json": lambda p: written_by_evaluate(p) or 1 / 0,
               "evaluate --plot": lambda p: written_by_evaluate(p) or 1 / 0, "convert-checkpoint": read_checkpoint}
    try:
        readers[writer.name](out)
        return True
    except Exception:
        return False


def held(writer, out, before):
    """The older output (or its absence) is as it was, or the new output is there whole (an atomic output is
    one or the other); a run folder keeps every file of the older run."""
    if writer.name in INCREMENTAL:
        return all(name in snapshot(out) for name in before)
    return snapshot(out) == before or whole(writer, out)


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_full_disk_at_each_write_in_turn(writer, inputs, tmp_path):
    count = writes_of(writer.argv(inputs, prepared(writer, inputs, tmp_path, "clean")))
    assert count >= 1
    for n in range(1, count + 1):
        out = prepared(writer, inputs, tmp_path, f"at{n}")
        before = snapshot(out)
        code, lines = run_here(writer.argv(inputs, out), f"{n}:ENOSPC")
        if code == 0:  # the write was cleanup after the output was in place (an old map version's marker)
            assert not lines and out.exists(), (n, lines)
        else:
            assert code == 2 and len(lines) == 1, (n, lines)
            assert "disk full" in lines[0] and str(tmp_path) in lines[0], (n, lines[0])
            # a failed command changed nothing (a run folder: it keeps what it had)
            assert held(writer, out, before) if writer.name in INCREMENTAL else snapshot(out) == before, n
        assert not debris(out.parent) and not debris(tmp_path / "tmp"), (n, debris(tmp_path))


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_kill_9_at_the_first_and_the_last_write_and_the_next_run_leaves_nothing(writer, inputs, tmp_path):
    count = writes_of(writer.argv(inputs, prepared(writer, inputs, tmp_path, "clean")))
    for n in sorted({1, count}):
        out = prepared(writer, inputs, tmp_path, f"kill{n}")
        before = snapshot(out)
        proc = run_apart(writer.argv(inputs, out), dict(os.environ), f"{n}:KILL")
        assert killed(proc, signal.SIGKILL), (n, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        assert held(writer, out, before), n
        argv = writer.argv(inputs, out)
        if writer.name == "train" and (out / "last.pt").exists():
            argv += ["--resume"]  # the run got as far as its first epoch: continue it
        code, lines = run_here(argv)  # the next run of the command, where the killed one worked
        assert code == 0, (n, lines)
        assert not debris(tmp_path), (n, debris(tmp_path))


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_sigterm_midway_ends_in_one_line_and_keeps_the_older_output(writer, inputs, tmp_path):
    count = writes_of(writer.argv(inputs, prepared(writer, inputs, tmp_path, "clean")))
    out = prepared(writer, inputs, tmp_path, "term")
    before = snapshot(out)
    proc = run_apart(writer.argv(inputs, out), dict(os.environ), f"{count // 2 + 1}:TERM")
    assert no_traceback(proc.stdout + proc.stderr), proc.stderr[-2000:]
    if writer.name in INCREMENTAL:  # training stops cleanly with its state saved (doc/training.md): resumable
        assert proc.returncode == 0 and (out / "last.pt").is_file() and not error_lines(proc.stderr), proc.stderr
    else:
        assert proc.returncode == 130 and error_lines(proc.stderr) == ["[ERROR] dhe_vpr_ros: interrupted"]
    assert held(writer, out, before)
    assert not debris(tmp_path), debris(tmp_path)


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_an_output_that_is_a_link_is_refused_and_neither_link_nor_target_changes(writer, inputs, tmp_path):
    real = prepared(writer, inputs, tmp_path, "real")
    if not real.exists():
        real.write_bytes(b"mine") if writer.kind == "file" else real.mkdir()
    link = target(writer, tmp_path, "link")
    link.parent.mkdir()
    link.symlink_to(real)
    before = snapshot(tmp_path / "real")
    code, lines = run_here(writer.argv(inputs, link))
    assert code == 2 and len(lines) == 1 and str(link) in lines[0], lines
    assert link.is_symlink() and snapshot(tmp_path / "real") == before


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_device_is_a_stream_for_a_file_and_refused_for_a_folder(writer, inputs, tmp_path):
    code, lines = run_here(writer.argv(inputs, "/dev/null"))
    if writer.kind == "file" and writer.name != "convert-checkpoint":  # (which never writes over what exists)
        assert code == 0, lines
    else:
        assert code == 2 and len(lines) == 1 and "/dev/null" in lines[0], lines
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


@pytest.mark.parametrize("writer", [w for w in WRITERS if w.kind == "file" and w.name != "convert-checkpoint"],
                         ids=[w.name for w in WRITERS if w.kind == "file" and w.name != "convert-checkpoint"])
def test_a_fifo_is_a_stream_with_a_reader_and_one_line_without(writer, inputs, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, lines = run_here(writer.argv(inputs, fifo))  # nobody reads it: refused at once, never a hang
    assert code == 2 and len(lines) == 1 and str(fifo) in lines[0] and "no process reads it" in lines[0], lines
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    proc = run_apart(writer.argv(inputs, fifo), dict(os.environ))
    reader.join(60)
    assert proc.returncode == 0 and got and len(got[0]) > 0, proc.stderr[-2000:]
    assert fifo.is_fifo()


def _read_only(tmp_path):
    """A read-only file system (a tmpfs mounted read-only) at tmp_path/ro, or skip where it cannot be mounted."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a read-only file system needs root's mount here")
    return ro


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_read_only_file_system_is_one_line(writer, inputs, tmp_path):
    ro = _read_only(tmp_path)
    try:
        out = ro / target(writer, tmp_path).name
        code, lines = run_here(writer.argv(inputs, out))
        assert code == 2 and len(lines) == 1 and str(ro) in lines[0], lines
        assert "read-only" in lines[0] or "not writable" in lines[0], lines
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_250_byte_name_is_written_and_nothing_is_lost(writer, inputs, tmp_path):
    suffix = target(writer, tmp_path).suffix
    out = tmp_path / "long" / ("n" * (250 - len(suffix)) + suffix)
    out.parent.mkdir()
    if writer.prepare:
        writer.prepare(inputs, out)
    code, lines = run_here(writer.argv(inputs, out))
    assert code == 0, lines
    assert out.exists() and not debris(tmp_path)


@pytest.mark.parametrize("writer", WRITERS, ids=IDS)
def test_a_second_writer_at_the_same_time_loses_nothing(writer, inputs, tmp_path):
    out = prepared(writer, inputs, tmp_path)
    env = dict(os.environ)
    argv = [sys.executable, "-m", "dhe_vpr_ros", *writer.argv(inputs, out)]
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] in (0, 2), results  # one wins; the other wins too, or is one line
    for code, err in results:
        assert no_traceback(err)
        if code == 2:
            assert len(error_lines(err)) == 1 and str(out) in err, err
    assert out.exists() and not debris(tmp_path)


# -- the node's ~/save_map: the recogniser's save of a map grown with keyframes, over the map it opened ---
_GROW_AND_SAVE = """
import sys
import cv2
from dhe_vpr_ros.loop.policy import LoopPolicy
from dhe_vpr_ros.loop.recognizer import PlaceRecognizer
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.method.localizer import Localizer
from dhe_vpr_ros.runtime.loading import load_model
model, _ = load_model(None)
database = MapDatabase.open(sys.argv[1])
recognizer = PlaceRecognizer(Localizer(model, database, top_k=2),
                             LoopPolicy(add_keyframes=True, keyframe_min_interval_sec=0, min_time_gap_sec=0))
recognizer.recognize(cv2.cvtColor(cv2.imread(sys.argv[2]), cv2.COLOR_BGR2RGB), 10 ** 18)
print(recognizer.save(sys.argv[1]))
"""


def _grow_and_save(inputs, out, fault=None):
    return subprocess.run([sys.executable, "-c", _GROW_AND_SAVE, str(out), str(inputs.more / "0000.png")],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, **({"DHE_VPR_ROS_FAULT": fault} if fault else {})})


def test_the_nodes_save_map_against_a_full_disk_at_each_write_and_a_kill(inputs, tmp_path):
    import shutil
    from dhe_vpr_ros.map.database import MapDatabase
    clean = tmp_path / "clean"
    shutil.copytree(inputs.map, clean)
    assert _grow_and_save(inputs, clean).returncode == 0 and len(MapDatabase.open(clean)) == 5
    for n in range(1, 16):
        out = tmp_path / f"at{n}"
        shutil.copytree(inputs.map, out)
        before = snapshot(out)
        proc = _grow_and_save(inputs, out, f"{n}:ENOSPC")
        if proc.returncode == 0:  # past the save's last write
            break
        last = proc.stderr.splitlines()[-1]  # the exception the node logs and counts (its thread goes on)
        assert "disk full" in last and str(tmp_path) in last, proc.stderr[-1500:]
        assert snapshot(out) == before and not debris(tmp_path), n
    else:
        pytest.fail("the save made more writes than tried")
    for n in (1, 6):
        out = tmp_path / f"kill{n}"
        shutil.copytree(inputs.map, out)
        before = snapshot(out)
        assert killed(_grow_and_save(inputs, out, f"{n}:KILL"), signal.SIGKILL)
        assert snapshot(out) == before or len(MapDatabase.open(out)) == 5
        assert _grow_and_save(inputs, out).returncode == 0 and not debris(tmp_path), n
