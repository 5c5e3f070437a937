// permcodec._core: the `model` encoder's frozen-column search (see _model_search.py): pairwise
// column compatibility as bitsets, the greedy clique, and the per-row repair above the exact
// budget. Plain twins in permcodec/codecs/_model_ref.py; the tests compare them.
#include "model_rows.h"

namespace pc {
namespace model {
namespace {


// ---- encoder side: the frozen-column search -------------------------------------------------
inline int popcount(uint64_t x) { return __builtin_popcountll(x); }

// Final class per position of one row (fc[q] = class of perm[q]) and the row's classes in S.
template <class T>
int64_t final_classes(const Keys<T>& key, const int64_t* prow, RowScratch& S, std::vector<int32_t>& fc) {
    int64_t n = S.n, ncls = classes(key, S);
    std::vector<int32_t>& clsof = S.fcls;
    for (int64_t q = 0; q < n; ++q) clsof[size_t(S.order[size_t(q)])] = S.cls[size_t(q)];
    for (int64_t q = 0; q < n; ++q) {
        int64_t src = prow[q];
        require(src >= 0 && src < n, "perm holds an index outside [0, n)");
        fc[size_t(q)] = clsof[size_t(src)];
    }
    return ncls;
}

// ok[p] bit q: in every row of [lo, hi), positions p and q keep their order (initial (key, index)
// order vs final class order, ties allowed). Per row, positions are visited in decreasing initial
// order with the set of those already visited (initially later) and the prefix sets
// less[f] = {q: final class of q < f}; p conflicts with the later q below its final class and
// with the earlier q above it. AND over rows, so any split of the rows gives the same sets.
template <class T>
void compat_rows(const T* keys, bool raw, const int64_t* perm, int64_t n, int64_t lo, int64_t hi, uint64_t* ok) {
    const int64_t nw = (n + 63) >> 6;
    RowScratch S(n);
    std::vector<int32_t> fc(static_cast<size_t>(n));
    std::vector<uint64_t> less(static_cast<size_t>((n + 1) * nw)), after(static_cast<size_t>(nw));
    for (int64_t row = lo; row < hi; ++row) {
        int64_t ncls = final_classes(Keys<T>{keys + row * n, raw}, perm + row * n, S, fc);
        std::fill(less.begin(), less.begin() + (ncls + 1) * nw, 0);
        for (int64_t q = 0; q < n; ++q) less[size_t((fc[size_t(q)] + 1) * nw + (q >> 6))] |= uint64_t(1) << (q & 63);
        for (int64_t f = 1; f <= ncls; ++f)
            for (int64_t w = 0; w < nw; ++w) less[size_t(f * nw + w)] |= less[size_t((f - 1) * nw + w)];
        std::fill(after.begin(), after.end(), 0);
        for (int64_t t = n - 1; t >= 0; --t) {
            int64_t p = S.order[size_t(t)], f = fc[size_t(p)];
            const uint64_t* lf = &less[size_t(f * nw)];
            const uint64_t* lf1 = &less[size_t((f + 1) * nw)];
            uint64_t* okp = ok + p * nw;
            for (int64_t w = 0; w < nw; ++w) okp[w] &= ~((after[size_t(w)] & lf[w]) | (~after[size_t(w)] & ~lf1[w]));
            okp[p >> 6] |= uint64_t(1) << (p & 63);
            after[size_t(p >> 6)] |= uint64_t(1) << (p & 63);
        }
    }
}

py::array_t<uint64_t> compat_bits(const py::array& keys_a, bool raw, const py::array_t<int64_t, py::array::c_style>& perm_a) {
    require(perm_a.ndim() == 2, "perm must be 2-d");
    const int64_t rows = perm_a.shape(0), n = perm_a.shape(1), nw = (n + 63) >> 6;
    require(n <= 1 << 16, "the frozen search takes rows of at most 65536");
    py::buffer_info kb = info2d(keys_a, rows, n, "keys");
    const int64_t* perm = perm_a.data();
    py::array_t<uint64_t> ok_a({n, nw});
    uint64_t* ok = ok_a.mutable_data();
    {
        py::gil_scoped_release nogil;
        const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), rows));
        std::vector<std::vector<uint64_t>> part(static_cast<size_t>(chunks));
        with_keys(kb, [&](auto keys) {
            parallel_for(chunks, double(rows / chunks) * double(n * nw), double(1 << 20), [&](int64_t c0, int64_t c1) {
                for (int64_t c = c0; c < c1; ++c) {
                    part[size_t(c)].assign(size_t(n * nw), ~uint64_t(0));
                    compat_rows(keys, raw, perm, n, c * rows / chunks, (c + 1) * rows / chunks, part[size_t(c)].data());
                }
            });
        });
        for (int64_t x = 0; x < n * nw; ++x) {
            uint64_t v = ~uint64_t(0);
            for (auto& pt : part) v &= pt[size_t(x)];
            ok[x] = v;
        }
        for (int64_t p = 0; p < n; ++p) {  // bits past n are never set
            if (n & 63) ok[p * nw + nw - 1] &= (uint64_t(1) << (n & 63)) - 1;
        }
    }
    return ok_a;
}

