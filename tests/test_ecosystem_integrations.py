"""The optional integrations, run for real on CPU: huggingface_hub's mixin on local folders, a
lightning.Trainer.fit of a few steps, an accelerate.Accelerator's save_state. No mocks, no network."""
import json

import pytest
import torch

import permcodec
from helpers import bit_equal, trained_like
from trainers.laperm import LaPerm

hub = pytest.importorskip("huggingface_hub")


def _mlp(hidden):
    return torch.nn.Sequential(torch.nn.Linear(12, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))


# ---- Hugging Face ---------------------------------------------------------------------------
from permcodec.integrations.hub import PermcodecModelHubMixin  # noqa: E402


class Net(torch.nn.Module, PermcodecModelHubMixin):
    def __init__(self, hidden: int = 16, seed: int = 0):
        super().__init__()
        self.body = _mlp(hidden)
        permcodec.init.apply_(self, seed=seed, prune=0.25)


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(bit_equal(sa[k], sb[k]) for k in sa)


def test_hub_save_pretrained_and_from_pretrained_bit_for_bit(tmp_path):
    net = trained_like(Net(hidden=24, seed=5))
    net.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"model.perm", "config.json"}
    assert not (tmp_path / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text()) == {"hidden": 24, "seed": 5}
    assert permcodec.read_header(tmp_path / "model.perm")["tensors"][0]["kind"] == "permuted"
    back = Net.from_pretrained(tmp_path)
    assert back.body[0].out_features == 24 and not back.training
    assert _state_equal(net, back)


def test_hub_shards_past_the_size_and_a_resave_leaves_no_stale_files(tmp_path):
    class Small(Net):
        permcodec_max_shard_size = 400

    net = trained_like(Small(hidden=20))
    net.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model.perm.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.perm"
    assert not (tmp_path / "model.perm").exists()
    assert _state_equal(net, Small.from_pretrained(tmp_path))
    # the same folder, now unsharded: the shards and the index of the earlier save go
    net.permcodec_max_shard_size = "5GB"
    net.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.perm"]
    assert _state_equal(net, Net.from_pretrained(tmp_path))
    # and sharded again over an unsharded save
    del net.permcodec_max_shard_size
    net.save_pretrained(tmp_path)
    assert not (tmp_path / "model.perm").exists() and (tmp_path / "model.perm.index.json").exists()
    assert _state_equal(net, Net.from_pretrained(tmp_path))


# ---- shared by Lightning and accelerate ----------------------------------------------------------
def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())


def _synced_state(model, opt):
    with opt.synced_view():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- Lightning --------------------------------------------------------------------------------
def test_lightning_callback_writes_synced_files_during_and_after_fit(tmp_path):
    L = pytest.importorskip("lightning")
    from permcodec.integrations.lightning import PermcodecCheckpoint

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp(10)
            permcodec.init.apply_(self.net, seed=1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            self.laperm = LaPerm(self.net, k=4, lr=0.05)
            return self.laperm

    torch.manual_seed(0)
    module = Module()
    cb = PermcodecCheckpoint(tmp_path, every_n_train_steps=3, every_n_epochs=1, metadata={"run": "test"})
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=7, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(module, torch.utils.data.DataLoader(_data(), batch_size=16))  # 4 steps per epoch
    names = [p.rsplit("/", 1)[-1] for p in cb.saved]
    # Lightning ends the (partial) second epoch when max_steps stops it
    assert names == ["step=000003.perm", "epoch=000.perm", "step=000006.perm", "epoch=001.perm", "last.perm"]
    opt = module.laperm
    assert opt.step_count == 7 and not opt.is_synced  # the last save fell between two syncs
    inner = {k: v.detach().clone() for k, v in module.state_dict().items()}
    state = permcodec.load(tmp_path / "last.perm")
    want = _synced_state(module, opt)
    assert list(state) == list(want) and all(bit_equal(state[k], want[k]) for k in want)
    assert all(bit_equal(v, module.state_dict()[k]) for k, v in inner.items())  # training state untouched
    assert not all(bit_equal(inner[k], want[k]) for k in want)
    meta = permcodec.read_header(tmp_path / "step=000006.perm")["metadata"]
    assert meta == {"run": "test", "global_step": 6, "epoch": 1}
    permcodec.verify(tmp_path / "epoch=000.perm")


def test_lightning_callback_checks_its_arguments(tmp_path):
    pytest.importorskip("lightning")
    from permcodec.integrations.lightning import PermcodecCheckpoint
    with pytest.raises(ValueError, match="every_n_train_steps must be a positive integer"):
        PermcodecCheckpoint(tmp_path, every_n_train_steps=0)


# ---- accelerate ----------------------------------------------------------------------------------
def test_accelerate_save_state_writes_a_synced_perm(tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from permcodec.integrations.accelerate import register

    torch.manual_seed(0)
    model = _mlp(8)
    permcodec.init.apply_(model, seed=3)
    acc = accelerate.Accelerator(cpu=True)
    opt = LaPerm(model, k=5, lr=0.05)
    model, wrapped, loader = acc.prepare(model, opt, torch.utils.data.DataLoader(_data(), batch_size=16))
    handle = register(acc)  # finds the LaPerm behind accelerate's wrapper
    for x, y in loader:
        wrapped.zero_grad()
        acc.backward(torch.nn.functional.cross_entropy(model(x), y))
        wrapped.step()
    assert opt.step_count == 4 and not opt.is_synced
    acc.save_state(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "model.perm" in files and "model.safetensors" in files  # accelerate's own state stays
    state = permcodec.load(tmp_path / "ckpt" / "model.perm")
    want = _synced_state(model, opt)
    assert all(bit_equal(state[k], want[k]) for k in want)
    handle.remove()
    acc.save_state(tmp_path / "ckpt2")
    assert not (tmp_path / "ckpt2" / "model.perm").exists()
