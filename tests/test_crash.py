"""Crash safety: a save killed with SIGKILL at a random moment never leaves a corrupt file.

A helper process imports permcodec once and forks a writer per trial; the writer saves two
models alternately to the same path, forever; the helper kills it with SIGKILL after a random
delay. After every kill the target must load, verify, and equal one of the two models, and the
only other files allowed in the folder are the writer's ``.permcodec-*.tmp`` temporaries (which
permcodec never reads, and a later save removes once stale). The same for sharded saves: the index
and its shards stay consistent, or the reader refuses them, never a silent mix.
"""
import os
import random
import subprocess
import sys
import time

import pytest
import torch

import permcodec
from permcodec import shards
from helpers import bit_equal

TRIALS = int(os.environ.get("PERMCODEC_CRASH_TRIALS", 400 if os.environ.get("PERMCODEC_DEEP") else 40))
BUDGET_S = float(os.environ.get("PERMCODEC_CRASH_SECONDS", 12))  # per test; stops early on a slow machine

HELPER = r"""
import os, signal, sys, time, torch, permcodec
target, sharded = sys.argv[1], sys.argv[2] == "1"
models = [torch.load(sys.argv[3], weights_only=True), torch.load(sys.argv[4], weights_only=True)]
for m in models:  # load the compiled code here once, so that every forked writer starts warm
    permcodec.save(m["state"], target + ".warm", rules=m["rules"])
os.unlink(target + ".warm")
print("ready", flush=True)
for line in sys.stdin:
    delay = float(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: saves the two models in turn, forever, a byte down the pipe after each
        try:
            os.close(r)
            for i in range(1 << 30):
                m = models[i % 2]
                permcodec.save(m["state"], target, rules=m["rules"], max_shard_size=60000 if sharded else None)
                os.write(w, b".")
        finally:
            os._exit(0)
    os.close(w)
    os.read(r, 1)  # the first save is done: kill a later one
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    print("killed", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, flush=True)
"""


def make_model(seed):
    g = torch.Generator().manual_seed(seed)
    state, rules = {}, {}
    for i in range(4):
        name = f"l{i}.weight"
        rule = permcodec.rules.make("he_uniform", (64, 128), seed=seed, name=name)
        t = permcodec.init.values_tensor(rule, (64, 128), torch.float32).clone()
        t.copy_(torch.gather(t, 1, torch.argsort(torch.rand(t.shape, generator=g), dim=1)))
        state[name], rules[name] = t, rule.to_dict()
        state[f"l{i}.bias"] = torch.randn(20000, generator=g)  # raw, ~80 KB: writes take a while
    return {"state": state, "rules": rules}


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_sigkill_during_save(tmp_path, sharded):
    models = [make_model(1), make_model(2)]
    paths = []
    for i, m in enumerate(models):
        paths.append(str(tmp_path / f"m{i}.pt"))
        torch.save(m, paths[-1])
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "model.perm"
    permcodec.save(models[0]["state"], target, rules=models[0]["rules"], max_shard_size=60000 if sharded else None)
    # time one save, to spread the kills over a few of them
    t = time.perf_counter()
    permcodec.save(models[1]["state"], tmp_path / "timing.perm", rules=models[1]["rules"])
    one_save = time.perf_counter() - t

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), NUMBA_THREADING_LAYER="workqueue")  # fork-safe
    proc = subprocess.Popen([sys.executable, "-c", HELPER, str(target), "1" if sharded else "0", *paths],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    rng = random.Random(0)
    trials, seen, temps = 0, set(), set()
    try:
        assert proc.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        while trials < TRIALS and time.perf_counter() - start < BUDGET_S:
            proc.stdin.write(f"{rng.uniform(0, 2.5 * one_save)}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["killed", "True"]
            trials += 1
            seen.add(check_target(target, models))
            residue = [f for f in os.listdir(folder) if not _ours(f, target)]
            assert all(f.startswith(".permcodec-") and f.endswith(".tmp") for f in residue), residue
            temps.update(residue)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert trials >= min(TRIALS, 10)
    # a later save removes stale temporaries (made stale here by backdating them)
    old = time.time() - 2 * shards.STALE_SECONDS
    for f in os.listdir(folder):
        if f.startswith(".permcodec-"):
            os.utime(folder / f, (old, old))
    permcodec.save(models[0]["state"], target, rules=models[0]["rules"], max_shard_size=60000 if sharded else None)
    assert not [f for f in os.listdir(folder) if f.startswith(".permcodec-")]
    print(f"{trials} kills, files seen: {sorted(seen)}, temporaries left behind: {len(temps)}")


def _ours(name, target):
    stem = os.path.splitext(target.name)[0]
    return (name == target.name or name == target.name + ".index.json"
            or (name.startswith(stem + "-") and name.endswith(".perm")))


def check_target(target, models) -> str:
    """The target loads, verifies and is one of the models; or, sharded, is refused as a mix."""
    try:
        state = permcodec.load(target)
        permcodec.verify(target)
    except permcodec.IntegrityError as e:
        assert shards.is_index(target) and "save the model again" in str(e), e  # a detected mix of shards
        return "refused mix"
    for i, m in enumerate(models):
        if set(state) == set(m["state"]) and all(bit_equal(state[k], v) for k, v in m["state"].items()):
            return f"model {i}"
    raise AssertionError("the target holds neither model")
