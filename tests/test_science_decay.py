"""The paper's L2: weights only (no biases, no BatchNorm), F2's hidden layers only; "all" is the
earlier choice (issue 15, item 2)."""
import pytest
import torch

from trainers.cli import config_from, train_parser
from trainers.train import build_model, build_optimizer, decayed


def _cfg(*flags):
    cfg = config_from(train_parser().parse_args(list(flags)))
    cfg.out = None
    return cfg


def _moved_by_decay_alone(cfg) -> set[str]:
    """One optimizer step with every gradient zero: only decayed parameters can move."""
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    (opt.base if hasattr(opt, "base") else opt).step()  # the base step alone: no sync involved
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


@pytest.mark.parametrize("model", ["conv2-28", "conv4-28", "conv4", "resnet20"])
def test_conv_recipes_decay_the_weights_only(model):
    cfg = _cfg("--recipe", "conv4", "--model", model, "--optimizer", "adam")
    net = build_model(cfg)
    names = dict(net.named_parameters())
    expected = {n for n, p in names.items() if isinstance(_owner(net, n), (torch.nn.Conv2d,
                torch.nn.Linear)) and n.endswith("weight")}
    assert set(decayed(net, "weights")) == expected
    assert cfg.weight_decay > 0 and _moved_by_decay_alone(cfg) == expected
    assert not any(isinstance(_owner(net, n), torch.nn.modules.batchnorm._BatchNorm) for n in expected)


def _owner(model, name):
    return model.get_submodule(name.rpartition(".")[0])


def test_f2_decays_its_hidden_layers_only():
    cfg = _cfg("--recipe", "f2", "--optimizer", "adam")
    assert _moved_by_decay_alone(cfg) == {"1.weight", "3.weight"}  # not 5.weight, the output
    assert decayed(build_model(cfg), "hidden") == ["1.weight", "3.weight"]


def test_laperm_base_optimizer_gets_the_same_groups():
    cfg = _cfg("--recipe", "f2", "--data", "embedded")
    assert _moved_by_decay_alone(cfg) == {"1.weight", "3.weight"}


def test_decay_all_is_the_earlier_behaviour():
    cfg = _cfg("--recipe", "conv4", "--model", "conv4-28", "--optimizer", "adam", "--decay", "all")
    net = build_model(cfg)
    assert set(decayed(net, "all")) == {n for n, _ in net.named_parameters()}
    # BatchNorm's beta starts at 0 and gamma at 1: decay alone moves gamma, and every weight
    moved = _moved_by_decay_alone(cfg)
    assert "1.weight" in moved and "0.bias" in moved and "0.weight" in moved


def test_no_weight_decay_moves_nothing():
    assert _moved_by_decay_alone(_cfg("--optimizer", "adam")) == set()


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="decay must be one of"):
        decayed(torch.nn.Linear(2, 2), "biases")
