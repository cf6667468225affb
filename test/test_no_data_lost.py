# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Nothing lost under concurrency and bad data: one test per case of the probe that found
data lost or a traceback (real processes, real maps, real files; each asserts the behaviour)."""
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from conftest import textured_image
from test_build_map import _write_bag  # noqa: I100,I201 (a test module of this suite)

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.image_conversion import ImageConversionError, compressed_to_rgb
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import MapError
from dhe_vpr_ros.map.records import Place, Pose
from dhe_vpr_ros.method.identity import ModelIdentity
from dhe_vpr_ros.ros.parameters import PARAMETERS, ParameterProblem, check_startup

IDENTITY = ModelIdentity("efficientnet_lite0", "abc123", 384, (8, 4, 4), 16)


def random_places(n, seed):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16), dtype=np.float32), rng.random((n, 8, 4, 4)).astype(np.float16)


def one_error(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


_APPENDER = textwrap.dedent("""
    import sys
    import numpy as np
    from dhe_vpr_ros.locks import writer_lock
    from dhe_vpr_ros.map.database import MapDatabase
    from dhe_vpr_ros.map.records import Place
    from dhe_vpr_ros.method.identity import ModelIdentity
    path, tag, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    for r in range(rounds):  # what build-map --append does: lock, open, add, save
        with writer_lock(path, 120):
            db = MapDatabase.open(path)
            db.add(rng.random((3, 16), dtype=np.float32), rng.random((3, 8, 4, 4)).astype(np.float16),
                   [Place(-1, f"{tag}-{r}-{i}") for i in range(3)])
            db.save(path)
""")
_READER = textwrap.dedent("""
    import sys, time
    from dhe_vpr_ros.map.database import MapDatabase
    path, stop = sys.argv[1], sys.argv[2]
    opens = errors = 0
    import os
    while not os.path.exists(stop):
        try:
            db = MapDatabase.open(path)
            assert len(db.places) == len(db) and db.local_features([len(db) - 1]).shape[0] == 1
            opens += 1
        except Exception as exc:
            errors += 1
            print("ERROR", type(exc).__name__, exc, flush=True)
    print("opens", opens, "errors", errors, flush=True)
