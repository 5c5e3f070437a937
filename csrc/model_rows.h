// The row machinery of the `model` codec shared by its coder (model.cpp) and its encoder's
// frozen-column search (model_search.cpp): order keys, the per-thread row scratch, the stable
// row sort into classes (model.md §4), and the checks of the arrays Python passes in.
#pragma once
#include "common.h"
#include "perm.h"

#include <cstring>

namespace pc {
namespace model {

// ---- keys and the classes of a row (model.md §4) --------------------------------------------
// One row of keys: order keys as given, or raw value bits (width 8*sizeof(T)) mapped to their
// order keys on the fly (perm.h's order_key, dtypes.order_keys' twin).
template <class T>
struct Keys {
    const T* p;
    bool raw;
    uint64_t operator[](int64_t i) const { return raw ? order_key(p[i], 8 * sizeof(T)) : p[i]; }
};

// Per-thread work arrays of a row coder, O(n): 8 int32 arrays (ROW_SCRATCH_BYTES bounds them).
struct RowScratch {
    int64_t n;
    std::vector<int32_t> order, tmp, cstart, cls, fcls, rem, fen, disp;
    int64_t hist[256];
    explicit RowScratch(int64_t n_)
        : n(n_), order(n_), tmp(n_), cstart(n_ + 1), cls(n_), fcls(n_), rem(n_ + 1), fen(n_ + 1), disp(n_) {}
};
constexpr int64_t ROW_SCRATCH_BYTES = 9 * 4;  // per weight (order, tmp, cstart, cls, fcls, rem, fen, disp + slack)

// Sort positions by (key, index) into order (a stable LSD radix sort over the key bytes that vary
// in the row); class per sorted index in cls; returns the class count with cstart[c] the first
// sorted index of class c (cstart[ncls] = n).
template <class T>
int64_t classes(const Keys<T>& key, RowScratch& S) {
    const int64_t n = S.n;
    int32_t* order = S.order.data();
    uint64_t diff = 0;
    if (n) {
        uint64_t k0 = key[0];
        for (int64_t q = 0; q < n; ++q) diff |= key[q] ^ k0;
    }
    for (int64_t q = 0; q < n; ++q) order[q] = int32_t(q);
    int32_t* src = order;
    int32_t* dst = S.tmp.data();
    for (int byte = 0; byte < 8; ++byte) {
        int sh = 8 * byte;
        if (((diff >> sh) & 255) == 0) continue;
        int64_t* hist = S.hist;
        std::fill(hist, hist + 256, 0);
        for (int64_t q = 0; q < n; ++q) ++hist[(key[q] >> sh) & 255];
        int64_t acc = 0;
        for (int h = 0; h < 256; ++h) {
            int64_t c = hist[h];
            hist[h] = acc;
            acc += c;
        }
        for (int64_t q = 0; q < n; ++q) {
            int32_t i = src[q];
            dst[hist[(key[i] >> sh) & 255]++] = i;
        }
        std::swap(src, dst);
    }
    if (src != order) std::memcpy(order, src, size_t(n) * sizeof(int32_t));
    int64_t ncls = 0;
    uint64_t prev = 0;
    for (int64_t q = 0; q < n; ++q) {
        uint64_t k = key[order[q]];
        if (q == 0 || k != prev) S.cstart[size_t(ncls++)] = int32_t(q);
        prev = k;
        S.cls[size_t(q)] = int32_t(ncls - 1);
    }
    S.cstart[size_t(ncls)] = int32_t(n);
    return ncls;
}

// ---- array helpers --------------------------------------------------------------------------
template <class A>
void require(bool ok, const A& msg) {
    if (!ok) throw std::invalid_argument(std::string("model core: ") + msg);
}

inline py::buffer_info info2d(const py::array& a, int64_t rows, int64_t n, const char* what) {
    py::buffer_info b = a.request();
    require(b.ndim == 2 && b.shape[0] == rows && b.shape[1] == n, std::string(what) + " has the wrong shape");
    require(b.strides[1] == b.itemsize && b.strides[0] == b.itemsize * n, std::string(what) + " must be C-contiguous");
    return b;
}

// Call fn(Keys<T>) with T the unsigned type of the key array's width.
template <class F>
void with_keys(const py::buffer_info& b, F&& fn) {
    switch (b.itemsize) {
        case 1: return fn((const uint8_t*)b.ptr);
        case 2: return fn((const uint16_t*)b.ptr);
        case 4: return fn((const uint32_t*)b.ptr);
        case 8: return fn((const uint64_t*)b.ptr);
        default: require(false, "keys must be 1, 2, 4 or 8 bytes wide");
    }
}

// Registration of the frozen-column search (model_search.cpp); init_model calls it.
void init_search(py::module_& m);

}  // namespace model
}  // namespace pc
