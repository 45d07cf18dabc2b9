"""mmcv 1.x's ``init_dist`` for the pytorch and slurm launchers, as mmcv does it: each rank pinned to GPU
``rank % torch.cuda.device_count()`` (a ZeroDivisionError on a rank that sees no GPU), then the process group."""

import os
import subprocess

import torch
import torch.distributed as dist


def init_dist(launcher, backend="nccl", **kwargs):
    if launcher == "pytorch":
        rank = int(os.environ["RANK"])
        num_gpus = torch.cuda.device_count()
        torch.cuda.set_device(rank % num_gpus)
        dist.init_process_group(backend=backend, **kwargs)
    elif launcher == "slurm":
        proc_id = int(os.environ["SLURM_PROCID"])
        ntasks = int(os.environ["SLURM_NTASKS"])
        node_list = os.environ["SLURM_NODELIST"]
        num_gpus = torch.cuda.device_count()
        torch.cuda.set_device(proc_id % num_gpus)
        addr = subprocess.getoutput(f"scontrol show hostname {node_list} | head -n1")
        port = kwargs.get("port")
        if port is not None:
            os.environ["MASTER_PORT"] = str(port)
        elif "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = "29500"
        if "MASTER_ADDR" not in os.environ:
            os.environ["MASTER_ADDR"] = addr
        os.environ["WORLD_SIZE"] = str(ntasks)
        os.environ["LOCAL_RANK"] = str(proc_id % num_gpus)
        os.environ["RANK"] = str(proc_id)
        dist.init_process_group(backend=backend)
    else:
        raise ValueError(f"Invalid launcher type: {launcher}")


def get_dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