""")


def test_two_processes_appending_to_one_map_lose_nothing_and_a_reader_never_fails(tmp_path):
    """Case 1 and 8: concurrent appends, and reads while maps are saved."""
    path = tmp_path / "map"
    db = MapDatabase(IDENTITY, spill_dir=str(tmp_path))
    db.add(*random_places(4, 0), [Place(-1, f"start-{i}") for i in range(4)])
    db.save(path)
    rounds = 12
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(path), str(tmp_path / "stop")],
                              stdout=subprocess.PIPE, text=True, env=env)
    writers = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(path), tag, str(rounds)], env=env,
                                stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for w in writers:
        assert w.wait(300) == 0, w.stderr.read()
    (tmp_path / "stop").write_text("")
    out, _ = reader.communicate(timeout=120)
    final = MapDatabase.open(path)
    sources = {p.source for p in final.places}
    expected = {f"{t}-{r}-{i}" for t in "ab" for r in range(rounds) for i in range(3)}
    expected |= {f"start-{i}" for i in range(4)}
    assert sources == expected and len(final) == 4 + 2 * rounds * 3
    assert "errors 0" in out and "ERROR" not in out, out
    assert int(out.split()[1]) > 0  # the reader did read, many times
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map", "stop"]  # no lock file, no temp dir, no spill


def test_two_real_build_map_appends_both_land(tmp_path):
    photos = {}
    for part, seeds in (("a", range(10, 13)), ("b", range(20, 23)), ("c", range(30, 32))):
        photos[part] = tmp_path / part
        photos[part].mkdir()
        for s in seeds:
            cv2.imwrite(str(photos[part] / f"{s}.png"), cv2.cvtColor(textured_image(s, 256)[:192], cv2.COLOR_RGB2BGR))
    assert main(["build-map", "--images", str(photos["c"]), "-o", str(tmp_path / "map")]) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "dhe_vpr_ros", "build-map", "--images", str(photos[p]), "-o",
                               str(tmp_path / "map"), "--append"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for p in "ab"]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert len(MapDatabase.open(tmp_path / "map")) == 8  # 2 + 3 + 3: neither append was lost


def test_a_bag_with_a_nan_pose_skips_that_frame_and_the_map_stays_readable(tmp_path, caplog):
    """Case 2: poses are checked when a place is added, with the rules of reading."""
    _write_bag(tmp_path / "bag", "mcap", False, "odom", nan_pose_at=2)
    first = _write_bag(tmp_path / "good", "mcap", False, "odom")
    assert main(["build-map", "--bag", str(tmp_path / "good"), "--topic", "/cam/image_raw", "--pose-topic", "/odom",
                 "-o", str(tmp_path / "map")]) == 0
    caplog.clear()
    assert main(["build-map", "--bag", str(tmp_path / "bag"), "--topic", "/cam/image_raw", "--pose-topic", "/odom",
                 "-o", str(tmp_path / "map"), "--append"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert any("/cam/image_raw@" in w and "position" in w and "not finite" in w for w in warnings), warnings
    db = MapDatabase.open(tmp_path / "map")  # every open still works
    assert len(db) == len(first) + 5 and all(np.isfinite(p.pose.position).all() for p in db.places)
    with pytest.raises(MapError, match="position"):  # the same rule at the API: nothing added
        bad = Place(-1, "api", 1, Pose("odom", (float("nan"), 0.0, 0.0)))
        db.add(np.ones((1, db.identity.global_dim), np.float32), np.zeros((1, *db.identity.local_shape), np.float16),
               [bad])
    assert len(db) == len(first) + 5


def test_resume_writes_only_into_the_folder_it_is_given(tmp_path):
    """Case 3: a copied run resumes in the copy; the original is untouched."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        cv2.imwrite(str(photos / f"{i}.png"), cv2.cvtColor(textured_image(60 + i, 256)[:192], cv2.COLOR_RGB2BGR))
    args = ["--images", str(photos), "--batch-size", "2", "--val-fraction", "0.25", "--no-tensorboard",
            "--val-top-k", "2", "--warp-repeats", "1"]
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1", *args]) == 0
    shutil.copytree(tmp_path / "run", tmp_path / "moved")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    assert main(["train", "--out", str(tmp_path / "moved"), "--epochs", "2", "--resume", *args]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    lines = [len((tmp_path / d / "history.jsonl").read_text().splitlines()) for d in ("run", "moved")]
    assert lines[1] == lines[0] + 1  # the copy went on by one epoch; the original did not
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["out"] == str(tmp_path / "moved")


def test_commands_never_replace_what_the_user_wrote(tmp_path, caplog):
    """Cases 4 and 5: demo --out, convert-checkpoint, train --out."""
    user = tmp_path / "user"
    (user / "session_bag").mkdir(parents=True)
    (user / "session_bag" / "important.db3").write_bytes(b"mine")
    (user / "summary.json").write_text('{"mine": 1}')
    (user / "config.json").write_text('{"mine": 2}')
    snapshot = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    for argv, reason in ((["demo", "--out", str(user)], "did not write"),
                         (["train", "--images", str(tmp_path), "--out", str(user)], "not a new folder"),
                         (["convert-checkpoint", str(tmp_path / "x.pt"), str(user / "summary.json")],
                          "already exists")):
        caplog.clear()
        assert main(argv) == 2, argv
        assert reason in one_error(caplog)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == snapshot


@pytest.mark.parametrize("argv,reason", [
    (["build-map", "--images", ".", "-o", "m", "--min-interval-sec", "nan"], "not a finite number"),  # case 7
    (["build-map", "--images", ".", "-o", "m", "--min-distance-m", "-1"], "out of range"),
    (["query", "--map", "m", "--refine-rounds", "1000000000", "x.png"], "at most 20"),  # case 11
    (["train", "--images", ".", "--out", "o", "--batch-size", "0"], "out of range"),  # case 13
    (["train", "--images", ".", "--out", "o", "--difficulty", "nan"], "not a finite number"),
    (["train", "--images", ".", "--out", "o", "--epochs", "-1"], "out of range"),  # case 16
    (["evaluate", "--reference", ".", "--queries", ".", "--sequence-length", "0"], "out of range"),
    (["calibrate", "--reference", ".", "--queries", ".", "-o", "x", "--target-precision", "1.5"], "out of range"),
    (["build-map", "--images", ".", "-o", "m", "--static-threshold", "1.5"], "out of range"),
    (["build-map", "--images", ".", "-o", "m", "--roi", "0", "0", "0", "nan"], "not a finite number"),
])
def test_numeric_options_are_range_checked_in_one_line(argv, reason, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and reason in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_png_declaring_64_megapixels_is_refused_before_it_is_decoded(tmp_path):
    """Case 9: the limit is checked from the header; the decoded size never exists (peak memory)."""
    big = np.zeros((8000, 8000), np.uint16)
    ok, buffer = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    (tmp_path / "big.png").write_bytes(buffer.tobytes())
    with pytest.raises(ImageConversionError, match="over the limit"):
        compressed_to_rgb("png", buffer.ravel())
    code = textwrap.dedent(f"""
        import resource
        from dhe_vpr_ros.image_conversion import ImageConversionError, compressed_to_rgb
        data = open({str(tmp_path / 'big.png')!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            compressed_to_rgb("png", data)
        except ImageConversionError:
            pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    grown_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert grown_kib < 20 * 1024, grown_kib  # decoding would take 128 MB (16 bit) plus 192 MB (RGB)


def test_a_killed_process_leaves_no_spilled_grids_in_the_temp_folder(tmp_path):
    """Case 10: grids added in memory (a node's keyframes, a build) wait in an unnamed file."""
    script = textwrap.dedent("""
        import time
        import numpy as np
        from dhe_vpr_ros.map.database import MapDatabase
        from dhe_vpr_ros.method.identity import ModelIdentity
        db = MapDatabase(ModelIdentity("efficientnet_lite0", "abc123", 384, (64, 24, 24), 16))
        db.add(np.random.rand(50, 16).astype("float32"), np.ones((50, 64, 24, 24), "float16"))
        print("spilled", flush=True)
        time.sleep(60)
    """)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.stdout.readline().strip() == "spilled"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp.iterdir()) == []


def test_named_spills_of_gone_processes_are_removed_and_a_live_one_is_kept(tmp_path):
    """Case 10 where a spill has a name (a file system without O_TMPFILE): the next map that spills into
    that folder removes the dead ones (marked as this package's), never one a process still holds, and
    never a file that only looks like one (issue 33: evaluate removed `.grids-*.spill` files it did not make)."""
    from dhe_vpr_ros.atomic import Scratch
    dead = Scratch(tmp_path, "spilled rows")
    (dead.path / "rows").write_bytes(b"\0" * 4096)
    dead.release(remove=False)
    live = Scratch(tmp_path, "spilled rows")
    lookalike = tmp_path / ".grids-dead.spill"
    lookalike.write_bytes(b"\0" * 4096)
    try:
        db = MapDatabase(ModelIdentity("efficientnet_lite0", "abc123", 384, (8, 4, 4), 16), spill_dir=str(tmp_path))
        db.add(np.random.rand(2, 16).astype("float32"), np.ones((2, 8, 4, 4), "float16"))
        assert not dead.path.exists() and live.path.exists() and lookalike.stat().st_size == 4096
        assert db.local_features([1]).shape == (1, 8, 4, 4)
    finally:
        live.release()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_a_bag_cut_in_half_is_one_clear_line(tmp_path, caplog, storage):
    """Case 12."""
    _write_bag(tmp_path / "bag", storage, False, "odom")
    data_file = next(p for p in (tmp_path / "bag").iterdir() if p.suffix in (".mcap", ".db3"))
    data = data_file.read_bytes()
    data_file.write_bytes(data[:len(data) // 2])
    assert main(["build-map", "--bag", str(tmp_path / "bag"), "--topic", "/cam/image_raw",
                 "-o", str(tmp_path / "map")]) == 2
    assert "cannot read the bag" in one_error(caplog) and not (tmp_path / "map").exists()


def test_an_empty_ros_argument_value_is_a_cannot_start_line():
    """Case 14: `-p map_path:=`."""
    env = {**os.environ, "ROS_DOMAIN_ID": "97", "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    proc = subprocess.run([sys.executable, "-m", "dhe_vpr_ros", "node", "--ros-args", "-p", "map_path:="],
                          capture_output=True, text=True, timeout=120, env=env)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text
    assert len([ln for ln in text.splitlines() if "cannot start" in ln]) == 1 and "map_path" in text


def test_a_full_disk_during_a_save_names_the_map_and_keeps_the_old_one(tmp_path):
    """Case 15: a write that fails (here: the file-size limit, as a full disk) names the path."""
    path = tmp_path / "map"
    db = MapDatabase(IDENTITY, spill_dir=str(tmp_path))
    db.add(*random_places(4, 0))
    db.save(path)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from dhe_vpr_ros.map.database import MapDatabase
        from dhe_vpr_ros.map.format import MapError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        db = MapDatabase.open({str(path)!r})
        db.add(np.random.rand(4000, 16).astype("float32"), np.ones((4000, 8, 4, 4), "float16"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            db.save({str(path)!r})
        except MapError as exc:
            print(exc)
            sys.exit(2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 2 and f"cannot write the map {path}" in proc.stdout, proc.stdout + proc.stderr
    assert len(MapDatabase.open(path)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


def test_a_directory_where_a_file_is_expected_is_named(tmp_path, caplog):
    (tmp_path / "a_file").write_text("x")
    assert main(["convert-checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "a_file" / "out.pt")]) == 2
    assert str(tmp_path) in one_error(caplog)
    from dhe_vpr_ros.atomic import WriteError, atomic_write
    (tmp_path / "dir").mkdir()
    with pytest.raises(WriteError) as info, atomic_write(tmp_path / "dir") as handle:
        handle.write(b"x")
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path / "dir")


def test_a_node_map_appended_by_another_process_is_not_overwritten_on_save(tmp_path):
    """The node's save (PlaceRecognizer.save -> MapDatabase.save) after another writer."""
    path = tmp_path / "map"
    db = MapDatabase(IDENTITY, spill_dir=str(tmp_path))
    db.add(*random_places(4, 0))
    db.save(path)
    node_copy = MapDatabase.open(path)
    node_copy.add(*random_places(1, 1), [Place(-1, "keyframe")])
    other = MapDatabase.open(path)
    other.add(*random_places(2, 2), [Place(-1, "other-0"), Place(-1, "other-1")])
    other.save(path)
    with pytest.raises(MapError, match="changed by another process"):
        node_copy.save(path)
    assert [p.source for p in MapDatabase.open(path).places][-2:] == ["other-0", "other-1"]
    node_copy.save(tmp_path / "elsewhere")  # a new path is fine
    params = {name: spec.default for name, spec in PARAMETERS.items()}
    with pytest.raises(ParameterProblem, match="save_map_path"):  # and a node is told at startup
        check_startup({**params, "add_keyframes": True, "save_map_path": str(path)})
    check_startup({**params, "map_path": str(path), "save_map_path": str(path)})
