# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Map database on disk: real FAISS indexes, real memory-mapped files, real processes."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dhe_vpr_ros.atomic import Scratch
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import MapError
from dhe_vpr_ros.map.records import Place, Pose
from dhe_vpr_ros.method.identity import ModelIdentity

IDENTITY = ModelIdentity("efficientnet_lite0", "abc123", 384, (8, 4, 4), 16)


def _random_places(n, seed):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, 16)).astype(np.float32)
    loc = rng.standard_normal((n, 8, 4, 4)).astype(np.float16)
    return g, loc


def _build(path, n=20, seed=0, index_type="flat"):
    db = MapDatabase(IDENTITY, index_type)
    g, loc = _random_places(n, seed)
    places = [Place(0, source=f"img_{i}.jpg", timestamp_ns=1000 + i,
                    pose=Pose("map", (i, 0, 0), (0, 0, 0, 1)),
                    utm=(500000.0 + i, 4e6)) for i in range(n)]
    db.add(g, loc, places)
    db.save(path)
    return g, loc


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_build_reopen_search_and_read_candidates(tmp_path, index_type):
    g, loc = _build(tmp_path / "map", index_type=index_type)
    db = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    assert len(db) == 20
    sims, ids = db.search(g[[3, 7]] * 5.0, k=4)  # scale does not matter: descriptors are normalised
    assert ids[:, 0].tolist() == [3, 7]
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert (sims[:, 0] > sims[:, 1]).all()
    assert np.array_equal(db.local_features([7, 3]), loc[[7, 3]])
    assert db.places[7].source == "img_7.jpg" and db.places[7].timestamp_ns == 1007
    assert db.places[7].pose.position == (7, 0, 0) and db.places[7].utm == (500007.0, 4e6)


def test_append_keeps_old_ids_stable(tmp_path):
    g, loc = _build(tmp_path / "map")
    db = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    g2, loc2 = _random_places(5, seed=1)
    assert db.add(g2, loc2) == [20, 21, 22, 23, 24]
    db.save(tmp_path / "map")
    again = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    assert len(again) == 25
    assert np.array_equal(again.local_features([0, 19, 20, 24]), np.concatenate([loc[[0, 19]], loc2[[0, 4]]]))
    assert again.search(g[[5]], 1)[1][0, 0] == 5 and again.search(g2[[2]], 1)[1][0, 0] == 22
    assert again.places[5].source == "img_5.jpg"
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".map")]  # no temp dirs left


def test_corruptions_raise_clear_errors(tmp_path):
    _build(tmp_path / "map")
    with pytest.raises(MapError, match="built with another model.*backbone"):
        MapDatabase.open(tmp_path / "map", expect=ModelIdentity("cct14", "abc123", 384, (8, 4, 4), 16))
    with pytest.raises(MapError, match="weights_sha256"):
        MapDatabase.open(tmp_path / "map", expect=ModelIdentity("efficientnet_lite0", "zzz", 384, (8, 4, 4), 16))
    with pytest.raises(MapError, match="input_size"):
        MapDatabase.open(tmp_path / "map", expect=ModelIdentity("efficientnet_lite0", "abc123", 320, (8, 4, 4), 16))
    with pytest.raises(MapError, match="no map at"):
        MapDatabase.open(tmp_path / "nothing")

    def variant(name, mutate):
        path = tmp_path / name
        _build(path)
        mutate(path)
        return path

    truncated = variant("truncated", lambda p: os.truncate(p / "local.f16", 100))
    with pytest.raises(MapError, match="truncated or missing"):
        MapDatabase.open(truncated)
    no_index = variant("no_index", lambda p: (p / "global.faiss").unlink())
    with pytest.raises(MapError, match="missing its global index"):
        MapDatabase.open(no_index)

    def newer(p):
        manifest = (p / "manifest.json").read_text().replace('"version": 1', '"version": 7')
        (p / "manifest.json").write_text(manifest)
    with pytest.raises(MapError, match="newer than this"):
        MapDatabase.open(variant("newer", newer))
    corrupt = variant("corrupt_index", lambda p: (p / "global.faiss").write_bytes(b"garbage"))
    with pytest.raises(MapError, match="global.faiss.*corrupt"):
        MapDatabase.open(corrupt)


