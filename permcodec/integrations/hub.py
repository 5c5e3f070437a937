"""Hugging Face Hub: a ``PyTorchModelHubMixin`` that stores weights as permcodec files.

    class Net(torch.nn.Module, PermcodecModelHubMixin):
        def __init__(self, hidden: int = 100): ...

    net.save_pretrained("out/")            # out/model.perm (+ shards and model.perm.index.json
                                           # past max_shard_size) and out/config.json
    net = Net.from_pretrained("out/")      # the same weights, bit for bit

Everything else (config.json from the __init__ arguments, the model card, push_to_hub, revisions)
is huggingface_hub's own. Saving inside ``LaPerm.synced_view()`` is the caller's job, as for any
``permcodec.save``.
"""
from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin, snapshot_download

from ..paths import INDEX_NAME, WEIGHTS_NAME


class PermcodecModelHubMixin(PyTorchModelHubMixin):
    """``save_pretrained`` / ``from_pretrained`` with ``model.perm`` instead of ``model.safetensors``.

    ``permcodec_max_shard_size`` (class attribute): past it, the weights are split into
    ``model-00001-of-0000N.perm`` files and ``model.perm.index.json``, the hub's index convention.
    """

    permcodec_max_shard_size = "5GB"

    def _save_pretrained(self, save_directory: Path) -> None:
        from ..api import save
        model = self.module if hasattr(self, "module") else self
        # the save removes an earlier save's other layout (single file, or shards and index)
        save(model, save_directory / WEIGHTS_NAME, max_shard_size=self.permcodec_max_shard_size)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token,
                         map_location: str = "cpu", strict: bool = False, **model_kwargs):
        from ..api import load_into
        model = cls(**model_kwargs)
        folder = model_id if os.path.isdir(model_id) else snapshot_download(
            repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
            token=token, local_files_only=local_files_only, allow_patterns=["model*.perm", INDEX_NAME])
        load_into(model, folder, strict=strict)
        model.to(map_location)
        model.eval()
        return model
