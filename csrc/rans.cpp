// permcodec._core: the `uniform` codec (formats/codecs/uniform.md) on the shared rANS coder.
//
// Port of the numba encoder/decoder that permcodec/codecs/uniform.py held; uniform.py's
// decode_reference is the executable spec and the tests compare this code to it bit for bit.
// Segments are independent: they are split among threads (pc::parallel_for), each thread with one
// row-sized scratch, so results never depend on the thread count. Every payload read is
// bounds-checked (rans.h); the GIL is released while coding.
#include "common.h"
#include "rans.h"

#include <cstring>
#include <memory>

namespace pc {
namespace {

using rans::LOW;
using rans::M;
using rans::PREC;

// Keys with at most 16 bits index a direct table when rows are long enough to pay for it.
constexpr int64_t DIRECT_MIN_N = 1024;
// Segments below this many symbols in all are coded on the calling thread.
constexpr double SERIAL_BELOW = double(1 << 17);

int64_t hash_slots(int64_t n) {
    int64_t t = 2;
    while (t < 2 * n) t *= 2;
    return t;
}

bool use_direct(int64_t n, int itemsize) { return itemsize == 1 || (itemsize == 2 && n >= DIRECT_MIN_N); }

int64_t table_slots(int64_t n, int itemsize) {
    return use_direct(n, itemsize) ? (int64_t(1) << (8 * itemsize)) : hash_slots(n);
}

// int32 arrays of a row's scratch: table, cls, code, items, ties (+ where, cum, freq to encode).
int64_t scratch_bytes(int64_t n, int itemsize, bool encoding) {
    int64_t words = table_slots(n, itemsize) + 4 * n + 5 + (encoding ? 3 * (n + 1) : 0);
    return 4 * words;
}

// A row's multiset structure (uniform.md §4), rebuilt per row in one thread's scratch:
// items[0, S) is the pool of singleton sources (increasing), items[S0, n) the tie classes'
// sources (class by class, each increasing); tie class t has rem[t] items left, the next source
// items[S0 + used[t]], and a Fenwick tree over rem. code[c] is tie index of class id c, or -1.
template <class KeyT>
struct Row {
    int64_t n;
    bool direct;
    int64_t hbits = 0;
    std::vector<int32_t> table, cls, code, items, ties;
    int32_t *rem = nullptr, *used = nullptr, *fen = nullptr;
    int64_t S = 0, S0 = 0, K = 0, top = 0;

    explicit Row(int64_t n_) : n(n_), direct(use_direct(n_, sizeof(KeyT))) {
        int64_t slots = table_slots(n, sizeof(KeyT));
        while ((int64_t(1) << hbits) < slots) ++hbits;
        table.assign(size_t(slots), -1);
        cls.resize(size_t(n) + 1);
        code.resize(size_t(n) + 1);
        items.resize(size_t(n) + 1);
        ties.resize(size_t(n) + 2);
    }

    // Class ids in order of first occurrence into cls (the table maps a key to its class id, or
    // in the hash case to its first source); class sizes into code. Returns the class count.
    int64_t classify(const KeyT* key) {
        int32_t* const count = code.data();
        int32_t* const cl = cls.data();
        int32_t* const tab = table.data();
        int32_t nid = 0;
        if (direct) {
            for (int64_t i = 0; i < n; ++i) {
                int32_t& e = tab[size_t(key[i])];
                if (e < 0) {
                    e = nid;
                    count[nid++] = 0;
                }
                cl[i] = e;
                ++count[e];
            }
            for (int64_t i = 0; i < n; ++i) tab[size_t(key[i])] = -1;
            return nid;
        }
        std::fill(table.begin(), table.end(), -1);
        const uint64_t mask = (uint64_t(1) << hbits) - 1;
        const int shift = 64 - int(hbits);
        for (int64_t i = 0; i < n; ++i) {
            const uint64_t k = uint64_t(key[i]);
            uint64_t h = (k * 0x9E3779B97F4A7C15ull) >> shift;
            for (;;) {
                const int32_t f = tab[h];
                if (f < 0) {
                    tab[h] = int32_t(i);
                    cl[i] = nid;
                    count[nid++] = 1;
                    break;
                }
                if (uint64_t(key[f]) == k) {
                    const int32_t c = cl[f];
                    cl[i] = c;
                    ++count[c];
                    break;
                }
                h = (h + 1) & mask;
            }
        }
        return nid;
    }

