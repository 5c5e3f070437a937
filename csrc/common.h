// Shared pieces of the permcodec._core extension: errors, threads, buffer helpers.
//
// Build rules (see setup.py): C++17, -O2/-O3, -ffp-contract=off, no fast-math, SSE2 doubles on
// x86-64. Only correctly rounded + - * / sqrt on doubles, in the reference's order: bits must
// equal the numpy references in permcodec/ at every optimization level and thread count.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace pc {

// Thrown for bytes that are not a valid payload; the module maps it to permcodec.errors.FormatError.
struct format_error : std::runtime_error {
    explicit format_error(const std::string& m) : std::runtime_error(m) {}
};

// Threads to use: PERMCODEC_NUM_THREADS if set (>= 1), else the hardware's count. Results never
// depend on it; only the split of independent rows or tiles among threads does.
int num_threads();

// Run fn(lo, hi) over [0, n) split into contiguous chunks on up to num_threads() threads; serial
// (on the calling thread, no thread created) when n * work_per_item is below `serial_below`.
// Threads are created per call and joined: no pool spins between calls. The first exception
// thrown by any chunk is rethrown on the caller after all threads joined.
void parallel_for(int64_t n, double work_per_item, double serial_below,
                  const std::function<void(int64_t, int64_t)>& fn);

// Registration hooks, one per source file (module.cpp calls them all).
void init_values(py::module_& m);
void init_perm(py::module_& m);
void init_packed(py::module_& m);
void init_rans(py::module_& m);    // uniform codec + the shared rANS coder
void init_model(py::module_& m);

}  // namespace pc
