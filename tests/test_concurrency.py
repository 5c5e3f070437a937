"""Many threads reading the same file at once get identical, exact results."""
import threading

import pytest
import torch

import permcodec
from permcodec.rules import make
from helpers import bit_equal, shuffle_rows_

THREADS = 12


def model_state():
    state, rules = {}, {}
    for i, (shape, dtype) in enumerate([((40, 60), torch.float32), ((16, 3, 3, 3), torch.bfloat16),
                                        ((30, 30), torch.float16), ((8, 100), torch.float64)]):
        name = f"t{i}.weight"
        rules[name] = make("he_normal", shape, seed=4, name=name, prune=0.3 * (i % 2))
        state[name] = shuffle_rows_(permcodec.init.values_tensor(rules[name], shape, dtype).clone(), i)
        state[f"t{i}.bias"] = torch.randn(shape[0]).to(dtype)
    state["tied"] = state["t0.weight"]
    return state, rules


def run_threads(fn):
    results, errors = [None] * THREADS, []
    barrier = threading.Barrier(THREADS)

    def work(i):
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as e:  # any failure, reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_threads_loading_one_file(tmp_path, sharded):
    state, rules = model_state()
    path = tmp_path / "m.perm"
    permcodec.save(state, path, rules=rules, max_shard_size=4000 if sharded else None)
    for result in run_threads(lambda: permcodec.load(path)):
        assert set(result) == set(state)
        assert all(bit_equal(result[k], v) for k, v in state.items())


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_threads_sharing_one_open_file(tmp_path, sharded):
    state, rules = model_state()
    path = tmp_path / "m.perm"
    permcodec.save(state, path, rules=rules, max_shard_size=4000 if sharded else None)
    names = sorted(state)
    with permcodec.open(path) as f:
        results = run_threads(lambda: {k: f.get_tensor(k, check_digest=True) for k in names[::-1]})
    for result in results:
        assert all(bit_equal(result[k], state[k]) for k in names)
