"""The batch step of a stage's Slurm job, run by sbatch on the job's first node with the training interpreter::

    /opt/uniad-venv/bin/python <work_dir>/.uniad_trainside/uniad_slurm_job.py <work_dir>/slurm-attempt-N.json

The job is submitted with ``--export=NONE``, so nothing of the submitting Airflow worker's environment (its
database URL, fernet key, JWT secret) reaches it: the job file names the ranks' environment (PYTHONPATH, PATH and
the deployment's allowlisted variables), Slurm adds its own. This step points the ranks' rendezvous at the first
node (its NodeAddr, a free port there) and replaces itself with ``srun`` over the ranks' argv from the job file: one
task per GPU on every node, the job's CPUs per task and GPUs per node repeated on the srun line (since Slurm 22.05
a step does not inherit ``--cpus-per-task``), ``--export=ALL`` so the ranks get this environment (not the
``NONE`` the batch job was submitted with), ``--kill-on-bad-exit`` so one dead rank ends the job instead of leaving
the others waiting in a collective.

Standard library only, valid Python 3.8: it runs in UniAD's interpreter, where the pipeline is not installed.
"""

import json
import os
import socket
import subprocess
import sys


def node_addr(node, env):
    """The address Slurm reaches ``node`` at (NodeAddr), which its name need not resolve to."""
    shown = subprocess.run(
        ["scontrol", "show", "node", "-o", node], capture_output=True, text=True, env=env, check=True
    )
    for field in shown.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def main(argv=None):
    (job_file,) = sys.argv[1:] if argv is None else argv
    with open(job_file) as handle:
        job = json.load(handle)
    env = dict(os.environ)  # Slurm's variables only: the job was submitted with --export=NONE
    env.update(job["env"])
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    env["MASTER_ADDR"], env["MASTER_PORT"] = node_addr(nodes[0], env), str(port)
    # As torchrun does for several ranks on a node: one intra-op thread each unless the job has more CPUs per task
    # (without it every rank starts a thread per core and they fight over the node's cores).
    env.setdefault("OMP_NUM_THREADS", env.get("SLURM_CPUS_PER_TASK", "1"))
    print(
        "uniad slurm job {}: {} node(s) {}, rendezvous {}:{}, restart {}".format(
            env.get("SLURM_JOB_ID"),
            len(nodes),
            nodes,
            env["MASTER_ADDR"],
            port,
            env.get("SLURM_RESTART_COUNT", "0"),
        ),
        flush=True,
    )
    srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1"] + job["srun"] + job["argv"]
    os.execvpe("srun", srun, env)


if __name__ == "__main__":
    main()