def test_killed_save_leaves_previous_map_loadable(tmp_path):
    """SIGKILL a real process while it writes a large new version over an existing map."""
    _build(tmp_path / "map")
    script = textwrap.dedent(f"""
        import numpy as np
        from dhe_vpr_ros.map.database import MapDatabase
        from dhe_vpr_ros.method.identity import ModelIdentity
        identity = ModelIdentity("efficientnet_lite0", "abc123", 384, (64, 24, 24), 16)
        db = MapDatabase(identity, spill_dir={str(tmp_path)!r})  # its grids wait in this test's folder
        for _ in range(40):  # ~300 MB of grids: long enough to be killed mid-write
            db.add(np.random.rand(100, 16).astype("float32"), np.ones((100, 64, 24, 24), "float16"))
        db.save({str(tmp_path / "map")!r}, replace=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(Scratch.is_ours(p) and (p / "global.faiss").exists()
                                                  for p in tmp_path.iterdir()):
        assert proc.poll() is None, "the writer finished before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    db = MapDatabase.open(tmp_path / "map", expect=IDENTITY)  # the old map, untouched
    assert len(db) == 20 and db.places[3].source == "img_3.jpg"
    # opening it also removed what the dead writer left beside it
    assert not [p.name for p in tmp_path.iterdir() if p.name != "map"]


_HOLD_SPILL = """
import sys, time
import numpy as np
from dhe_vpr_ros.atomic import Scratch
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.method.identity import ModelIdentity
db = MapDatabase(ModelIdentity("efficientnet_lite0", "abc123", 384, (8, 4, 4), 16), spill_dir=sys.argv[1])
db.add(np.random.rand(3, 16).astype("float32"), np.ones((3, 8, 4, 4), "float16"))
assert db._spill.path is None  # an unnamed file: nothing to see, nothing to leave
held = Scratch(sys.argv[1], "spilled rows")  # what file systems without O_TMPFILE get: marked, locked
print("spilling", flush=True)
time.sleep(120)
"""


def test_leftovers_of_a_dead_writer_go_and_a_live_writers_stay_and_a_users_never_go(tmp_path):
    from dhe_vpr_ros.map.storage import clean_leftovers
    _build(tmp_path / "map")
    users = [tmp_path / ".map.tmp-keep", tmp_path / ".grids-mine.spill"]  # named like old temporaries: not ours
    users[0].mkdir()
    (users[0] / "notes.txt").write_text("mine")
    users[1].write_bytes(b"\0" * 64)
    writer = subprocess.Popen([sys.executable, "-c", _HOLD_SPILL, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "spilling"
        live = [p for p in tmp_path.iterdir() if Scratch.is_ours(p)]
        assert len(live) == 1  # only the named fallback is visible
        dead = Scratch(tmp_path, "a write that was killed")
        dead.release(remove=False)  # its lock is free, as a SIGKILL leaves it
        removed = clean_leftovers((tmp_path / "map").resolve())
        assert removed == [dead.path]
        assert live[0].exists()  # the living writer's temporary is untouched
        MapDatabase.open(tmp_path / "map")
        assert live[0].exists()
    finally:
        writer.kill()
        writer.wait()
    MapDatabase.open(tmp_path / "map")  # the writer is dead now: its temporary goes
    assert not live[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["map", *(p.name for p in users)])
    assert (users[0] / "notes.txt").read_text() == "mine" and users[1].stat().st_size == 64


@pytest.mark.parametrize("umask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_map_files_follow_the_umask_also_after_an_append(tmp_path, umask, dir_mode, file_mode):
    old = os.umask(umask)
    try:
        _build(tmp_path / "map")
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "map").iterdir()}
        assert (tmp_path / "map").stat().st_mode & 0o777 == dir_mode
        assert modes == dict.fromkeys(["global.faiss", "local.f16", "places.jsonl", "manifest.json", "cells.f64",
                                       "static_mask.png"], file_mode)
        db = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
        db.add(*_random_places(2, 5))
        db.save(tmp_path / "map")
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / "map").iterdir()} == {file_mode}
    finally:
        os.umask(old)


def test_save_refuses_what_is_not_a_map_and_deletes_nothing(tmp_path):
    db = MapDatabase(IDENTITY)
    db.add(*_random_places(3, 0))
    user_dir = tmp_path / "photos"
    user_dir.mkdir()
    (user_dir / "a.jpg").write_bytes(b"mine")
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    for target in (user_dir, user_file):
        with pytest.raises(MapError, match="not a dhe_vpr_ros map"):
            db.save(target)
    _build(tmp_path / "map")
    (tmp_path / "map" / "README").write_text("my notes about this map")
    with pytest.raises(MapError, match="also holds files"):
        db.save(tmp_path / "map")
    assert (user_dir / "a.jpg").read_bytes() == b"mine" and user_file.read_text() == "mine"
    assert (tmp_path / "map" / "README").is_file() and len(MapDatabase.open(tmp_path / "map")) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map", "notes.txt", "photos"]


def test_an_ivf_map_is_clustered_when_written_and_keeps_answering(tmp_path):
    """ivf: searched exactly while built, written as inverted lists fitted on its own descriptors;
    reopened it finds what exact search finds (clustered data), skips excluded ids, reads stored
    descriptors back, and places appended later are found."""
    import faiss
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    g = (centres[rng.integers(0, 40, 4000)] + 0.3 * rng.standard_normal((4000, 16))).astype(np.float32)
    loc = rng.standard_normal((4000, 8, 4, 4)).astype(np.float16)
    db = MapDatabase(IDENTITY, "ivf")
    db.add(g, loc)
    assert isinstance(db._index, faiss.IndexFlat)  # exact while in memory
    db.save(tmp_path / "map")
    again = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    assert isinstance(again._index, faiss.IndexIVF) and again._index.nlist > 1
    exact = faiss.IndexFlatIP(16)
    exact.add(g / np.linalg.norm(g, axis=1, keepdims=True))
    queries = g[:200] + 0.1 * rng.standard_normal((200, 16)).astype(np.float32)
    _, truth = exact.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 8)
    _, found = again.search(queries, 8)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(truth, found)])
    assert recall >= 0.95
    first = int(found[0, 0])
    assert first not in again.search(queries[:1], 8, exclude_ids=np.array([first]))[1][0]
    sims, ids = again.search(queries[:1], 1)
    assert np.allclose(again.similarities(queries[0], ids[0]), sims[0], atol=1e-4)
    assert again.add(centres[:3].copy(), loc[:3]) == [4000, 4001, 4002]
    assert again.search(centres[1:2], 1)[1][0, 0] == 4001
    again.save(tmp_path / "map")
    assert len(MapDatabase.open(tmp_path / "map")) == 4003
