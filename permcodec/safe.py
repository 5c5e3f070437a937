"""safetensors' verbs over permcodec files, for users who know them:

    permcodec.save_file({"w": w}, "model.perm", metadata={"step": 10})
    state = permcodec.load_file("model.perm", device="cpu")
    with permcodec.safe_open("model.perm", framework="pt", device="cpu") as f:
        f.metadata()["step"], f.keys(), f.get_tensor("w"), f.get_slice("w")[2:5]

``framework="np"`` hands out numpy arrays. A missing name raises ``TensorNotFoundError``, which is
both a ``KeyError`` and a ``PermcodecError``.
"""
from __future__ import annotations

from .errors import PermcodecError, TensorNotFoundError

FRAMEWORKS = {"pt": "pt", "torch": "pt", "pytorch": "pt", "np": "np", "numpy": "np"}


def save_file(tensors: dict, filename, metadata: dict | None = None, **save_kwargs) -> int:
    """``permcodec.save`` of a dict of tensors (safetensors.torch.save_file's arguments)."""
    from .api import save
    if not isinstance(tensors, dict):
        raise PermcodecError(f"save_file takes a dict of tensors, not {type(tensors).__name__}: "
                             f"use permcodec.save for a model")
    return save(tensors, filename, metadata=metadata, **save_kwargs)


def load_file(filename, device="cpu") -> dict:
    """Every tensor of ``filename`` on ``device`` (safetensors.torch.load_file's arguments)."""
    from .api import load
    return load(filename, device)


class safe_open:  # lower case: the name safetensors users type
    """A file (or sharded save) opened for reading one tensor at a time, safetensors-style."""

    def __init__(self, filename, framework: str = "pt", device="cpu"):
        from .api import open_file
        self.framework = FRAMEWORKS.get(str(framework).lower())
        if self.framework is None:
            raise PermcodecError(f"framework {framework!r} is not supported: use 'pt' (torch) or 'np' (numpy)")
        self.device = device
        self._f = open_file(filename)

    def keys(self) -> list[str]:
        return list(self._f.keys())

    def metadata(self) -> dict:
        return dict(self._f.metadata)

    def _entry(self, name) -> dict:
        if name not in self._f:
            raise TensorNotFoundError(f"no tensor {name!r} in {self._f.path}")
        return self._f.entry(name)

    def get_tensor(self, name):
        self._entry(name)
        if self.framework == "np":
            return self._f.get_numpy(name)
        return self._f.get_tensor(name, self.device)

    def get_slice(self, name) -> "Slice":
        return Slice(self, name)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Slice:
    """``f.get_slice(name)``: shape and dtype from the header; ``[a:b]`` (any index) gives part of
    the tensor. A slice along dim 0 without a step (``[a:b]``, ``[a:b, ...]``) decodes only the
    rows it needs (tensors.decode_rows); any other index decodes the whole tensor, then indexes it."""

    def __init__(self, owner: safe_open, name):
        self._owner, self.name = owner, name
        self._e = owner._entry(name)

    def get_shape(self) -> list[int]:
        return list(self._e["shape"])

    def get_dtype(self) -> str:
        return self._e["dtype"]

    def __getitem__(self, index):
        head, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, None)
        f = self._owner._f
        if (not isinstance(head, slice) or head.step not in (None, 1) or not self._e["shape"]
                or not hasattr(f, "get_rows")):
            return self._owner.get_tensor(self.name)[index]
        start, stop, _ = head.indices(self._e["shape"][0])
        arr = f.get_rows(self.name, start, max(start, stop))
        if self._owner.framework == "pt":
            from .api import to_torch
            arr = to_torch(arr, self._e["dtype"], self._owner.device)
        return arr if rest is None else arr[(slice(None),) + rest]
