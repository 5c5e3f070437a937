"""The worked examples of formats/codecs/uniform.md and model.md, run through the library: its
encoders write the printed payloads and its decoders (fast and reference) read them back.
(test_spec_codecs.py runs the same examples through the decoders written from the documents.)"""
import numpy as np
import pytest

from permcodec.codecs import _model_ref, model, uniform
from test_spec_codecs import _doc, _example, _hex_after

UNIFORM = _example(_doc("uniform.md"), "## 5. Worked example")
MODEL = _example(_doc("model.md"), "## 8. Worked example")
CASES = {
    "uniform": (uniform, np.array([[0.5, 0.0, 0.0]], np.float32), [[1, 0, 2]],
                {"name": "uniform", "lanes": 1, "segment_rows": 1},
                _hex_after(UNIFORM, "so the payload is that state as two words:"), {}),
    "model": (model, np.array([[0.1, 0.3]], np.float32), [[1, 0]],
              {"name": "model", "lanes": 1, "segment_rows": 1, "frozen": b"", "lags": []},
              _hex_after(MODEL, "= 4429185024, payload"), {"frozen": None, "lags": []}),
}


@pytest.mark.parametrize("codec", sorted(CASES))
def test_worked_example_through_the_library(codec):
    module, v, perm, params, payload, options = CASES[codec]
    assert module.encode(np.array(perm), v, lanes=1, segment_rows=1, **options) == (params, payload)
    assert module.decode(params, payload, v).tolist() == perm
    reference = _model_ref if module is model else module  # model's reference lives beside it
    assert reference.decode_reference(params, payload, v).tolist() == perm

