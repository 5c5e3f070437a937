// permcodec._core: values (to be ported from the numba code; see permcodec/).
#include "common.h"

namespace pc {
void init_values(py::module_& m) { (void)m; }
}  // namespace pc
