# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Each example of issue 33's table that the matrices (test_writes, test_reads) do not already hold, as the
user met it. (Held there: a full disk naming the path for a new map, --append, static_mask.png, export,
train and convert-checkpoint; kill -9 while train writes last.pt; a 250-byte output name; two exports to
one folder at once; a TIFF declaring 20000 x 20000; a FIFO as a map's manifest under --overwrite; a bag
cut in half; train --resume with views 5, batch_size -3 or lr NaN; a map file from another map; an
export without its hashes. In test_sharded: torchrun ranks given other images, a rank killed during the
gather.)"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from .matrix import REPO, SHIPPED, error_lines, no_traceback, run_here, snapshot


def cli(*argv, unprivileged=False):
    """The command in its own process (``unprivileged``: without root's override of permissions)."""
    command = [sys.executable, "-m", "dhe_vpr_ros", *map(str, argv)]
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is not installed")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ))


def test_an_output_spelled_through_dev_is_the_real_path_and_a_users_file_there_is_kept(inputs, tmp_path):
    """`calibrate -o /dev/shm/mine.yaml` replaced the user's file: a name starting with /dev/ was taken for
    a stream. Now only what stat calls a device or a FIFO is one; /dev/../tmp/x resolves to a plain file."""
    mine = tmp_path / "x" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("my: settings\n")
    spelled = f"/dev/..{mine}"
    code, lines = run_here(["calibrate", "--reference", str(inputs.images), "--queries", str(inputs.images),
                            "--reranker", "none", "--target-precision", "0.5", "-o", spelled])
    assert code == 2 and len(lines) == 1 and "not written by calibrate" in lines[0], lines
    assert mine.read_text() == "my: settings\n"


def test_query_never_removes_a_users_folder_named_like_a_temporary(inputs, tmp_path):
    """`query` on a map deleted a user folder beside it named `.map.tmp-keep`, by its name alone."""
    shutil.copytree(inputs.map, tmp_path / "map")
    keep = tmp_path / ".map.tmp-keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code, lines = run_here(["query", "--map", str(tmp_path / "map"), str(inputs.images / "0000.png")])
    assert code == 0, lines
    assert (keep / "notes.txt").read_text() == "mine"


def test_evaluate_never_removes_files_in_tmpdir_it_did_not_make(inputs, tmp_path):
    """`evaluate` deleted `.grids-*.spill` files in TMPDIR that it did not create."""
    spill = tmp_path / "tmp" / ".grids-abc123.spill"
    spill.write_bytes(b"\0" * 4096)
    code, lines = run_here(["evaluate", "--reference", str(inputs.images), "--queries", str(inputs.images),
                            "--rerankers", "none"])
    assert code == 0, lines
    assert spill.stat().st_size == 4096


@pytest.mark.parametrize("suffix", [".mcap", ".db3"])
def test_a_bag_that_is_a_fifo_is_one_line_not_a_hang(tmp_path, suffix):
    """`build-map --bag` on a FIFO hung (a .db3 ignored SIGTERM)."""
    bag = tmp_path / f"recording{suffix}"
    os.mkfifo(bag)
    proc = cli("build-map", "--bag", bag, "--topic", "/cam", "-o", tmp_path / "map")
    assert proc.returncode == 2 and no_traceback(proc.stderr)
    (line,) = error_lines(proc.stderr)
    assert str(bag) in line and "not a rosbag2 file or folder" in line


def test_a_map_whose_projection_comes_from_another_map_of_the_same_size_is_refused(inputs, tmp_path):
    """Scores fell from 417 to 10 with another map's projection.f32: now the map's write recorded each file."""
    shutil.copytree(inputs.map, tmp_path / "a")
    code, lines = run_here(["build-map", "--images", str(inputs.more), "-o", str(tmp_path / "b")])
    assert code == 0, lines
    shutil.copy(tmp_path / "b" / "projection.f32", tmp_path / "a" / "projection.f32")
    code, lines = run_here(["query", "--map", str(tmp_path / "a"), str(inputs.images / "0000.png")])
    assert code == 2 and len(lines) == 1 and "projection.f32 is not the file this map was written with" in lines[0]


def test_a_map_built_inside_its_own_image_folder_never_adds_its_own_files(inputs, tmp_path):
    """A map inside its images folder appended its own static_mask.png as a place."""
    folder = tmp_path / "images"
    shutil.copytree(inputs.images, folder)
    assert run_here(["build-map", "--images", str(folder), "-o", str(folder / "map")])[0] == 0
    code, lines = run_here(["build-map", "--images", str(folder), "-o", str(folder / "map"), "--append"])
    assert code == 0, lines
    from dhe_vpr_ros.map.database import MapDatabase
    sources = [p.source for p in MapDatabase.open(folder / "map").places]
    assert len(sources) == 8 and not any("static_mask" in s for s in sources), sources


def test_what_a_folder_of_images_cannot_give_is_said_with_a_count(inputs, tmp_path):
    """An unreadable subfolder and a `*.jpg` link to nothing were left out without a word."""
    folder = tmp_path / "images"
    shutil.copytree(inputs.images, folder)
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    locked = folder / "locked"
    locked.mkdir()
    shutil.copy(inputs.images / "0000.png", locked / "inside.png")
    locked.chmod(0)
    try:
        proc = cli("build-map", "--images", folder, "-o", tmp_path / "map", unprivileged=True)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if "left out" in line]
    assert said and "dangling.jpg" in said[0] and "locked" in said[0], said


@pytest.mark.parametrize("values", ["0", "-5", "1,1", "5,1", "x"])
def test_recall_values_are_options_checked_as_such(values, inputs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_here(["evaluate", "--reference", str(inputs.images), "--queries", str(inputs.images),
                  "--recall-values", values])
    assert exit_info.value.code == 2
    assert "--recall-values" in capsys.readouterr().err


def test_a_seed_no_generator_takes_names_its_option(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_here(["train", "--images", str(inputs.images), "--out", str(tmp_path / "run"), "--seed", str(2 ** 64)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "out of range" in err


def test_an_export_without_its_hashes_and_a_truncated_graph_is_one_line(tmp_path):
    """model.json without files_sha256 and a truncated backbone.onnx: a KeyError traceback."""
    assert run_here(["export", "--out", str(tmp_path / "onnx"), "--checkpoint", str(SHIPPED)])[0] == 0
    meta = json.loads((tmp_path / "onnx" / "model.json").read_text())
    del meta["files_sha256"]
    (tmp_path / "onnx" / "model.json").write_text(json.dumps(meta))
    graph = tmp_path / "onnx" / "backbone.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    before = snapshot(tmp_path / "onnx")
    proc = cli("info", "--checkpoint", SHIPPED)  # (reads nothing of it: the export is for query)
    assert proc.returncode == 0
    proc = cli("query", "--map", tmp_path / "nomap", "--runtime", "onnxruntime", "--onnx", tmp_path / "onnx", graph)
    assert proc.returncode == 2 and no_traceback(proc.stderr)
    (line,) = error_lines(proc.stderr)
    assert "model.json" in line and "files_sha256" in line
    assert snapshot(tmp_path / "onnx") == before
