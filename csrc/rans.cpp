// permcodec._core: rans (to be ported from the numba code; see permcodec/).
#include "common.h"

namespace pc {
void init_rans(py::module_& m) { (void)m; }
}  // namespace pc
