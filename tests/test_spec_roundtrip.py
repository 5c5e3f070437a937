"""Freshly written payloads of every codec, read by the decoders written from formats/codecs/*.md
(test_spec_codecs.py): the documents describe what the library writes, for any shape, dtype,
sparsity, ties, lane count, segment size, lags and frozen columns, not only for the golden files."""
import numpy as np
from hypothesis import given, strategies as st

from codec_cases import shuffled, values
from permcodec.codecs import model, packed, uniform
from test_spec_codecs import model_decode, packed_decode, uniform_decode

DTYPES = ("float64", "float32", "float16", "bfloat16")


@st.composite
def tensors(draw):
    rows, n = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    v = values(rng, rows, n, draw(st.sampled_from(DTYPES)), zeros=draw(st.sampled_from([0.0, 0.5, 0.9])),
               const=draw(st.booleans()))
    near = draw(st.sampled_from([None, 0.02, 0.2]))
    return v, shuffled(rng, v, near)


@given(tensors())
def test_packed_payload_reads_by_the_document(case):
    v, perm = case
    params, payload = packed.encode(perm, v)
    assert np.array_equal(packed_decode(params, payload, v), perm)


@given(tensors(), st.integers(1, 5), st.integers(1, 6))
def test_uniform_payload_reads_by_the_document(case, lanes, seg):
    v, perm = case
    params, payload = uniform.encode(perm, v, lanes=lanes, segment_rows=seg)
    assert np.array_equal(uniform_decode(params, payload, v), perm)


@given(tensors(), st.integers(1, 5), st.integers(1, 6), st.sampled_from([[], [1], [1, 2], [2, 5], [1, 2, 3, 7]]),
       st.booleans())
def test_model_payload_reads_by_the_document(case, lanes, seg, lags, frozen):
    v, perm = case
    n = v.shape[1]
    lags = [x for x in lags if x < n]
    params, payload = model.encode(perm, v, lanes=lanes, segment_rows=seg, lags=lags,
                                   frozen="auto" if frozen else None)
    assert np.array_equal(model_decode(params, payload, v), perm)