    // Build the row's items and tie classes from its keys.
    void setup(const KeyT* key) {
        const int64_t nid = classify(key);
        int32_t* const it = items.data();
        K = 0;
        top = 0;
        if (nid == n) {  // all distinct: the pool is every source
            for (int64_t i = 0; i < n; ++i) it[i] = int32_t(i);
            S = S0 = n;
            return;
        }
        int32_t* const code_ = code.data();  // holds the class sizes until it becomes the tie index
        const int32_t* const cl = cls.data();
        int32_t* const rm = rem = ties.data();
        int32_t* const us = used = ties.data() + (n / 2 + 1);
        int32_t k = 0, tied = 0;
        for (int64_t c = 0; c < nid; ++c) {
            const int32_t size = code_[c];
            if (size > 1) {
                rm[k] = size;
                us[k] = tied;
                tied += size;
                code_[c] = k++;
            } else {
                code_[c] = -1;
            }
        }
        K = k;
        S = S0 = n - tied;
        int32_t* const tail = it + S0;
        int32_t s = 0;
        for (int64_t i = 0; i < n; ++i) {
            const int32_t t = code_[cl[i]];
            if (t < 0)
                it[s++] = int32_t(i);
            else
                tail[us[t]++] = int32_t(i);
        }
        for (int64_t t = 0; t < K; ++t) us[t] -= rm[t];
        top = rans::fen_top(K);
    }
};

// ---- decoding ---------------------------------------------------------------------------------

enum DecodeError { OK = 0, BAD_STATE = 1, EARLY_END = 2, BAD_END = 3 };

// Rows [lo, hi) of one segment from words[wlo, whi); out[row][i] = the source index (perm) or
// the source's key (values). Every decoded row is a permutation by construction (uniform.md §4:
// j < r always, a pool item leaves the pool, a class hands out each source once), so the gather
// needs no separate check.
template <class KeyT, class OutT, bool PERM>
int decode_segment(Row<KeyT>& row, const KeyT* keys, int64_t lo, int64_t hi, int lanes, const uint32_t* words,
                   int64_t wlo, int64_t whi, OutT* out) {
    const int64_t n = row.n;
    rans::Decoder dec;
    if (!dec.open(words, wlo, whi, lanes)) return BAD_STATE;
    for (int64_t r0 = lo; r0 < hi; ++r0) {
        const KeyT* key = keys + r0 * n;
        OutT* o = out + r0 * n;
        row.setup(key);
        int64_t S = row.S;
        const int64_t S0 = row.S0, K = row.K, top = row.top;
        int32_t* items = row.items.data();
        int32_t *rem = row.rem, *used = row.used, *fen = row.cls.data();  // cls is free after setup
        if (K) rans::fen_build(fen, rem, K);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = n - i;
            const double ri = 1.0 / double(r);
            const int64_t s = dec.slot();
            const int64_t j = ((s + 1) * r - 1) >> PREC;
            int64_t a, e, src;
            if (j < S) {
                a = j;
                e = j + 1;
                src = items[j];
                items[j] = items[--S];
            } else {
                int64_t pre;
                int64_t t = rans::fen_find(fen, K, top, j - S, pre);
                a = S + pre;
                e = a + rem[t];
                src = items[S0 + used[t]++];
                --rem[t];
                rans::fen_add(fen, K, t, int32_t(-1));
            }
            const int64_t c0 = rans::scaled(a, r, ri);
            if (!dec.step(s, c0, rans::scaled(e, r, ri) - c0)) return EARLY_END;
            if (PERM)
                o[i] = OutT(src);
            else
                o[i] = OutT(key[src]);
        }
    }
    return dec.finished() ? OK : BAD_END;
}

const char* decode_message(int code) {
    switch (code) {
        case BAD_STATE: return "a lane's initial state is outside [2**31, 2**63)";
        case EARLY_END: return "the stream ends early";
        default: return "the stream does not end in the initial state";
    }
}

// Segment bounds (nseg + 1 word offsets) after checking that the segments tile the payload
// exactly and each holds its lanes' states (uniform.md §2).
std::vector<int64_t> unframe(const uint32_t* words, int64_t nw, int64_t nseg, int lanes) {
    if (nseg < 1) {
        if (nw) throw format_error("rANS payload has data but the tensor has no symbols");
        return {0};
    }
    if (nw < nseg - 1) throw format_error("rANS payload too short for its " + std::to_string(nseg - 1) +
                                          "-word segment table");
    std::vector<int64_t> bounds(size_t(nseg) + 1);
    bounds[0] = nseg - 1;
    for (int64_t g = 0; g < nseg; ++g) {
        int64_t end = g + 1 < nseg ? bounds[g] + int64_t(words[g]) : nw;
        if (end > nw || end - bounds[g] < 2 * int64_t(lanes))
            throw format_error("rANS segment table does not tile the payload (a segment is shorter than "
                               "its lanes' states or the lengths overrun the payload)");
        bounds[g + 1] = end;
    }
    return bounds;
}

int64_t segments(int64_t rows, int64_t n, int64_t seg) { return rows * n == 0 ? 0 : (rows + seg - 1) / seg; }

void check_layout(int64_t rows, int64_t n, int64_t lanes, int64_t seg) {
    if (lanes < 1 || lanes > rans::MAX_LANES || seg < 1 || seg > std::max<int64_t>(rows, 1) || n > M)
        throw format_error("uniform codec layout out of range (lanes " + std::to_string(lanes) + ", segment_rows " +
                           std::to_string(seg) + ", n " + std::to_string(n) + ")");
}

// The payload's words, 4-byte aligned (a copy only when the buffer is not).
struct Words {
    std::vector<uint32_t> copy;
    const uint32_t* p = nullptr;
    int64_t size = 0;
    Words(const py::buffer_info& b) {
        int64_t bytes = b.size * b.itemsize;
        if (bytes % 4) throw format_error("rANS payload is " + std::to_string(bytes) +
                                          " bytes, not a whole number of 32-bit words");
        size = bytes / 4;
        if (reinterpret_cast<uintptr_t>(b.ptr) % alignof(uint32_t)) {
            copy.resize(size_t(size));
            if (size) std::memcpy(copy.data(), b.ptr, size_t(bytes));
            p = copy.data();
        } else {
            p = static_cast<const uint32_t*>(b.ptr);
        }
    }
};

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the payload's words are read as little-endian");

int threads_for(int64_t nseg, int64_t seg, int64_t n) {
    if (nseg <= 1 || double(nseg) * double(seg) * double(n) < SERIAL_BELOW) return 1;
    return int(std::min<int64_t>(nseg, num_threads()));
}

template <class KeyT, class OutT, bool PERM>
void decode_all(const KeyT* keys, int64_t rows, int64_t n, int lanes, int64_t seg, const Words& w,
                const std::vector<int64_t>& bounds, OutT* out) {
    const int64_t nseg = int64_t(bounds.size()) - 1;
    std::vector<int> err(size_t(nseg), OK);
    parallel_for(nseg, double(seg) * double(n), threads_for(nseg, seg, n) > 1 ? 0.0 : 1e300,
                 [&](int64_t g0, int64_t g1) {
                     Row<KeyT> row(n);
                     for (int64_t g = g0; g < g1; ++g) {
                         err[g] = decode_segment<KeyT, OutT, PERM>(row, keys, g * seg, std::min(rows, (g + 1) * seg),
                                                                   lanes, w.p, bounds[g], bounds[g + 1], out);
                         if (err[g]) return;
                     }
                 });
    for (int64_t g = 0; g < nseg; ++g)
        if (err[g])
            throw format_error("uniform payload segment " + std::to_string(g) + " is corrupt: " +
                               decode_message(err[g]));
}

void check_rows(const py::array& a, const char* what, int64_t rows, int64_t n) {
    if (a.ndim() != 2 || a.shape(0) != rows || a.shape(1) != n || !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string(what) + " must be a C-contiguous (rows, n) array");
}

// uniform_decode(keys, payload, lanes, segment_rows, out, perm): decode into out (rows, n): the
// permutation (int64) if perm, else the rearranged keys (keys' dtype).
void uniform_decode(py::array keys, py::buffer payload, int64_t lanes, int64_t seg, py::array out, bool perm) {
    if (keys.ndim() != 2) throw std::invalid_argument("keys must be (rows, n)");
    const int64_t rows = keys.shape(0), n = keys.shape(1);
    const int isz = int(keys.itemsize());
    check_rows(keys, "keys", rows, n);
    check_rows(out, "out", rows, n);
    if (!out.writeable()) throw std::invalid_argument("out must be writeable");
    if (perm ? out.itemsize() != 8 : out.itemsize() != isz)
        throw std::invalid_argument("out has the wrong item size");
    if (isz != 1 && isz != 2 && isz != 4 && isz != 8) throw std::invalid_argument("keys must be 1, 2, 4 or 8 bytes");
    check_layout(rows, n, lanes, seg);
    py::buffer_info pb = payload.request();
    Words w(pb);
    const int64_t nseg = segments(rows, n, seg);
    std::vector<int64_t> bounds = unframe(w.p, w.size, nseg, int(lanes));
    if (nseg == 0) return;
    const void* kp = keys.data();
    void* op = out.mutable_data();
    py::gil_scoped_release nogil;
    auto run = [&](auto key_tag) {
        using KeyT = decltype(key_tag);
        const KeyT* k = static_cast<const KeyT*>(kp);
        if (perm)
            decode_all<KeyT, int64_t, true>(k, rows, n, int(lanes), seg, w, bounds, static_cast<int64_t*>(op));
        else
            decode_all<KeyT, KeyT, false>(k, rows, n, int(lanes), seg, w, bounds, static_cast<KeyT*>(op));
    };
    switch (isz) {
        case 1: run(uint8_t()); break;
        case 2: run(uint16_t()); break;
        case 4: run(uint32_t()); break;
        default: run(uint64_t()); break;
    }
}

// ---- encoding ---------------------------------------------------------------------------------

// Segment rows [lo, hi) of perm into enc (rows last to first, each row's symbols computed first to
// last then pushed last to first); false if a perm row is not a permutation of range(n).
template <class KeyT>
bool encode_segment(Row<KeyT>& row, std::vector<int32_t>& scratch, const KeyT* keys, const int64_t* perm,
                    int64_t lo, int64_t hi, rans::Encoder& enc) {
    const int64_t n = row.n;
    int32_t* where = scratch.data();
    int32_t* cum = where + (n + 1);
    int32_t* freq = cum + (n + 1);
    enc.reset();
    int lane = int(((hi - lo) * n - 1) % enc.lanes);
    for (int64_t r0 = hi - 1; r0 >= lo; --r0) {
        row.setup(keys + r0 * n);
        const int64_t* p = perm + r0 * n;
        int64_t S = row.S;
        const int64_t K = row.K;
        int32_t* items = row.items.data();
        int32_t *rem = row.rem, *cls = row.cls.data(), *code = row.code.data();
        for (int64_t q = 0; q < S; ++q) where[items[q]] = int32_t(q);
        int32_t* tree = K ? row.ties.data() + (n / 2 + 1) : nullptr;  // `used` is not needed to encode
        if (K) rans::fen_build(tree, rem, K);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = n - i;
            const double ri = 1.0 / double(r);
            const int64_t src = p[i];
            if (src < 0 || src >= n) return false;
            const int32_t t = K ? code[cls[src]] : -1;
            int64_t a, e;
            if (t < 0) {
                a = where[src];
                if (a >= S || items[a] != src) return false;  // a singleton taken twice
                e = a + 1;
                int32_t last = items[--S];
                items[a] = last;
                where[last] = int32_t(a);
            } else {
                if (rem[t] <= 0) return false;  // a tie class used more often than it occurs
                a = S + rans::fen_prefix(tree, t);
                e = a + rem[t];
                --rem[t];
                rans::fen_add(tree, K, t, int32_t(-1));
            }
            const int64_t c0 = rans::scaled(a, r, ri);
            cum[i] = int32_t(c0);
            freq[i] = int32_t(rans::scaled(e, r, ri) - c0);
        }
        for (int64_t i = n - 1; i >= 0; --i) {
            enc.push(lane, cum[i], freq[i]);
            if (--lane < 0) lane = enc.lanes - 1;
        }
    }
    return true;
}

