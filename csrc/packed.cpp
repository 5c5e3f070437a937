// permcodec._core: packed (to be ported from the numba code; see permcodec/).
#include "common.h"

namespace pc {
void init_packed(py::module_& m) { (void)m; }
}  // namespace pc
