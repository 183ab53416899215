"""How runs are placed on devices: one CPU device per run, and the dataset shared, not copied."""

import subprocess
import sys

import numpy as np

from jkd.engine import parallel


def test_cpu_devices_one_per_run_up_to_the_cap_then_fewest_runs_per_device_least_padding():
  assert [parallel.cpu_devices_for(r) for r in (1, 5, 9, 27, 32)] == [1, 5, 9, 27, 32]
  assert parallel.cpu_devices_for(33) == 17        # 2 runs per device, 1 inert run of padding
  assert parallel.cpu_devices_for(64) == 32
  assert parallel.cpu_devices_for(81) == 27        # 3 per device, no padding


def test_aligned_copies_only_when_needed_and_keeps_values():
  a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  b = parallel.aligned(a[:, 1:])                   # not contiguous: copied
  assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous
  np.testing.assert_array_equal(b, a[:, 1:])
  assert parallel.aligned(b) is b


def _python(code: str, env_flags: str = "") -> str:
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  if env_flags:
    env["XLA_FLAGS"] = env_flags
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip()


def test_fresh_process_gets_one_device_per_run_sharing_one_copy_of_the_data():
  out = _python(
      "import jax, numpy as np\n"
      "from jkd.engine import parallel\n"
      "print(parallel.use_cpu_devices(5), jax.device_count())\n"
      "x = np.random.rand(1000, 10, 3).astype(np.float32)\n"
      "r = parallel.replicate(x, parallel.mesh())\n"
      "ptrs = {s.data.unsafe_buffer_pointer() for s in r.addressable_shards}\n"
      "print(len(r.addressable_shards), len(ptrs), bool((np.asarray(r) == x).all()))\n"
      "print(parallel.use_cpu_devices(7))\n")              # backend running: left alone
  assert out.splitlines() == ["5 5", "5 1 True", "None"]


def test_explicit_device_count_is_respected():
  out = _python("import jax\nfrom jkd.engine import parallel\n"
                "print(parallel.use_cpu_devices(5), jax.device_count())",
                "--xla_force_host_platform_device_count=3")
  assert out == "None 3"


def test_a_smaller_program_uses_the_first_devices_it_needs_instead_of_padding():
  out = _python("import jax\nfrom jkd.engine import parallel\n"
                "parallel.use_cpu_devices(10)\n"
                "print([parallel.mesh(n).size for n in (0, 3, 10, 12)],"
                " [d.id for d in parallel.mesh(3).devices])")
  assert out == "[10, 3, 10, 10] [0, 1, 2]"
