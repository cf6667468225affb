# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The fault matrix as data: the commands that write (``WRITERS``), the inputs they share (``Inputs``), and
how a command is run and judged (in this process, or as its own process for kills and signals).

A new command is one ``Writer`` row; a new fault is one test function over ``WRITERS`` (test_writes) or
one entry of a reader's lies (test_reads). The promise every row is held to: the command ends in one
error line that names the path (exit 2), or succeeds; nothing of the user's is replaced or deleted, an
older output of the command is intact, nothing it made is left behind after the next run, and nothing
outside the test's own folder is touched.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2

import dhe_vpr_ros
from conftest import textured_image
from dhe_vpr_ros import syscalls
from dhe_vpr_ros.atomic import Scratch
from dhe_vpr_ros.commands.cli import main

REPO = Path(__file__).resolve().parents[2]
SHIPPED = dhe_vpr_ros.DATA_DIR / "default_model.pt"


@dataclass(frozen=True)
class Inputs:
    """What the commands read, made once: ``images`` (4 frames), ``more`` (2 other frames), ``map`` (of
    ``images``), ``run`` (a finished 1-epoch training run on ``images``)."""

    images: Path
    more: Path
    map: Path  # noqa: A003 - the map of the images
    run: Path


def make_inputs(root: Path) -> Inputs:
    images, more = root / "images", root / "more"
    for folder, first, count in ((images, 700, 4), (more, 800, 2)):
        folder.mkdir(parents=True)
        for i in range(count):
            frame = cv2.resize(textured_image(first + i, 256), (160, 120))
            cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert main(["build-map", "--images", str(images), "-o", str(root / "map")]) == 0
    assert main(TRAIN(images, root / "run")) == 0
    return Inputs(images, more, root / "map", root / "run")


def TRAIN(images: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--images", str(images), "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--val-fraction", "0.25", "--no-tensorboard", "--val-top-k", "2", "--warp-repeats", "1", *extra]


@dataclass(frozen=True)
class Writer:
    """A command that writes ``out`` (a file or a folder); ``prepare`` puts an older output of the
    command there first (what ``--append`` and ``--resume`` continue, and must keep intact on a fault)."""

    name: str
    kind: str
    argv: Callable[[Inputs, Path], list[str]]
    prepare: Callable[[Inputs, Path], None] | None = None


def _copy(source_of: Callable[[Inputs], Path]) -> Callable[[Inputs, Path], None]:
    def prepare(inputs: Inputs, out: Path) -> None:
        shutil.copytree(source_of(inputs), out, symlinks=True)
    return prepare


def _evaluate(inputs: Inputs, *output: str) -> list[str]:
    return ["evaluate", "--reference", str(inputs.images), "--queries", str(inputs.images), "--map", str(inputs.map),
            "--rerankers", "none", *output]


WRITERS = [
    Writer("build-map", "folder", lambda i, o: ["build-map", "--images", str(i.images), "-o", str(o)]),
    Writer("build-map --append", "folder", lambda i, o: ["build-map", "--images", str(i.more), "-o", str(o),
                                                         "--append"], _copy(lambda i: i.map)),
    Writer("export", "folder", lambda i, o: ["export", "--out", str(o)]),
    Writer("calibrate", "file", lambda i, o: ["calibrate", "--reference", str(i.images), "--queries", str(i.images),
                                              "--reranker", "none", "--target-precision", "0.5", "-o", str(o)]),
    Writer("evaluate --json", "file", lambda i, o: _evaluate(i, "--json", str(o))),
    Writer("evaluate --plot", "file", lambda i, o: _evaluate(i, "--plot", str(o))),
    Writer("train", "folder", lambda i, o: TRAIN(i.images, o)),
    Writer("train --resume", "folder", lambda i, o: TRAIN(i.images, o, "--resume", "--epochs", "2"),
           _copy(lambda i: i.run)),
    Writer("convert-checkpoint", "file", lambda i, o: ["convert-checkpoint", str(SHIPPED), str(o)]),
]


# -- running a command ---------------------------------------------------------------------------------
class Errors(logging.Handler):
    """The error lines a command logs (what a user sees)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_here(argv: list[str], fault: str | None = None) -> tuple[int, list[str]]:
    """(exit code, error lines) of a command run in this process; ``fault`` (``ENOSPC``, ``EIO``): at the
    Nth write of the door from now, as ``N:KIND`` (N counted from this call)."""
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        if fault:
            n, kind = fault.split(":")
            os.environ["DHE_VPR_ROS_FAULT"] = f"{syscalls._writes + int(n)}:{kind}"
        code = main(argv)
    finally:
        os.environ.pop("DHE_VPR_ROS_FAULT", None)
        logging.getLogger().removeHandler(errors)
    return code, errors.lines


def writes_of(argv: list[str]) -> int:
    """How many writes through the door a clean run of ``argv`` makes (it must succeed)."""
    before = syscalls._writes
    code, lines = run_here(argv)
    assert code == 0, lines
    return syscalls._writes - before


def run_apart(argv: list[str], env: dict, fault: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """The command as its own process (``fault`` ``N:KILL`` / ``N:TERM`` at the Nth write of the process)."""
    env = {**env, **({"DHE_VPR_ROS_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "dhe_vpr_ros", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("[ERROR]", "[CRITICAL]"))]


# -- judging -------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict:
    """Every entry under ``folder`` (links as links) with its bytes and mode: to prove nothing changed."""
    out = {}
    if not folder.exists() and not folder.is_symlink():
        return out
    if folder.is_file():
        return {".": (folder.read_bytes(), os.lstat(folder).st_mode)}
    for path in sorted(folder.rglob("*")):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            out[str(path.relative_to(folder))] = (path.read_bytes(), info.st_mode)
        elif stat.S_ISLNK(info.st_mode):
            out[str(path.relative_to(folder))] = ("link", os.readlink(path))
        else:
            out[str(path.relative_to(folder))] = ("entry", info.st_mode)
    return out


def debris(root: Path) -> list[Path]:
    """What this package left anywhere under ``root``: temporaries and writer locks."""
    return [p for p in root.rglob("*") if Scratch.is_ours(p) or p.name.endswith(".lock")]


def no_traceback(text: str) -> bool:
    return "Traceback" not in text


def killed(proc: subprocess.CompletedProcess, how: int) -> bool:
    return proc.returncode in (-how, 128 + how)


__all__ = ["Errors", "Inputs", "REPO", "SHIPPED", "TRAIN", "WRITERS", "Writer", "debris", "error_lines", "killed",
           "make_inputs", "no_traceback", "run_apart", "run_here", "signal", "snapshot", "writes_of"]
