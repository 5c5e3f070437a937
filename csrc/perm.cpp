// permcodec._core: canonical permutations (perm.find) and the decoder's check-and-gather
// (perm.check + perm.apply), row-parallel. The numpy references in permcodec/perm.py are the
// spec; tests/test_perm_find.py compares the two bit for bit.
#include "common.h"
#include "perm.h"

namespace pc {
namespace {

constexpr double kSerialBelow = 1 << 16;  // elements below which a call stays on one thread

// A C-contiguous 2-D array of unsigned integers `width` bytes wide, or ValueError.
void expect_bits(const py::array& a, const char* what) {
    if (a.ndim() != 2 || !(a.flags() & py::array::c_style) || a.dtype().kind() != 'u')
        throw py::value_error(std::string(what) + " must be a C-contiguous 2-D array of unsigned bit patterns");
}

template <class T>
py::tuple find_bits(const py::array& v, const py::array& w) {
    const int64_t rows = v.shape(0), n = v.shape(1);
    py::array_t<int64_t> perm({rows, n});
    py::array_t<bool> ok(rows);
    const T* pv = static_cast<const T*>(v.data());
    const T* pw = static_cast<const T*>(w.data());
    int64_t* po = perm.mutable_data();
    bool* pk = ok.mutable_data();
    {
        py::gil_scoped_release nogil;
        parallel_for(rows, double(n), kSerialBelow, [&](int64_t r0, int64_t r1) {
            FindScratch s(n);
            for (int64_t r = r0; r < r1; ++r) pk[r] = find_row(pv + r * n, pw + r * n, n, po + r * n, s);
        });
    }
    return py::make_tuple(perm, ok);
}

// (perm int64 rows x n, ok bool per row) from the bit patterns of the initial and trained rows.
py::tuple find(const py::array& v, const py::array& w) {
    expect_bits(v, "v");
    expect_bits(w, "w");
    if (!v.dtype().is(w.dtype()) || v.shape(0) != w.shape(0) || v.shape(1) != w.shape(1))
        throw py::value_error("v and w must have the same shape and dtype");
    switch (v.itemsize()) {
        case 1: return find_bits<uint8_t>(v, w);
        case 2: return find_bits<uint16_t>(v, w);
        case 4: return find_bits<uint32_t>(v, w);
        case 8: return find_bits<uint64_t>(v, w);
    }
    throw py::value_error("bit patterns must be 1, 2, 4 or 8 bytes wide");
}

template <class T>
py::object check_apply_bits(const py::array& v, const py::array_t<int64_t>& perm) {
    const int64_t rows = v.shape(0), n = v.shape(1);
    py::array_t<T> out({rows, n});
    const T* pv = static_cast<const T*>(v.data());
    const int64_t* pp = perm.data();
    T* po = out.mutable_data();
    std::vector<char> bad(size_t(rows), 0);
    {
        py::gil_scoped_release nogil;
        parallel_for(rows, double(n), kSerialBelow, [&](int64_t r0, int64_t r1) {
            std::vector<int64_t> stamp(size_t(n), -1);
            for (int64_t r = r0; r < r1; ++r)
                bad[size_t(r)] = !put_row(pp + r * n, n, pv + r * n, po + r * n, stamp.data(), r);
        });
    }
    for (char b : bad)
        if (b) return py::none();
    return std::move(out);
}

// The gathered rows out[r, j] = v[r, perm[r, j]], or None if some row of perm is not a
// permutation of [0, n).
py::object check_apply(const py::array& v, const py::array& perm) {
    expect_bits(v, "v");
    if (perm.ndim() != 2 || !(perm.flags() & py::array::c_style) || !perm.dtype().is(py::dtype::of<int64_t>()))
        throw py::value_error("perm must be a C-contiguous 2-D int64 array");
    if (v.shape(0) != perm.shape(0) || v.shape(1) != perm.shape(1))
        throw py::value_error("v and perm must have the same shape");
    py::array_t<int64_t> p = py::reinterpret_borrow<py::array_t<int64_t>>(perm);
    switch (v.itemsize()) {
        case 1: return check_apply_bits<uint8_t>(v, p);
        case 2: return check_apply_bits<uint16_t>(v, p);
        case 4: return check_apply_bits<uint32_t>(v, p);
        case 8: return check_apply_bits<uint64_t>(v, p);
    }
    throw py::value_error("bit patterns must be 1, 2, 4 or 8 bytes wide");
}

template <class T>
py::array_t<bool> tied_rows_bits(const py::array& v) {
    const int64_t rows = v.shape(0), n = v.shape(1);
    py::array_t<bool> out(rows);
    const T* pv = static_cast<const T*>(v.data());
    bool* po = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        parallel_for(rows, double(n), kSerialBelow, [&](int64_t r0, int64_t r1) {
            KeyClasses table(n);
            for (int64_t r = r0; r < r1; ++r) po[r] = row_has_ties(pv + r * n, n, table);
        });
    }
    return out;
}

// Per row: does some bit pattern occur more than once?
py::array_t<bool> tied_rows(const py::array& v) {
    expect_bits(v, "v");
    switch (v.itemsize()) {
        case 1: return tied_rows_bits<uint8_t>(v);
        case 2: return tied_rows_bits<uint16_t>(v);
        case 4: return tied_rows_bits<uint32_t>(v);
        case 8: return tied_rows_bits<uint64_t>(v);
    }
    throw py::value_error("bit patterns must be 1, 2, 4 or 8 bytes wide");
}

}  // namespace

void init_perm(py::module_& m) {
    m.def("find", &find, py::arg("v"), py::arg("w"),
          "(perm, ok): the canonical permutation of each row by hashing bit patterns (perm.find_reference's)");
    m.def("check_apply", &check_apply, py::arg("v"), py::arg("perm"),
          "rows gathered by perm (perm.check then perm.apply), or None if a row is not a permutation");
    m.def("tied_rows", &tied_rows, py::arg("v"), "per row: does a bit pattern repeat (perm.tied_rows_reference's)");
}

}  // namespace pc
