# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Compact grids (issue 28): format 2 maps store each place's grid 4.6x smaller and answer as float16
maps do; format 1 maps still open and append unchanged; a damaged compact map is one clear error."""
import json
import logging

import numpy as np
import pytest

from dhe_vpr_ros.commands.cli import main
from dhe_vpr_ros.commands.demo import DATA
from dhe_vpr_ros.map.codec import COMPACT, FLOAT16, GridCodec, fit_projection
from dhe_vpr_ros.map.database import MapDatabase
from dhe_vpr_ros.map.format import VERSION, MapError
from dhe_vpr_ros.map.records import Place
from dhe_vpr_ros.method.identity import ModelIdentity

IDENTITY = ModelIdentity("efficientnet_lite0", "abc123", 384, (16, 6, 6), 8)


def random_places(n, seed):
    rng = np.random.default_rng(seed)
    grids = rng.standard_normal((n, 16, 6, 6)) * np.linspace(2, 0.1, 16)[None, :, None, None]  # a few strong axes
    grids /= np.linalg.norm(grids, axis=1, keepdims=True)
    return rng.standard_normal((n, 8)).astype(np.float32), grids.astype(np.float16)


def test_the_codec_keeps_descriptors_and_packs_them_small():
    _, grids = random_places(40, 0)
    codec = GridCodec(COMPACT, 12).fitted(grids)
    assert codec.projection.shape == (12, 16)
    assert np.allclose(codec.projection @ codec.projection.T, np.eye(12), atol=1e-5)  # orthonormal directions
    rows = codec.encode(grids)
    assert rows.shape == (40, 12 * 2 + 12 * 36 // 2) and rows.dtype == np.uint8
    back = codec.decode(rows, (16, 6, 6)).astype(np.float32)
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-2)  # unit cells, as stored grids are
    assert (back * grids.astype(np.float32)).sum(axis=1).mean() > 0.95  # the same directions
    same = GridCodec(FLOAT16)
    assert np.array_equal(same.decode(same.encode(grids), (16, 6, 6)), grids)
    with pytest.raises(ValueError, match="unknown grid codec"):
        GridCodec("zip")
    with pytest.raises(ValueError, match="cannot fit 40 directions"):
        fit_projection(grids, 40)


def test_a_compact_map_appends_without_touching_its_stored_rows(tmp_path):
    db = MapDatabase(IDENTITY, codec=GridCodec(COMPACT, 8))
    db.add(*random_places(10, 1), [Place(-1, f"p{i}") for i in range(10)])
    db.save(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["grids"] == {"codec": COMPACT, "dims": 8}
    assert not (tmp_path / "map" / "local.f16").exists()
    stored = (tmp_path / "map" / "local.pq4").read_bytes()
    opened = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    first = opened.local_features(np.arange(10))
    opened.add(*random_places(3, 2))
    opened.save(tmp_path / "map")
    again = MapDatabase.open(tmp_path / "map", expect=IDENTITY)
    assert len(again) == 13 and again.codec.same_as(opened.codec)
    assert (tmp_path / "map" / "local.pq4").read_bytes()[:len(stored)] == stored  # no second rounding
    assert np.array_equal(again.local_features(np.arange(10)), first)


def test_a_format_1_map_still_opens_and_appends_as_float16(tmp_path):
    db = MapDatabase(IDENTITY)
    db.add(*random_places(4, 3))
    db.save(tmp_path / "map")
    before = (tmp_path / "map" / "local.f16").read_bytes()
    opened = MapDatabase.open(tmp_path / "map")
    opened.add(*random_places(2, 4))
    opened.save(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    assert manifest["version"] == 1 and "grids" not in manifest
    assert (tmp_path / "map" / "local.f16").read_bytes()[:len(before)] == before
    assert sorted(p.name for p in (tmp_path / "map").iterdir()) == sorted(
        ["manifest.json", "global.faiss", "local.f16", "places.jsonl", "cells.f64", "static_mask.png"])


def _damaged(tmp_path, damage):
    db = MapDatabase(IDENTITY, codec=GridCodec(COMPACT, 8))
    db.add(*random_places(5, 5))
    db.save(tmp_path / "map")
    damage(tmp_path / "map")
    return tmp_path / "map"


def _manifest(edit):
    def damage(path):
        data = json.loads((path / "manifest.json").read_text())
        edit(data)
        (path / "manifest.json").write_text(json.dumps(data))
    return damage


@pytest.mark.parametrize("damage,words", [
    (lambda p: (p / "local.pq4").write_bytes(b"\0" * 10), "local.pq4 has 10 bytes"),
    (lambda p: (p / "projection.f32").unlink(), "projection.f32 has 0 bytes"),
    (lambda p: np.full(8 * 16, np.nan, "<f4").tofile(p / "projection.f32"), "not finite"),
    (_manifest(lambda m: m.update(grids={"codec": "zip"})), "codec 'zip'"),
    (_manifest(lambda m: m.update(grids={"codec": COMPACT, "dims": 99})), "dims 99"),
    (_manifest(lambda m: m.pop("grids")), "field 'grids' is missing"),
    (_manifest(lambda m: m.update(version=VERSION + 1)), "newer than this"),
])
def test_a_damaged_compact_map_is_one_clear_error(tmp_path, damage, words):
    path = _damaged(tmp_path, damage)
    with pytest.raises(MapError, match=words):
        MapDatabase.open(path)


def test_build_map_writes_compact_maps_that_answer_like_float16_ones(tmp_path, caplog, capsys):
    """The default map is compact; on the bundled demo it ranks every query's place first as the
    float16 map does; info reports the bytes a place takes."""
    photos = sorted(str(p) for p in (DATA / "queries").glob("*.jpg"))
    firsts = {}
    for grids in ("pca-int4", "float16"):
        out = tmp_path / grids
        args = ["build-map", "--images", str(DATA / "database"), "-o", str(out)]
        assert main(args + ([] if grids == "pca-int4" else ["--grids", grids])) == 0
        capsys.readouterr()
        assert main(["query", "--map", str(out), "--json", *photos]) == 0
        firsts[grids] = [json.loads(line)[0]["place_id"] for line in capsys.readouterr().out.splitlines()]
        assert main(["info", "--map", str(out)]) == 0
        info = capsys.readouterr().out
        assert grids in info and "KB a place" in info
    assert firsts["pca-int4"] == firsts["float16"]
    compact = (tmp_path / "pca-int4" / "local.pq4").stat().st_size
    assert (tmp_path / "float16" / "local.f16").stat().st_size / compact > 4.5
    caplog.clear()  # a float16 map appended to keeps float16, whatever --grids says
    with caplog.at_level(logging.INFO):
        assert main(["build-map", "--images", str(DATA / "queries"), "-o", str(tmp_path / "float16"),
                     "--append"]) == 0
    assert (tmp_path / "float16" / "local.f16").is_file() and not (tmp_path / "float16" / "local.pq4").exists()


def test_a_large_compact_build_waits_compact_on_disk(tmp_path):
    """Past its first 256 places a compact map fits its projection and spills compact rows (a
    million places wait in 28 GB, not 129); what it saves is what it served while building."""
    import os

    from dhe_vpr_ros.map.database import FIT_PLACES
    db = MapDatabase(IDENTITY, codec=GridCodec(COMPACT, 8), spill_dir=str(tmp_path))
    db.add(*random_places(FIT_PLACES - 1, 6))
    assert not db._spill.codec.compact and db.codec.projection is None  # float16 until there are enough
    db.add(*random_places(60, 7))
    assert db._spill.codec.compact and db.codec.projection is not None
    row = db.codec.row_bytes(IDENTITY.local_shape)
    assert os.fstat(db._spill.handle.fileno()).st_size == (FIT_PLACES + 59) * row
    served = db.local_features(np.arange(len(db)))
    db.save(tmp_path / "map")
    assert (tmp_path / "map" / "local.pq4").stat().st_size == len(db) * row
    assert np.array_equal(MapDatabase.open(tmp_path / "map").local_features(np.arange(len(db))), served)
