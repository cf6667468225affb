# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The thread decision (issue 26): the free cores of what the process may use, a cgroup quota
read from a real file tree, the load beside measured from /proc/stat, and the user's count winning."""
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from dhe_vpr_ros.runtime.threads import (CpuSample, ThreadGovernor, busy_beside, choose_threads, cpu_quota,
                                         sample_cpus)


@pytest.mark.parametrize("cpus, quota, beside, requested, expected", [
    (2, None, 0.0, None, 2),  # an idle 2-core robot: both cores
    (2, None, 1.0, None, 1),  # one busy neighbour: one thread, never a team waiting for a descheduled thread
    (2, None, 2.0, None, 1),  # every core busy: still one
    (2, None, 0.2, None, 2),  # a neighbour using a fifth of a core does not take it away
    (2, None, 0.8, None, 1),
    (16, None, 0.0, None, 4),  # at most 4 on a big machine
    (16, 2.5, 0.0, None, 2),  # a cgroup quota of 2.5 CPUs on 16 allowed: 2
    (16, 0.5, 0.0, None, 1),
    (8, None, 5.0, None, 3),
    (2, None, 1.0, 6, 6),  # the user's --threads wins, whatever the load
])
def test_the_thread_count_is_the_free_cores_unless_the_user_gives_one(cpus, quota, beside, requested, expected):
    assert choose_threads(cpus, quota, beside, requested) == expected


def test_a_cgroup_quota_is_read_from_v2_and_v1_trees_the_tightest_wins(tmp_path):
    membership = tmp_path / "cgroup"
    membership.write_text("0::/robot/vpr\n")
    (tmp_path / "robot" / "vpr").mkdir(parents=True)
    (tmp_path / "robot" / "vpr" / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, membership) is None
    (tmp_path / "robot" / "cpu.max").write_text("150000 100000\n")  # the parent limits the child
    assert cpu_quota(tmp_path, membership) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu" / "docker" / "abc").mkdir(parents=True)
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    membership.write_text("4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    assert cpu_quota(v1, membership) == 0.5
    membership.write_text("not a cgroup file")
    assert cpu_quota(v1, membership) is None


def test_busy_beside_subtracts_this_process_own_work():
    before = CpuSample(busy=0, total=400, own=10.0, wall=100.0, cpus=2)  # 2 CPUs, 2 s of 100 Hz ticks
    after = CpuSample(busy=300, total=800, own=11.0, wall=102.0, cpus=2)  # 1.5 CPUs busy, 0.5 of them ours
    assert busy_beside(before, after) == pytest.approx(1.0)
    assert busy_beside(after, after) == 0.0


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc/stat")
def test_a_real_busy_neighbour_is_seen_and_the_governor_follows_it():
    """A real process spinning on one core beside: measured from /proc/stat, and the inference
    thread's torch threads drop to the free cores (applied in that thread, where OpenMP reads them)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    governor = ThreadGovernor(period=0.0)
    seen = {}

    def worker():
        seen["start"] = governor.adjust()
        start = sample_cpus()
        neighbour = multiprocessing.get_context("fork").Process(target=_spin, args=(3.0,))
        neighbour.start()
        time.sleep(1.0)
        seen["beside"] = busy_beside(start, sample_cpus())
        seen["during"] = governor.adjust()
        seen["torch"] = torch.get_num_threads()
        neighbour.join()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert seen["beside"] > 0.6, seen
    assert seen["during"] <= len(os.sched_getaffinity(0)) - 1 and seen["torch"] == seen["during"], seen


def test_a_fixed_count_is_never_changed_by_the_governor():
    governor = ThreadGovernor(requested=1, period=0.0)
    assert governor.adjust() == 1 and governor.adjust() == 1


def test_the_count_is_applied_to_the_thread_that_runs_the_work():
    """OpenMP's thread count belongs to each thread: a count set in the main thread does not reach
    another (what the node's inference thread used to run with); the governor sets it there. Read
    with omp_get_max_threads of the libgomp torch loaded, called in each thread."""
    code = ("import ctypes, threading, torch\n"
            "from dhe_vpr_ros.runtime.threads import ThreadGovernor\n"
            "gomp = ctypes.CDLL(next(l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l))\n"
            "torch.set_num_threads(1)\n"
            "out = [gomp.omp_get_max_threads()]\n"
            "def plain(): out.append(gomp.omp_get_max_threads())\n"
            "def governed(): ThreadGovernor(requested=1).adjust(); out.append(gomp.omp_get_max_threads())\n"
            "for f in (plain, governed):\n"
            "    t = threading.Thread(target=f); t.start(); t.join()\n"
            "print(*out)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "OMP_NUM_THREADS": ""}).stdout.split()
    if not out:
        pytest.skip("torch here has no libgomp")
    cores = str(len(os.sched_getaffinity(0)))
    assert out == ["1", cores, "1"]  # main thread 1; a new thread the default (every core); governed 1


def test_numpys_blas_follows_the_count():
    """NumPy's OpenBLAS is process-wide and starts with every core: the settings and the governor
    set it to the count they chose (a fresh process, so nothing here is changed)."""
    code = ("import numpy\n"
            "from threadpoolctl import threadpool_info\n"
            "from dhe_vpr_ros.runtime.threads import ThreadGovernor, configure_threads\n"
            "def blas(): return sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'})\n"
            "before = blas()\n"
            "settings = configure_threads(1)\n"
            "after = blas()\n"
            "ThreadGovernor(requested=2).adjust()\n"
            "print(before, after, settings.blas, blas())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""})
    assert out.returncode == 0, out.stderr
    cores = len(os.sched_getaffinity(0))
    assert out.stdout.strip() == f"[{cores}] [1] 1 [2]", out.stdout