template <class KeyT>
std::vector<std::vector<uint32_t>> encode_all(const KeyT* keys, const int64_t* perm, int64_t rows, int64_t n,
                                              int lanes, int64_t seg, int64_t& bad_row) {
    const int64_t nseg = segments(rows, n, seg);
    std::vector<std::vector<uint32_t>> out(static_cast<size_t>(nseg));
    std::vector<int64_t> bad(size_t(nseg), -1);
    parallel_for(nseg, double(seg) * double(n), threads_for(nseg, seg, n) > 1 ? 0.0 : 1e300,
                 [&](int64_t g0, int64_t g1) {
                     Row<KeyT> row(n);
                     std::vector<int32_t> scratch(size_t(3 * (n + 1)));
                     rans::Encoder enc(lanes);
                     for (int64_t g = g0; g < g1; ++g) {
                         int64_t lo = g * seg, hi = std::min(rows, lo + seg);
                         if (!encode_segment(row, scratch, keys, perm, lo, hi, enc)) {
                             bad[g] = lo;
                             return;
                         }
                         out[g].resize(size_t(enc.size()));
                         enc.flush(out[g].data());
                     }
                 });
    bad_row = -1;
    for (int64_t g = 0; g < nseg; ++g)
        if (bad[g] >= 0) {
            bad_row = bad[g];
            break;
        }
    return out;
}

