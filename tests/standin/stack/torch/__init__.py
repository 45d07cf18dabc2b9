"""Stand-in of torch for the UniAD contract stand-in: CUDA devices from CUDA_VISIBLE_DEVICES, and checkpoints in
torch's real zip format (standard library only, Python 3.8)."""

import collections
import io
import pickle
import struct
import zipfile

from . import _utils, cuda, distributed  # noqa: F401

__version__ = "2.0.1+standin"


class FloatStorage:
    """Pickled by reference, as torch pickles a storage's type."""


class _Storage:
    def __init__(self, key, values):
        self.key, self.values = key, values


class Tensor:
    """Float32 values and a shape: what a checkpoint needs."""

    def __init__(self, values, shape):
        self.values, self.shape = list(values), tuple(shape)

    def numel(self):
        count = 1
        for size in self.shape:
            count *= size
        return count

    def __reduce_ex__(self, protocol):
        stride, step = [], 1
        for size in reversed(self.shape):
            stride.insert(0, step)
            step *= size
        return (
            _utils._rebuild_tensor_v2,
            (self._storage, 0, self.shape, tuple(stride), False, collections.OrderedDict()),
        )


def full(shape, value):
    tensor = Tensor([], shape)
    tensor.values = [float(value)] * tensor.numel()
    return tensor


def save(obj, path):
    """torch.save's zip format: data.pkl (protocol 2, storages as persistent ids), one record per storage."""
    storages = []
    for tensor in _tensors(obj):
        tensor._storage = _Storage(str(len(storages)), tensor.values)
        storages.append(tensor._storage)

    class Pickler(pickle.Pickler):
        def persistent_id(self, item):
            if isinstance(item, _Storage):
                return ("storage", FloatStorage, item.key, "cpu", len(item.values))
            return None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data.getvalue())
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr("archive/data/" + storage.key, struct.pack(f"<{len(storage.values)}f", *storage.values))
        archive.writestr("archive/version", "3\n")


def load(path, map_location=None, **kwargs):
    with zipfile.ZipFile(path) as archive:
        prefix = archive.namelist()[0].split("/", 1)[0]

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                _, _, key, _, numel = pid
                raw = archive.read(f"{prefix}/data/{key}")
                return _Storage(key, struct.unpack(f"<{numel}f", raw))

        return Unpickler(io.BytesIO(archive.read(prefix + "/data.pkl"))).load()


def _tensors(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            for tensor in _tensors(value):
                yield tensor
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            for tensor in _tensors(value):
                yield tensor
