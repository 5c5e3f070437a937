// permcodec._core: model (to be ported from the numba code; see permcodec/codecs/model.py).
#include "common.h"

namespace pc {
void init_model(py::module_& m) { (void)m; }
}  // namespace pc
