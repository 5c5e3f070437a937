// permcodec._core: perm (to be ported from the numba code; see permcodec/).
#include "common.h"

namespace pc {
void init_perm(py::module_& m) { (void)m; }
}  // namespace pc
