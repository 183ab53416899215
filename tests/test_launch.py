"""launch/local_multiprocess.py gives every process its own share of the GPUs."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "local_multiprocess", os.path.join(REPO, "launch", "local_multiprocess.py"))
launcher = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launcher)


def test_each_process_gets_its_own_gpus():
  envs = [launcher.process_env(i, 2, 4, {"HOME": "/h"}) for i in range(2)]
  assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
  assert all(e["HOME"] == "/h" for e in envs)


def test_cpu_runs_and_explicit_gpu_choices_are_left_alone():
  for env in ({}, {"JAX_PLATFORMS": "cpu"}, {"CUDA_VISIBLE_DEVICES": "3"}):
    gpus = 0 if not env else 2
    assert launcher.process_env(1, 2, gpus, env) == env


def test_processes_that_cannot_share_the_gpus_equally_stop_with_the_fix():
  with pytest.raises(SystemExit, match="JAX_PLATFORMS=cpu"):
    launcher.process_env(0, 2, 1, {})
