"""Runs `run_compare` on a tiny run for tests/test_compare.py, which kills this process mid-way.

After its first finished training the worker sleeps, so the test's SIGKILL always lands between
trainings or inside the next one (argv[1]: the run directory)."""

import sys
import time

import stg.compare.run as compare_run
from stg.runs.rundir import RunDir
from tiny import tiny_taskset

real = compare_run._finish


def slow_finish(*args, **kwargs):
    record = real(*args, **kwargs)
    time.sleep(60)
    return record


compare_run._finish = slow_finish
compare_run.run_compare(RunDir(sys.argv[1]), 2, taskset=tiny_taskset(n_train=48, n_val=16, size=12), seeds=2,
                        epochs=1, controls="mtl,random", features="raw", device="cpu")
