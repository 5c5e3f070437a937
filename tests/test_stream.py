"""load_stream: a file object or an iterator of chunks gives what load(path) gives, bit for bit;
memory stays near one section plus the output; bad streams raise permcodec's errors."""
import io
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import permcodec
from helpers import bit_equal, trained_like
from permcodec.stream import load_stream


class _Pipe:
    """A file object being read: read() only, no seek, short reads."""

    def __init__(self, data: bytes, step: int):
        self.data, self.pos, self.step = data, 0, step

    def read(self, n=-1):
        n = min(n if n >= 0 else len(self.data), self.step)
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def _saved(tmp_path, seed=0, dtype=torch.float32, prune=0.0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(9, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).to(dtype)
    permcodec.init.apply_(model, seed=seed, prune=prune)
    trained_like(model, seed)
    state = dict(model.state_dict(), tied=model[0].weight, steps=torch.tensor([3, 1], dtype=torch.int64))
    path = tmp_path / "m.perm"
    permcodec.save(state, path, rules={k: v for k, v in permcodec.init.rules_of(model).items()})
    return path


def _cuts(data: bytes, sizes) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos:pos + n])
        pos, i = pos + n, i + 1
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bit_equal(a[k], b[k]) for k in a)


@given(st.integers(0, 3), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), st.sampled_from([0.0, 0.5]),
       st.lists(st.integers(1, 5000), min_size=1, max_size=5))
def test_stream_equals_load(tmp_path_factory, seed, dtype, prune, sizes):
    path = _saved(tmp_path_factory.mktemp("s"), seed, dtype, prune)
    data = path.read_bytes()
    expected = permcodec.load(path)
    assert _same(load_stream(iter(_cuts(data, sizes))), expected)
    assert _same(load_stream(_Pipe(data, sizes[0])), expected)
    got = load_stream(io.BytesIO(data))
    assert got["tied"] is got["0.weight"]  # aliases stay one tensor


def test_memory_is_one_section_plus_the_output(tmp_path):
    rng = np.random.default_rng(0)
    ints = [rng.integers(0, 2**31, 1 << 17, dtype=np.int32) for _ in range(8)]  # 8 x 512 KiB, incompressible
    state = {f"t{i}": torch.from_numpy(a) for i, a in enumerate(ints)}
    permcodec.save(state, tmp_path / "raw.perm")
    data = (tmp_path / "raw.perm").read_bytes()
    chunks = _cuts(data, [1 << 16])
    tracemalloc.start()
    try:
        out = load_stream(iter(chunks), chunk_size=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _same(out, state)
    output, section = 8 << 19, 1 << 19
    assert peak < output + 2 * section + (256 << 10), peak  # whole-file buffering would add 4 MiB


def test_bad_streams_raise_permcodec_errors(tmp_path):
    data = _saved(tmp_path).read_bytes()
    with pytest.raises(permcodec.FormatError, match="truncated"):
        load_stream(iter([data[:-10]]))
    corrupt = bytearray(data)
    corrupt[64] ^= 1  # first byte of section 0
    with pytest.raises(permcodec.IntegrityError):
        load_stream(iter([bytes(corrupt)]))
    with pytest.raises(permcodec.FormatError, match="max_bytes"):
        load_stream(iter([data]), max_bytes=len(data) - 1)
    with pytest.raises(permcodec.FormatError, match="empty"):
        load_stream(iter([]))
    with pytest.raises(permcodec.PermcodecError, match="binary mode"):
        load_stream(iter(["text"]))
    with pytest.raises(permcodec.PermcodecError, match="permcodec.load"):
        load_stream(data)
    assert load_stream(iter([data]), max_bytes=len(data)).keys() == permcodec.load(tmp_path / "m.perm").keys()


def test_load_takes_an_iterator_of_chunks(tmp_path):
    """permcodec.load(iterator of byte chunks) is the streaming load, rules included."""
    import torch
    import permcodec
    model = torch.nn.Linear(16, 8)
    permcodec.init.apply_(model, seed=3)
    p = tmp_path / "m.perm"
    permcodec.save(model, p)
    data = p.read_bytes()
    chunks = iter([data[i:i + 100] for i in range(0, len(data), 100)])
    state, rules = permcodec.load(chunks, rules=True)
    want = permcodec.load(p)
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    assert rules == permcodec.rules_of(p)
