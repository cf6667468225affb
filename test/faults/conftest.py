# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The matrix's inputs (made once) and its isolation: every test's temporary folder, spills and cache are
inside its own tmp_path, and a check after each test that nothing of the package's appeared outside it
(in the system's temporary folder or the user's cache)."""
import os
import tempfile
from pathlib import Path

import pytest

from dhe_vpr_ros.atomic import Scratch

from .matrix import make_inputs

SYSTEM_TMP = Path(tempfile.gettempdir())
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dhe_vpr_ros"


def _ours_outside() -> set[str]:
    """Entries of the package's in the system's temporary folder and the user's cache."""
    found = {str(p) for p in SYSTEM_TMP.iterdir() if Scratch.is_ours(p) or p.name.endswith(".lock")
             or p.name.startswith((".grids-", ".map.tmp"))}
    if USER_CACHE.exists():
        found |= {str(p) for p in USER_CACHE.rglob("*")}
    return found


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(autouse=True)
def inside_tmp_path(tmp_path, monkeypatch):
    before = _ours_outside()
    for name in ("TMPDIR", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, str(tmp_path / ("tmp" if name == "TMPDIR" else "cache")))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    yield
    assert _ours_outside() == before, "the test left something of the package's outside its tmp_path"
