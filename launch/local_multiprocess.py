"""Start N local `jkd.main` processes joined by jax.distributed (multi-host on one machine).

  python launch/local_multiprocess.py --num_processes=2 -- --config=configs/watch.py --workdir=W

Every process gets `--coordinator_address=localhost:PORT --num_processes=N --process_id=I` (a free
port is picked unless --port is given); the runs axis is sharded over the devices of all of them,
and only process 0 writes. Exits with the first non-zero status. Useful to test multi-host setups;
on a cluster use launch/slurm.sbatch instead.

On a machine with NVIDIA GPUs each process gets its own equal share of them (CUDA_VISIBLE_DEVICES);
two processes cannot share one GPU. `JAX_PLATFORMS=cpu` (or a CUDA_VISIBLE_DEVICES of your own)
leaves the environment as it is.
"""

import argparse
import os
import socket
import subprocess
import sys


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def visible_gpus() -> int:
  """NVIDIA GPUs of this machine (`nvidia-smi -L`); 0 without the driver."""
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(line.startswith("GPU ") for line in out.splitlines())


def process_env(i: int, n: int, gpus: int, env: dict[str, str]) -> dict[str, str]:
  """Process i of n: `env`, plus its share of `gpus` GPUs when jax may use them."""
  platforms = env.get("JAX_PLATFORMS", "")
  gpu_allowed = not platforms or any(p in platforms for p in ("cuda", "gpu"))
  if not gpus or not gpu_allowed or "CUDA_VISIBLE_DEVICES" in env:
    return dict(env)
  if gpus % n:
    sys.exit(f"local_multiprocess: {n} processes cannot share {gpus} GPU(s) equally; use a "
             f"divisor of {gpus} for --num_processes, or JAX_PLATFORMS=cpu to run on the CPU")
  per = gpus // n
  return {**env, "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in range(i * per, (i + 1) * per))}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then jkd.main flags")
  a = parser.parse_args()
  args = a.args[1:] if a.args[:1] == ["--"] else a.args
  port = a.port or free_port()
  gpus = visible_gpus()
  envs = [process_env(i, a.num_processes, gpus, dict(os.environ)) for i in range(a.num_processes)]
  procs = [subprocess.Popen([sys.executable, "-m", "jkd.main", *args,
                             f"--coordinator_address=localhost:{port}",
                             f"--num_processes={a.num_processes}", f"--process_id={i}"],
                            env=envs[i])
           for i in range(a.num_processes)]
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