// The greedy clique on compat_bits' sets, visiting columns by decreasing degree (stable).
py::array_t<bool> clique_bits(const py::array_t<uint64_t, py::array::c_style>& ok_a, int64_t n) {
    const int64_t nw = (n + 63) >> 6;
    require(ok_a.ndim() == 2 && ok_a.shape(0) == n && ok_a.shape(1) == nw, "ok must be (n, ceil(n/64))");
    const uint64_t* ok = ok_a.data();
    py::array_t<bool> chosen_a(n);
    bool* chosen = chosen_a.mutable_data();
    std::vector<int64_t> deg(static_cast<size_t>(n), 0), idx(static_cast<size_t>(n));
    for (int64_t p = 0; p < n; ++p) {
        for (int64_t w = 0; w < nw; ++w) deg[size_t(p)] += popcount(ok[p * nw + w]);
        idx[size_t(p)] = p;
    }
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return deg[size_t(a)] > deg[size_t(b)]; });
    std::vector<uint64_t> members(static_cast<size_t>(nw), 0);
    std::fill(chosen, chosen + n, false);
    for (int64_t p : idx) {
        bool good = true;
        for (int64_t w = 0; w < nw && good; ++w) good = (ok[p * nw + w] & members[size_t(w)]) == members[size_t(w)];
        if (good) {
            chosen[p] = true;
            members[size_t(p >> 6)] |= uint64_t(1) << (p & 63);
        }
    }
    return chosen_a;
}

// Row by row, keep of the flagged columns (in initial order) a longest subsequence with
// non-decreasing final classes and unflag the others; afterwards the flagged set is valid in every
// row (a subset of a valid set stays valid). O(rows * n log n); serial (each row sees the last).
template <class T>
void repair_rows(const T* keys, bool raw, const int64_t* perm, int64_t rows, int64_t n, bool* chosen) {
    RowScratch S(n);
    std::vector<int32_t> fc(static_cast<size_t>(n));
    std::vector<int64_t> seq(static_cast<size_t>(n)), val(static_cast<size_t>(n)), tail(static_cast<size_t>(n + 1)), prev(static_cast<size_t>(n));
    std::vector<uint8_t> keep(static_cast<size_t>(n));
    for (int64_t row = 0; row < rows; ++row) {
        final_classes(Keys<T>{keys + row * n, raw}, perm + row * n, S, fc);
        int64_t m = 0;
        for (int64_t t = 0; t < n; ++t) {
            int64_t i = S.order[size_t(t)];
            if (chosen[i]) {
                seq[size_t(m)] = i;
                val[size_t(m++)] = fc[size_t(i)];
            }
        }
        int64_t best = 0;
        for (int64_t z = 0; z < m; ++z) {
            int64_t lo = 1, hi = best + 1;  // first length L whose tail value exceeds val[z]
            while (lo < hi) {
                int64_t mid = (lo + hi) >> 1;
                if (val[size_t(tail[size_t(mid)])] > val[size_t(z)])
                    hi = mid;
                else
                    lo = mid + 1;
            }
            prev[size_t(z)] = lo > 1 ? tail[size_t(lo - 1)] : -1;
            tail[size_t(lo)] = z;
            best = std::max(best, lo);
        }
        if (best == m) continue;
        for (int64_t z = 0; z < m; ++z) keep[size_t(z)] = 0;
        for (int64_t z = best ? tail[size_t(best)] : -1; z >= 0; z = prev[size_t(z)]) keep[size_t(z)] = 1;
        for (int64_t z = 0; z < m; ++z)
            if (!keep[size_t(z)]) chosen[seq[size_t(z)]] = false;
    }
}

void repair(const py::array& keys_a, bool raw, const py::array_t<int64_t, py::array::c_style>& perm_a,
            py::array chosen_a) {
    require(perm_a.ndim() == 2, "perm must be 2-d");
    const int64_t rows = perm_a.shape(0), n = perm_a.shape(1);
    py::buffer_info kb = info2d(keys_a, rows, n, "keys");
    py::buffer_info cb = chosen_a.request(true);  // in place: a bool array of n, no converted copy
    require(cb.format == "?" && cb.ndim == 1 && cb.shape[0] == n && (n == 0 || cb.strides[0] == 1),
            "chosen must be a contiguous bool array of one flag per column");
    bool* chosen = (bool*)cb.ptr;
    const int64_t* perm = perm_a.data();
    py::gil_scoped_release nogil;
    with_keys(kb, [&](auto keys) { repair_rows(keys, raw, perm, rows, n, chosen); });
}

// (order, cstart[:ncls+1]) of one row of keys: the row sort the coders use (for tests).
py::tuple sorted_classes(const py::array& keys_a, bool raw) {
    py::buffer_info kb = keys_a.request();
    require(kb.ndim == 1 && (kb.shape[0] == 0 || kb.strides[0] == kb.itemsize), "keys must be a contiguous row");
    const int64_t n = kb.shape[0];
    RowScratch S(n);
    int64_t ncls = 0;
    with_keys(kb, [&](auto keys) { ncls = classes(Keys<std::remove_const_t<std::remove_pointer_t<decltype(keys)>>>{keys, raw}, S); });
    py::array_t<int64_t> order(n), cstart(ncls + 1);
    std::copy(S.order.begin(), S.order.end(), order.mutable_data());
    std::copy(S.cstart.begin(), S.cstart.begin() + ncls + 1, cstart.mutable_data());
    return py::make_tuple(order, cstart);
}

}  // namespace

void init_search(py::module_& m) {
    m.def("model_compat_bits", &compat_bits, py::arg("keys"), py::arg("raw"), py::arg("perm"),
          "pairwise compatible columns as bitsets (n, ceil(n/64))");
    m.def("model_clique_bits", &clique_bits, py::arg("ok"), py::arg("n"), "greedy clique of compat_bits' sets");
    m.def("model_repair", &repair, py::arg("keys"), py::arg("raw"), py::arg("perm"), py::arg("chosen"),
          "unflag columns until the flagged set keeps its order in every row (in place)");
    m.def("model_row_classes", &sorted_classes, py::arg("keys"), py::arg("raw"), "(order, class starts) of one row");
}

}  // namespace model
}  // namespace pc
