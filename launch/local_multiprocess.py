"""Start N local `jkd.main` processes joined by jax.distributed (multi-host on one machine).

  python launch/local_multiprocess.py --num_processes=2 -- --config=configs/watch.py --workdir=W

Every process gets `--coordinator_address=localhost:PORT --num_processes=N --process_id=I` (a free
port is picked unless --port is given); the runs axis is sharded over the devices of all of them,
and only process 0 writes. Exits with the first non-zero status. Useful to test multi-host setups;
on a cluster use launch/slurm.sbatch instead.
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


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then jkd.main flags")
  a = parser.parse_args()
  args = a.args[1:] if a.args[:1] == ["--"] else a.args
  port = a.port or free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "jkd.main", *args,
                             f"--coordinator_address=localhost:{port}",
                             f"--num_processes={a.num_processes}", f"--process_id={i}"],
                            env=os.environ.copy())
           for i in range(a.num_processes)]
  codes = [p.wait() for p in procs]
  return next((c for c in codes if c), 0)


if __name__ == "__main__":
  sys.exit(main())
