"""Threads that fit the cores other work leaves free, and the user's own setting kept."""

import os
import subprocess
import sys


def test_fair_threads_leave_the_busy_cores_to_the_work_already_running():
    from netcompress.process import busy_cores, fair_threads, usable_cores

    assert [fair_threads(cores=4, busy=b) for b in (0.0, 0.4, 1.0, 2.6, 3.9, 8.0)] == [4, 4, 3, 1, 1, 1]
    assert 1 <= fair_threads() <= usable_cores() <= (os.cpu_count() or 1)
    assert 0.0 <= busy_cores(0.05) <= len(os.sched_getaffinity(0)) + 1e-6


def test_the_cli_keeps_the_users_thread_setting(tmp_path):
    code = "import torch; from netcompress.cli.common import set_threads; set_threads(None); print(torch.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "1"
    code = "import torch; from netcompress.cli.common import set_threads; set_threads(3); print(torch.get_num_threads())"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "3"