// uniform_encode(keys, perm, lanes, segment_rows) -> payload bytes (segment table + segments).
py::bytes uniform_encode(py::array keys, py::array perm, int64_t lanes, int64_t seg) {
    if (keys.ndim() != 2) throw std::invalid_argument("keys must be (rows, n)");
    const int64_t rows = keys.shape(0), n = keys.shape(1);
    const int isz = int(keys.itemsize());
    check_rows(keys, "keys", rows, n);
    check_rows(perm, "perm", rows, n);
    if (perm.itemsize() != 8 || perm.dtype().kind() != 'i') throw std::invalid_argument("perm must be int64");
    if (isz != 1 && isz != 2 && isz != 4 && isz != 8) throw std::invalid_argument("keys must be 1, 2, 4 or 8 bytes");
    if (lanes < 1 || lanes > rans::MAX_LANES || seg < 1 || n > M)
        throw std::invalid_argument("uniform layout out of range");
    const int64_t nseg = segments(rows, n, seg);
    if (nseg == 0) return py::bytes();
    const void* kp = keys.data();
    const int64_t* pp = static_cast<const int64_t*>(perm.data());
    std::vector<std::vector<uint32_t>> segs;
    int64_t bad_row = -1;
    {
        py::gil_scoped_release nogil;
        switch (isz) {
            case 1: segs = encode_all(static_cast<const uint8_t*>(kp), pp, rows, n, int(lanes), seg, bad_row); break;
            case 2: segs = encode_all(static_cast<const uint16_t*>(kp), pp, rows, n, int(lanes), seg, bad_row); break;
            case 4: segs = encode_all(static_cast<const uint32_t*>(kp), pp, rows, n, int(lanes), seg, bad_row); break;
            default: segs = encode_all(static_cast<const uint64_t*>(kp), pp, rows, n, int(lanes), seg, bad_row); break;
        }
    }
    if (bad_row >= 0)
        throw std::invalid_argument("perm is not a permutation of each row (segment starting at row " +
                                    std::to_string(bad_row) + ")");
    int64_t total = nseg - 1;
    for (auto& s : segs) total += int64_t(s.size());
    py::bytes res(nullptr, size_t(total) * 4);
    char* dst = PyBytes_AS_STRING(res.ptr());
    for (int64_t g = 0; g + 1 < nseg; ++g) {
        uint32_t len = uint32_t(segs[g].size());
        std::memcpy(dst, &len, 4);
        dst += 4;
    }
    for (auto& s : segs) {
        std::memcpy(dst, s.data(), s.size() * 4);
        dst += s.size() * 4;
    }
    return res;
}

