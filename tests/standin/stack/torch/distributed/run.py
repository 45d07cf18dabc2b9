"""Stand-in torchrun (``python -m torch.distributed.run``): starts nproc_per_node ranks of one node, each in a session
of its own as torchrun does, with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; one failed rank stops
the others and becomes the exit code; SIGTERM is passed on to every rank."""

import argparse
import os
import signal
import subprocess
import sys
import time


def parse(argv, use_env_default=True):
    parser = argparse.ArgumentParser(prog="torchrun")
    parser.add_argument("--nnodes", default="1")
    parser.add_argument("--node_rank", "--node-rank", type=int, default=0)
    parser.add_argument("--nproc_per_node", "--nproc-per-node", type=int, default=1)
    parser.add_argument("--master_addr", "--master-addr", default="127.0.0.1")
    parser.add_argument("--master_port", "--master-port", type=int, default=29500)
    parser.add_argument("--use_env", "--use-env", action="store_true", default=use_env_default)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    return parser.parse_args(argv)


def launch(args):
    nnodes = int(str(args.nnodes).split(":")[-1])
    world = nnodes * args.nproc_per_node
    ranks = []
    for local in range(args.nproc_per_node):
        env = dict(
            os.environ,
            RANK=str(args.node_rank * args.nproc_per_node + local),
            LOCAL_RANK=str(local),
            WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(args.nproc_per_node),
            MASTER_ADDR=args.master_addr,
            MASTER_PORT=str(args.master_port),
        )
        env.setdefault("OMP_NUM_THREADS", "1")
        extra = [] if args.use_env else [f"--local-rank={local}"]
        ranks.append(
            subprocess.Popen([sys.executable, "-u", args.script] + extra + args.args, env=env, start_new_session=True)
        )

    def stop(signum, frame):
        for rank in ranks:
            if rank.poll() is None:
                rank.send_signal(signal.SIGTERM)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        codes = [rank.poll() for rank in ranks]
        failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            for rank in ranks:
                if rank.poll() is None:
                    rank.terminate()
            for rank in ranks:
                rank.wait()
            local, code = failed[0]
            rank = args.node_rank * args.nproc_per_node + local
            print(
                f"torch.distributed.elastic.multiprocessing.errors.ChildFailedError: rank {rank} (local_rank {local}) "
                f"exited with code {code}",
                file=sys.stderr,
            )
            sys.exit(1)
        if all(code == 0 for code in codes):
            return
        time.sleep(0.2)


def main(argv=None):
    launch(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
