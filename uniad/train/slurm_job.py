"""The batch step of a stage's Slurm job: ``python -m uniad.train.slurm_job JOB_FILE``, run by sbatch on the job's
first node. It points the ranks' rendezvous at that node (its NodeAddr, a free port there) and replaces itself
with ``srun`` over the ranks' argv from the job file: one task per GPU on every node, ``--kill-on-bad-exit`` so
one dead rank ends the job instead of leaving the others waiting in a collective."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def node_addr(node: str) -> str:
    """The address Slurm reaches ``node`` at (NodeAddr), which its name need not resolve to."""
    shown = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True, text=True, check=True)
    for field in shown.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def main(argv: list[str] | None = None) -> None:
    (job_file,) = argv if argv is not None else sys.argv[1:]
    with open(job_file) as handle:
        job = json.load(handle)
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **job["env"], "MASTER_ADDR": node_addr(nodes[0]), "MASTER_PORT": str(port)}
    # As torchrun does for several ranks on a node: one intra-op thread each, unless the job says otherwise
    # (without it, every rank starts a thread per core and they fight over the node's cores).
    env.setdefault("OMP_NUM_THREADS", os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    print(f"uniad slurm job {os.environ.get('SLURM_JOB_ID')}: {len(nodes)} node(s) {nodes}, "
          f"rendezvous {env['MASTER_ADDR']}:{port}", flush=True)  # fmt: skip
    srun = ["srun", "--kill-on-bad-exit=1", f"--ntasks-per-node={job['ntasks_per_node']}", *job["argv"]]
    os.execvpe("srun", srun, env)


if __name__ == "__main__":
    main()
