"""Sharded saves lose nothing silently (issue 10, items 3-6): one name holds one layout, the index
loses no tensor, shards prove they are one save, and cleanup spares a live writer's temp files."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import permcodec
from permcodec import shards
from helpers import bit_equal


def state_of(seed, n=6, size=300):
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(size, generator=g) for i in range(n)}


def same(a, b):
    return set(a) == set(b) and all(bit_equal(a[k], b[k]) for k in a)


def perm_files(folder):
    return sorted(f for f in os.listdir(folder) if not f.startswith(".permcodec-"))


# ---- one name, one layout (item 3) ------------------------------------------------------------
def test_sharded_save_replaces_a_single_file(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p)
    new = state_of(2)
    permcodec.save(new, p, max_shard_size=2000)
    assert same(permcodec.load(p), new) and same(permcodec.load(shards.index_path(p)), new)
    assert not p.exists()


def test_single_save_replaces_a_sharded_one(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    new = state_of(2)
    permcodec.save(new, p)
    assert same(permcodec.load(p), new)
    assert perm_files(tmp_path) == ["model.perm"]  # no stale index, no orphan shards


def test_fewer_shards_leave_no_orphans(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    assert len(perm_files(tmp_path)) > 3
    new = state_of(2, n=2)
    permcodec.save(new, p, max_shard_size=2000)
    assert perm_files(tmp_path) == sorted(shards.shard_names(p, 2) + ["model.perm.index.json"])
    assert same(permcodec.load(p), new)


def test_a_save_that_fits_one_shard_replaces_a_sharded_one(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    new = state_of(2, n=1)
    permcodec.save(new, p, max_shard_size=2000)
    assert perm_files(tmp_path) == ["model.perm"] and same(permcodec.load(p), new)


def test_after_a_crash_between_the_two_steps_the_newer_layout_wins(tmp_path):
    p = tmp_path / "model.perm"
    old, new = state_of(1), state_of(2)
    permcodec.save(old, tmp_path / "old.perm")
    permcodec.save(new, p, max_shard_size=2000)
    os.replace(tmp_path / "old.perm", p)  # as if the old single file had not been removed yet
    t = time.time() - 60
    os.utime(p, (t, t))
    assert same(permcodec.load(p), new)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([None, 1500, 2500, 4000, 10 ** 6]), min_size=1, max_size=4), st.data())
def test_every_reader_gets_the_last_save(tmp_path_factory, sizes, data):
    folder = tmp_path_factory.mktemp("seq")
    p = folder / "model.perm"
    for i, size in enumerate(sizes):
        state = state_of(i, n=data.draw(st.integers(1, 7)))
        permcodec.save(state, p, max_shard_size=size)
    for reader in (lambda: permcodec.load(p), lambda: permcodec.load(str(p)),
                   lambda: {k: f.get_tensor(k) for f in [permcodec.open(p)] for k in f.keys()}):
        assert same(reader(), state)
    assert permcodec.verify(p, state).model_checked
    sharded = shards.is_index(p)
    expected = (shards.shard_names(p, len(set(json.loads((folder / "model.perm.index.json").read_text())
                                                 ["weight_map"].values()))) + ["model.perm.index.json"]
                if sharded else ["model.perm"])
    assert perm_files(folder) == sorted(expected)


# ---- the index loses nothing (item 4) ----------------------------------------------------------
def _edit_index(p, edit):
    ip = shards.index_path(p)
    index = json.loads(open(ip).read())
    edit(index)
    with open(ip, "w") as fh:
        json.dump(index, fh)


def _last_shard_alone(tmp_path):
    """A sharded save whose last shard holds a single tensor (t5)."""
    p = tmp_path / "model.perm"
    state = state_of(1)
    permcodec.save(state, p, max_shard_size=2000)
    wm = json.loads(open(shards.index_path(p)).read())["weight_map"]
    assert [k for k, v in wm.items() if v == wm["t5"]] == ["t5"]
    return p


@pytest.mark.parametrize("hub", [False, True], ids=["pinned", "hub-style"])
@pytest.mark.parametrize("edit", ["delete", "rename"])
def test_an_index_that_lost_an_entry_is_refused(tmp_path, edit, hub):
    p = _last_shard_alone(tmp_path)

    def change(index):
        shard = index["weight_map"].pop("t5")
        if edit == "rename":
            index["weight_map"]["t5_renamed"] = shard
        if hub:
            del index["metadata"]["permcodec"]
    _edit_index(p, change)
    for read in (permcodec.load, permcodec.verify):
        with pytest.raises(permcodec.FormatError, match="save the model again"):
            read(p)


def test_a_dropped_middle_shard_is_refused_by_a_hub_style_index(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    first = min(json.loads(open(shards.index_path(p)).read())["weight_map"].values())

    def change(index):
        del index["metadata"]["permcodec"]
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != first}
    _edit_index(p, change)
    with pytest.raises(permcodec.IntegrityError, match="dropped"):
        permcodec.load(p)


# ---- shards prove they are one save (item 5) ------------------------------------------------------
def test_mixed_shards_refused_without_the_permcodec_block(tmp_path):
    for d, seed in (("a", 1), ("b", 2)):
        (tmp_path / d).mkdir()
        permcodec.save(state_of(seed), tmp_path / d / "model.perm", max_shard_size=2000)
    p = tmp_path / "a" / "model.perm"
    second = json.loads(open(shards.index_path(p)).read())["weight_map"]["t5"]
    os.replace(tmp_path / "b" / second, tmp_path / "a" / second)
    _edit_index(p, lambda index: index["metadata"].pop("permcodec"))
    with pytest.raises(permcodec.IntegrityError, match="different save.*save the model again"):
        permcodec.load(p)


def test_every_shard_carries_the_save_id(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    names = sorted(set(json.loads(open(shards.index_path(p)).read())["weight_map"].values()))
    marks = [permcodec.File(tmp_path / n).header["shard"] for n in names]
    assert len({m["save_id"] for m in marks}) == 1 and len(marks[0]["save_id"]) == 16
    assert [m["number"] for m in marks] == list(range(1, len(names) + 1))
    assert [m["last"] for m in marks] == [False] * (len(names) - 1) + [True]
    permcodec.save(state_of(1), tmp_path / "again.perm", max_shard_size=2000)
    again = shards.shard_names(tmp_path / "again.perm", len(names))[0]
    assert permcodec.File(tmp_path / again).header["shard"]["save_id"] != marks[0]["save_id"]
    assert "shard" not in permcodec.File(_single(tmp_path)).header


def _single(tmp_path):
    permcodec.save(state_of(1), tmp_path / "one.perm")
    return tmp_path / "one.perm"


# ---- index reading raises FormatError, never a bare Python error ---------------------------------
@pytest.mark.parametrize("index", [
    b"[" * 100000 + b"]" * 100000,
    b'{"weight_map": {"w": "x.perm"}, "metadata": {"permcodec": "x"}}',
    b'{"weight_map": {"w": "x.perm"}, "metadata": {"permcodec": {"shards": ["x.perm"]}}}',
    b'{"weight_map": {"w": "x.perm"}, "metadata": {"permcodec": {"shards": {"x.perm": 3}}}}',
    b'{"weight_map": {"": "x.perm"}}',
    b'{"weight_map": {"w": "' + b"x" * 300 + b'"}}',
], ids=["deep", "block-not-map", "shards-list", "listing-not-map", "empty-name", "name-too-long"])
def test_hostile_index_raises_format_error(tmp_path, index):
    (tmp_path / "m.perm.index.json").write_bytes(index)
    with pytest.raises(permcodec.FormatError):
        permcodec.load(tmp_path / "m.perm")


def test_index_without_metadata_and_a_shard_that_is_a_folder(tmp_path):
    p = tmp_path / "model.perm"
    permcodec.save(state_of(1), p, max_shard_size=2000)
    _edit_index(p, lambda index: index.update(metdata=index.pop("metadata")))  # misspelled: a hub-style index
    assert same(permcodec.load(p), state_of(1))
    first = min(json.loads(open(shards.index_path(p)).read())["weight_map"].values())
    os.unlink(tmp_path / first)
    os.mkdir(tmp_path / first)
    with pytest.raises(permcodec.FormatError, match="folder"):
        permcodec.load(p)
    (tmp_path / "dir.perm.index.json").mkdir()
    with pytest.raises(permcodec.FormatError, match="folder"):
        permcodec.load(tmp_path / "dir.perm.index.json")


# ---- cleanup spares live writers (item 6) ---------------------------------------------------------
def _backdate(p):
    t = time.time() - 2 * shards.STALE_SECONDS
    os.utime(p, (t, t))


def test_cleanup_spares_a_live_writers_temp_files(tmp_path):
    fd, live = shards.temp_file(str(tmp_path))
    os.close(fd)
    _backdate(live)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(child.stdout)  # exited: its pid names no live process (unless reused at once)
    dead = tmp_path / os.path.basename(live).replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    dead.write_bytes(b"partial")
    _backdate(dead)
    permcodec.save({"w": torch.ones(3)}, tmp_path / "m.perm")
    assert os.path.exists(live) and not dead.exists()


def test_a_long_sharded_save_keeps_its_temp_shards_while_another_save_cleans_up(tmp_path, monkeypatch):
    """The first save's finished temp shards are older than STALE_SECONDS when a second save in the
    same folder cleans up (STALE_SECONDS made 0 here): they must survive, and the first save succeed."""
    monkeypatch.setattr(shards, "STALE_SECONDS", 0)
    monkeypatch.setattr(shards.remove_stale_temps, "__defaults__", (0,))
    state = state_of(1)
    calls = []
    orig = shards._Shard.add

    def add(self, entry, payload):
        if len(calls) == 3:  # mid-save: a finished temp shard exists; another save cleans the folder
            for f in os.listdir(tmp_path):
                if f.startswith(".permcodec-"):
                    _backdate(tmp_path / f)
            permcodec.save({"w": torch.ones(3)}, tmp_path / "other.perm")
        calls.append(1)
        return orig(self, entry, payload)
    monkeypatch.setattr(shards._Shard, "add", add)
    permcodec.save(state, tmp_path / "model.perm", max_shard_size=2000)
    assert same(permcodec.load(tmp_path / "model.perm"), state)


def test_layout_cleanup_removes_only_files_named_as_shards(tmp_path):
    """A hand-written index listing other files: a save under its name removes the index, not them."""
    (tmp_path / "notes.perm").write_bytes(b"keep me")
    (tmp_path / "model.perm.index.json").write_text(json.dumps({"weight_map": {"w": "notes.perm"}}))
    permcodec.save(state_of(1), tmp_path / "model.perm")
    assert (tmp_path / "notes.perm").read_bytes() == b"keep me"
    assert perm_files(tmp_path) == ["model.perm", "notes.perm"]


def test_shards_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        permcodec.save(state_of(1), tmp_path / "model.perm", max_shard_size=2000)
    finally:
        os.umask(old)
    assert {oct(os.stat(tmp_path / f).st_mode & 0o777) for f in perm_files(tmp_path)} == {"0o644"}


def test_shards_written_before_the_shard_map_load_when_the_index_pins_them(tmp_path):
    """permcodec 0.1 wrote no 'shard' map; its index always pinned each shard's trailer digest."""
    sys.path.insert(0, str(os.path.join(os.path.dirname(__file__), "..", "fuzz")))
    import kit
    from permcodec import format as fmt
    p = tmp_path / "model.perm"
    state = state_of(1)
    permcodec.save(state, p, max_shard_size=2000)
    index = json.loads(open(shards.index_path(p)).read())
    for name, listing in index["metadata"]["permcodec"]["shards"].items():
        header, payloads = kit.split((tmp_path / name).read_bytes())
        del header["shard"]
        data = kit.build({k: v for k, v in header.items() if k != "sections"}, payloads)
        (tmp_path / name).write_bytes(data)
        digest = fmt.TRAILER.unpack_from(data, len(data) - fmt.TRAILER.size)[2]
        listing.update(bytes=len(data), trailer_sha256=digest.hex())
    (tmp_path / "model.perm.index.json").write_text(json.dumps(index))
    assert same(permcodec.load(p), state)
    del index["metadata"]["permcodec"]
    (tmp_path / "model.perm.index.json").write_text(json.dumps(index))
    with pytest.raises(permcodec.FormatError, match="does not say which save"):
        permcodec.load(p)
