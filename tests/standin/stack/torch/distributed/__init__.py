"""Stand-in torch.distributed: a rendezvous that really connects every rank to rank 0 at MASTER_ADDR:MASTER_PORT
(a wrong address, port or world size hangs or fails as the real one does), and nothing after it."""

import os
import socket
import time

from .. import cuda

_group = None


def init_process_group(backend, init_method=None, timeout=None, **kwargs):
    global _group
    if backend == "nccl" and not cuda.is_available():
        raise RuntimeError("ProcessGroupNCCL is only supported with GPUs, no GPUs found!")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    deadline = time.time() + 120
    if rank == 0:
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("", port))
            server.listen(world)
            server.settimeout(max(deadline - time.time(), 1))
            joined = {0}
            peers = []
            while len(joined) < world:
                try:
                    peer, _ = server.accept()
                except OSError:
                    raise RuntimeError(
                        f"Timed out initializing process group: {len(joined)} of {world} ranks joined"
                    ) from None
                joined.add(int(peer.recv(64).decode().strip()))
                peers.append(peer)
            for peer in peers:
                peer.sendall(b"ok\n")
                peer.close()
    else:
        while True:
            try:
                with socket.create_connection((addr, port), timeout=5) as sock:
                    sock.sendall(f"{rank}\n".encode())
                    if sock.recv(16).strip() != b"ok":
                        raise RuntimeError(f"rendezvous with {addr}:{port} failed")
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"Timed out initializing process group: no rank 0 at {addr}:{port}") from None
                time.sleep(0.2)
    _group = (backend, rank, world)


def is_available():
    return True


def is_initialized():
    return _group is not None


def get_rank():
    return _group[1] if _group else 0


def get_world_size():
    return _group[2] if _group else 1


def barrier():
    pass


def destroy_process_group():
    global _group
    _group = None
