# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: deterministic seeds, small synthetic images with known structure, and torch's
own caches kept inside the test run's temporary folder."""
import os

import cv2
import numpy as np
import pytest
import torch


def _environment_pointing_into(name: str, folder):
    """Set ``name`` to ``folder`` for the session, then restore what it was."""
    saved = os.environ.get(name)
    os.environ[name] = str(folder)
    yield
    if saved is None:
        del os.environ[name]
    else:
        os.environ[name] = saved


@pytest.fixture(autouse=True, scope="session")
def _torch_caches_in_the_test_folder(tmp_path_factory):
    """An optimizer step loads torch's compiler, which makes /tmp/torchinductor_USER: keep it (and
    what subprocesses make) under pytest's temporary folder instead."""
    yield from _environment_pointing_into("TORCHINDUCTOR_CACHE_DIR", tmp_path_factory.mktemp("torchinductor"))


@pytest.fixture(autouse=True, scope="session")
def _user_cache_in_the_test_folder(tmp_path_factory):
    """``export`` writes to the user's cache folder and ``runtime: auto`` reads it: point it into
    pytest's temporary folder, so that an export on the machine never changes what a test runs."""
    yield from _environment_pointing_into("XDG_CACHE_HOME", tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    cv2.setRNGSeed(0)


def textured_image(seed: int, size: int = 384) -> np.ndarray:
    """An RGB uint8 image of random coloured shapes on a noise background: plenty of
    distinctive local structure, made here, so tests need no downloaded photos."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        r = int(rng.integers(8, size // 6))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, colour, -1)
        else:
            cv2.rectangle(img, (x, y), (x + r, y + int(rng.integers(8, size // 6))), colour, -1)
    return img


@pytest.fixture
def make_image():
    return textured_image
