"""The function torch's checkpoints name to rebuild a tensor from its storage (standard library only)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    from . import Tensor

    return Tensor(storage.values, size)
