"""One DCP piece through a rank file: rows [a, b) of a rule'd tensor round-trip bit for bit across
shapes, dtypes, pruning, ties and codecs; a bad piece raises permcodec's errors."""
import io
import os
import tempfile

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

import permcodec
from helpers import bit_equal
from permcodec import api, dcp, format as fmt, rules

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _item(fqn, size, offsets, sizes):
    return WriteItem(index=MetadataIndex(fqn, torch.Size(offsets)), type=WriteItemType.SHARD,
                     tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)),
                                                 properties=TensorProperties(), size=torch.Size(size)))


def _trained(rule, shape, dtype, seed):
    """The rule's values with every row rearranged at random (a LaPerm state)."""
    full = api.to_torch(rule.values((shape[0], int(np.prod(shape[1:]))), dtype), dtype)
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(full.shape, generator=g), dim=1)
    return full.gather(1, order).reshape(shape)


def _through_file(entry, payload, mutate=None):
    """Write one entry as a rank file, then decode it as PermcodecReader does."""
    buf = io.BytesIO()
    w = fmt.Writer(buf)
    entry = dict(entry, section=w.add_section(payload))
    if mutate:
        mutate(entry)
    w.finish(dcp._header({}, [entry]))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rank0-0123456789ab.perm")
        with open(path, "wb") as fh:
            fh.write(buf.getvalue())
        with api.File(path) as f:
            return api.to_torch(dcp._decode_piece(f, entry["name"]).copy(), entry["dtype"])


@st.composite
def pieces(draw):
    rows = draw(st.integers(1, 9))
    shape = [rows] + draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    a = draw(st.integers(0, rows - 1))
    b = draw(st.integers(a + 1, rows))
    family = draw(st.sampled_from(["he_uniform", "he_normal", "constant"]))  # constant: every value tied
    prune = draw(st.sampled_from([0.0, 0.5, 0.9]))
    rule = rules.make(family, shape, seed=draw(st.integers(0, 2**64 - 1)), name="w", prune=prune,
                      value=0.25 if family == "constant" else None)
    return shape, a, b, rule, draw(st.sampled_from(list(DTYPES))), draw(st.sampled_from(["uniform", "packed", "plain"]))


@given(pieces(), st.integers(0, 1000))
def test_rows_of_a_rule_tensor_round_trip(piece, seed):
    shape, a, b, rule, dtype, codec = piece
    full = _trained(rule, shape, dtype, seed)
    item = _item("w", shape, [a] + [0] * (len(shape) - 1), [b - a] + shape[1:])
    entry, payload = dcp._encode_item(item, full[a:b], rule, codec, 3)
    assert entry["kind"] == "permuted" and entry["shape"] == [b - a] + shape[1:]
    assert (entry["codec"]["name"] == dcp.SLICE_CODEC) == (a > 0)
    assert bit_equal(_through_file(entry, payload), full[a:b])


@given(st.integers(1, 6), st.integers(1, 400))
def test_values_from_row_a_are_the_rules_elements(rows, n):
    rule = rules.make("he_normal", [rows + 3, n], seed=7, name="x")
    full = rule.values((rows + 3, n), "float32")
    assert np.array_equal(dcp._RowsFrom(**dcp._fields(rule), start=3 * n).values((rows, n), "float32"), full[3:])


def test_piece_that_is_not_whole_rows_is_raw():
    rule = rules.make("he_uniform", [4, 6], seed=1, name="w")
    full = _trained(rule, [4, 6], "float32", 0)
    entry, payload = dcp._encode_item(_item("w", [4, 6], [0, 3], [4, 3]), full[:, 3:], rule, "auto", 3)
    assert entry["kind"] == "raw"
    assert bit_equal(_through_file(entry, payload), full[:, 3:])


def test_a_piece_that_is_not_a_rearrangement_raises():
    rule = rules.make("he_uniform", [4, 6], seed=1, name="w")
    full = _trained(rule, [4, 6], "float32", 0)
    full[3, 0] = 9.0
    with pytest.raises(permcodec.NotAPermutationError, match="LaPerm.sync"):
        dcp._encode_item(_item("w", [4, 6], [2, 0], [2, 6]), full[2:], rule, "auto", 3)


def test_wrong_or_malformed_row_start_is_caught():
    rule = rules.make("he_uniform", [4, 6], seed=1, name="w")
    full = _trained(rule, [4, 6], "float32", 0)
    entry, payload = dcp._encode_item(_item("w", [4, 6], [2, 0], [2, 6]), full[2:], rule, "uniform", 3)

    def shift(e):
        e["codec"] = dict(e["codec"], row_start=1)

    def malformed(e):
        e["codec"] = dict(e["codec"], row_start=-1)

    with pytest.raises(permcodec.PermcodecError):  # wrong values: the permutation or the digest fails
        _through_file(entry, payload, shift)
    with pytest.raises(permcodec.FormatError, match="malformed dcp-rows"):
        _through_file(entry, payload, malformed)


def test_malformed_metadata_and_foreign_file_names_are_format_errors():
    with pytest.raises(permcodec.FormatError, match="DCP metadata is malformed"):
        dcp._decode_metadata({"bytes": [], "tensors": {"w": {"dtype": "nope"}}})
    body = {"version": "1", "bytes": [], "tensors": {}, "planner_data": None,
            "pieces": [["w", None, "../../etc/passwd", "w"]]}
    with pytest.raises(permcodec.FormatError, match="not a rank file"):
        dcp._decode_metadata(body)


def test_consolidation_refuses_pieces_that_do_not_tile(tmp_path):
    import torch.distributed.checkpoint as tdcp
    model = torch.nn.Linear(6, 4)
    permcodec.init.apply_(model, seed=0)
    tdcp.save(model.state_dict(), storage_writer=dcp.PermcodecWriter(tmp_path, rules=dcp.rules_for(model)))
    md = dcp.read_metadata(tmp_path)
    with api.File(tmp_path / dcp.METADATA) as f:
        body = f.metadata["dcp"]
    body["tensors"]["weight"]["size"] = [8, 6]  # declares more rows than any file holds
    (tmp_path / dcp.METADATA).unlink()
    api._atomic_write(tmp_path / dcp.METADATA, lambda fh: fmt.Writer(fh).finish(dcp._header({"dcp": body}, [])))
    with pytest.raises(permcodec.FormatError, match="'weight' hold 24 elements for its 48"):
        dcp.consolidate(tmp_path, tmp_path / "out.perm")
    assert md.state_dict_metadata["weight"].size == torch.Size([4, 6])
    assert dcp._overlap((slice(0, 2), slice(0, 6)), (slice(1, 3), slice(0, 6)))
    assert not dcp._overlap((slice(0, 2), slice(0, 6)), (slice(2, 4), slice(0, 6)))


def test_a_rank_file_that_does_not_read_back_is_not_written(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as tdcp
    from torch.distributed.checkpoint.api import CheckpointException

    def broken(f, name):
        raise permcodec.IntegrityError("decoder mismatch")

    model = torch.nn.Linear(6, 4)
    permcodec.init.apply_(model, seed=0)
    monkeypatch.setattr(dcp, "_decode_piece", broken)
    with pytest.raises(CheckpointException) as e:
        tdcp.save(model.state_dict(), storage_writer=dcp.PermcodecWriter(tmp_path, rules=dcp.rules_for(model)))
    error = e.value.failures[0][0]
    assert isinstance(error, permcodec.IntegrityError) and "was not written" in str(error)
    assert dcp.rank_files(tmp_path) == [] and not (tmp_path / dcp.METADATA).exists()
