"""LaPerm wrapper: exact permutations, ties, state, resume parity, pruning, weight-agnostic."""
import io

import pytest
import torch
from torch import nn

import permcodec
from permcodec import init as pinit
from trainers.laperm import LaPerm, rows_of, sync_rows, sync_rows_reference


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 12), nn.ReLU(), nn.Linear(12, 3))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g))
            for _ in range(n)]


def run(net, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def sorted_rows(t):
    return rows_of(t.detach()).sort(dim=1).values


@pytest.mark.parametrize("shape", [(7, 13), (3, 1), (1, 50), (64, 9)])
def test_sync_rows_equals_reference_with_ties(shape):
    g = torch.Generator().manual_seed(sum(shape))
    rows = torch.randint(0, 4, shape, generator=g).float()  # many ties
    init = torch.randn(shape, generator=g).sort(dim=1).values
    assert torch.equal(sync_rows(rows, init), sync_rows_reference(rows, init))
    rows = torch.randn(shape, generator=g)
    assert torch.equal(sync_rows(rows, init), sync_rows_reference(rows, init))


def test_ties_lower_index_gets_lower_value():
    out = sync_rows(torch.tensor([[5.0, 5.0, 5.0, -1.0, 5.0]]),
                    torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]))
    assert out.tolist() == [[1.0, 2.0, 3.0, 0.0, 4.0]]


def test_every_row_is_an_exact_permutation_after_sync():
    net = small_net()
    before = {n: sorted_rows(p) for n, p in net.named_parameters() if p.dim() > 1}
    opt = LaPerm(net, k=4)
    run(net, opt, batches(8))
    assert opt.is_synced and opt.param_groups[0]["laperm_syncs"] == 2
    for n, p in net.named_parameters():
        if p.dim() > 1:
            assert torch.equal(sorted_rows(p), before[n]), n
    opt.check_synced()
    run(net, opt, batches(1, seed=9))
    assert not opt.is_synced
    with pytest.raises(ValueError, match="call LaPerm.sync"):
        opt.check_synced()


def test_sync_keeps_adam_moments_and_touches_nothing_else():
    net = small_net()
    opt = LaPerm(net, k=100)
    run(net, opt, batches(3))
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    bias = net[4].bias.detach().clone()
    opt.sync()
    for p, s in opt.state.items():
        for key, v in s.items():
            assert torch.equal(v, state[p][key])
    assert torch.equal(net[4].bias, bias)


def test_nothing_written_to_base_state_before_first_step():
    net = small_net()
    base = torch.optim.Adam(net.parameters())
    opt = LaPerm(net, base, k=2)
    assert len(base.state) == 0 and len(opt.state) == 0
    run(net, opt, batches(1))
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(next(iter(base.state.values())))


def test_state_is_json_safe_integers():
    net = small_net()
    opt = LaPerm(net, k=3)
    run(net, opt, batches(4))
    g = opt.state_dict()["param_groups"][0]
    assert (g["laperm_step"], g["laperm_last_sync"], g["laperm_syncs"]) == (4, 3, 1)
    assert all(type(g[k]) is int for k in ("laperm_step", "laperm_last_sync", "laperm_syncs"))
    assert g["laperm_roles"].count("permute") == 3


def _checkpoint(net, opt):
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("stop", [3, 5, 7])  # before, at, after the sync at step 5
def test_resume_is_bit_identical_across_a_sync_boundary(stop):
    data = batches(12)
    net_a = small_net()
    opt_a = LaPerm(net_a, k=5, gamma_beta_reset=True)
    run(net_a, opt_a, data)

    net_b = small_net()
    opt_b = LaPerm(net_b, k=5, gamma_beta_reset=True)
    run(net_b, opt_b, data[:stop])
    ckpt = _checkpoint(net_b, opt_b)
    del net_b, opt_b
    net_c = small_net()  # rebuilt from the seed: the wrapper takes θ_sorted from it
    opt_c = LaPerm(net_c, k=5, gamma_beta_reset=True)
    net_c.load_state_dict(ckpt["model"])
    opt_c.load_state_dict(ckpt["opt"])
    run(net_c, opt_c, data[stop:])

    assert opt_c.step_count == 12 and opt_c.last_sync == 10
    for (n, a), (_, c) in zip(net_a.state_dict().items(), net_c.state_dict().items()):
        assert torch.equal(a, c), n
    sa, sc = opt_a.state_dict(), opt_c.state_dict()
    assert sa["param_groups"] == sc["param_groups"]
    for i in sa["state"]:
        for key in sa["state"][i]:
            assert torch.equal(sa["state"][i][key], sc["state"][i][key])