// Bytes uniform_decode allocates beyond its output: per decoding thread one row's scratch, plus
// the segment bounds (the payload copy, when it is unaligned, is at most the file's bytes).
int64_t uniform_scratch(int64_t rows, int64_t n, int64_t itemsize, int64_t seg) {
    const int64_t nseg = segments(rows, n, std::max<int64_t>(seg, 1));
    if (nseg == 0) return 0;
    return threads_for(nseg, seg, n) * scratch_bytes(n, int(itemsize), false) + 8 * (nseg + 1) + 4096;
}

}  // namespace

void init_rans(py::module_& m) {
    m.def("uniform_decode", &uniform_decode, py::arg("keys"), py::arg("payload"), py::arg("lanes"),
          py::arg("segment_rows"), py::arg("out"), py::arg("perm"),
          "decode a uniform payload into out: the permutation (int64) or the rearranged keys");
    m.def("uniform_encode", &uniform_encode, py::arg("keys"), py::arg("perm"), py::arg("lanes"),
          py::arg("segment_rows"), "the uniform payload of a canonical permutation");
    m.def("uniform_scratch", &uniform_scratch, py::arg("rows"), py::arg("n"), py::arg("itemsize"),
          py::arg("segment_rows"), "bytes uniform_decode allocates besides its output");
}

}  // namespace pc
