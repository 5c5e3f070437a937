"""No drift between paths (issue 10): the device decoder calls each codec's one validator, and the
LaPerm wrapper takes param groups added after it was built."""
import numpy as np
import pytest
import torch

from permcodec import gpu, tensors as T
from permcodec.errors import FormatError
from permcodec.rules import make
from trainers.laperm import LaPerm


def plain_entry(shape=(3, 5)):
    rule = make("he_uniform", shape, seed=1, name="w")
    v = rule.values(shape, "float32")
    w = np.ascontiguousarray(v[:, ::-1])
    params, payload = T.encode_permuted(w, rule, "float32", "w", "plain")
    entry = {"name": "w", "shape": list(shape), "dtype": "float32", "kind": "permuted", "init": rule.to_dict(),
             "codec": params, "digest": T.digest(w)}
    return entry, payload, w


@pytest.mark.parametrize("damage", ["padding", "unknown-param"])
def test_device_decoder_rejects_what_the_cpu_path_rejects(damage):
    entry, payload, w = plain_entry()  # 15 indices of 3 bits: 45 bits, 3 padding bits
    assert np.array_equal(gpu.decode(entry, payload, "cpu", backend="torch").numpy(), w)
    if damage == "padding":
        payload = payload[:-1] + bytes([payload[-1] | 0x80])
    else:
        entry = dict(entry, codec=dict(entry["codec"], speed=1))
    with pytest.raises(FormatError):
        T.decode(entry, payload)
    with pytest.raises(FormatError):
        gpu.decode(entry, payload, "cpu", backend="torch")


def test_add_param_group_then_step():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    extra = torch.nn.Parameter(torch.randn(5))
    opt = LaPerm(net, torch.optim.Adam(net.parameters(), lr=1e-2), k=2)
    before = net[0].weight.detach().sort(dim=1).values.clone()
    for i in range(5):
        if i == 1:
            opt.add_param_group({"params": [extra], "lr": 0.1})
        opt.zero_grad()
        (net(torch.randn(8, 4)).pow(2).mean() + extra.pow(2).sum()).backward()
        opt.step()
    assert opt.step_count == 5 and len(opt.param_groups) == 2
    assert all(g["laperm_step"] == 5 for g in opt.param_groups)
    opt.sync()
    assert torch.equal(net[0].weight.detach().sort(dim=1).values, before)  # permuted rows still rearranged
    state = opt.state_dict()
    again = LaPerm(net, torch.optim.Adam(net.parameters(), lr=1e-2), k=2)
    again.add_param_group({"params": [extra], "lr": 0.1})
    again.load_state_dict(state)
    assert again.step_count == 5