def test_loading_into_other_initial_values_fails():
    net = small_net()
    opt = LaPerm(net, k=3)
    run(net, opt, batches(2))
    other = small_net(seed=1)
    with pytest.raises(ValueError, match="other initial values"):
        LaPerm(other, k=3).load_state_dict(opt.state_dict())
    plain = torch.optim.Adam(small_net().parameters())
    with pytest.raises(ValueError, match="not a LaPerm state dict"):
        LaPerm(small_net(), k=3).load_state_dict(plain.state_dict())


def test_k_schedule_and_lr_scheduler():
    net = small_net()
    opt = LaPerm(net, k_schedule=[(0, 2), (4, 3)])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)
    syncs = []
    for x, y in batches(10):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        sched.step()
        if opt.is_synced:
            syncs.append(opt.step_count)
    assert syncs == [2, 4, 7, 10]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 10)
    with pytest.raises(ValueError, match="start at step 0"):
        LaPerm(net, k_schedule=[(5, 2)])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        LaPerm(net, k=0)


def test_gamma_beta_reset_and_bias_vectors():
    net = small_net()
    opt = LaPerm(net, k=3, bias=True, gamma_beta_reset=True)
    assert set(opt.permuted()) == {"0.weight", "0.bias", "4.weight", "4.bias", "6.weight",
                                   "6.bias"}
    init_bias = net[6].bias.detach().sort().values.clone()
    run(net, opt, batches(2))
    assert not torch.equal(net[1].weight, torch.ones(4))
    run(net, opt, batches(1))
    assert torch.equal(net[1].weight, torch.ones(4)) and torch.equal(net[1].bias, torch.zeros(4))
    assert torch.equal(net[6].bias.detach().sort().values, init_bias)


def test_synced_view_restores_the_inner_weights():
    net = small_net()
    opt = LaPerm(net, k=100)
    run(net, opt, batches(3))
    inner = [p.detach().clone() for p in net.parameters()]
    with opt.synced_view():
        assert torch.equal(sorted_rows(net[0].weight), opt.sorted_initial(net[0].weight))
    assert all(torch.equal(a, b) for a, b in zip(inner, net.parameters()))
    assert opt.step_count == 3 and not opt.is_synced


def mlp(seed=0, **init):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
    pinit.apply_(net, seed=seed, **init)
    return net


def mlp_batches(n):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(32, 30, generator=g), torch.randint(0, 5, (32,), generator=g))
            for _ in range(n)]


def test_pruned_zero_counts_are_fixed_and_zeros_move():
    net = mlp(prune=0.5, input_prune_cap=1.0)
    zeros = {n: (rows_of(p) == 0).sum(1) for n, p in net.named_parameters() if p.dim() > 1}
    where = {n: rows_of(p) == 0 for n, p in net.named_parameters() if p.dim() > 1}
    assert all((z > 0).all() for z in zeros.values())
    opt = LaPerm(net, k=5)
    run(net, opt, mlp_batches(20))
    moved = 0
    for n, p in net.named_parameters():
        if p.dim() > 1:
            assert torch.equal((rows_of(p) == 0).sum(1), zeros[n]), n
            moved += int((where[n] != (rows_of(p) == 0)).sum())
    assert moved > 0  # connectivity was rewired


def test_input_layer_prune_cap():
    net = mlp(prune=0.5)
    first = (net[0].weight == 0).float().mean().item()
    second = (net[2].weight == 0).float().mean().item()
    assert 0.1 < first < 0.3 and 0.35 < second < 0.65


def test_weight_agnostic_rows_keep_two_values():
    net = mlp(prune=0.4, shared_value=0.08, input_prune_cap=1.0)
    counts = {n: (rows_of(p) == 0.08).sum(1) for n, p in net.named_parameters() if p.dim() > 1}
    opt = LaPerm(net, k=4)
    run(net, opt, mlp_batches(12))
    for n, p in net.named_parameters():
        if p.dim() > 1:
            assert set(p.detach().unique().tolist()) <= {0.0, torch.tensor(0.08).item()}
            assert torch.equal((rows_of(p) == 0.08).sum(1), counts[n])


def test_permcodec_save_refused_between_syncs_and_exact_after(tmp_path):
    net = mlp(prune=0.3)
    opt = LaPerm(net, k=4)
    run(net, opt, mlp_batches(6))
    assert not opt.is_synced
    with pytest.raises(permcodec.PermcodecError, match="sync"):
        permcodec.save(net, tmp_path / "between.perm")
    opt.sync()
    permcodec.save(net, tmp_path / "m.perm")
    state = permcodec.load(tmp_path / "m.perm")
    for n, t in net.state_dict().items():
        assert torch.equal(state[n], t), n
