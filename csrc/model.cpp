// permcodec._core: the `model` codec (formats/codecs/model.md is normative; decode_reference in
// permcodec/codecs/_model_ref.py is its Python twin, compared bit for bit in the tests).
//
// Symbol model: offset buckets around a centre, six adaptive count tables (one per context),
// frozen columns and neighbour lags; the rANS coder and the Fenwick tree come from rans.h, the
// row sort from model_rows.h. Everything is integer arithmetic except Window::muldiv's double
// estimate, which is corrected exactly. Segments are independent: they run in parallel and never
// change a bit.
#include "model_rows.h"
#include "rans.h"

#include <limits>

namespace pc {
namespace model {
namespace {

using rans::M;
constexpr int SIDE = 56;            // magnitude buckets per sign: enough for offsets below 2^28
constexpr int NB = 2 * SIDE;        // bucket ids per context
constexpr int PB = NB + 1;          // prefix entries per context
constexpr int PS = (PB + 3) & ~3;   // a context's stride in the tables (a whole number of SIMD lanes)
constexpr int NCTX = 6;             // contexts (tables)
constexpr int32_t INC = 24;         // count added to the coded bucket
constexpr int32_t LIMIT = 1 << 16;  // a table's counts are halved (rounding up) above this sum
constexpr int64_t MAX_N = int64_t(1) << 28;  // every item needs a slot of M = 2^28
constexpr int32_t NOT_DONE = std::numeric_limits<int32_t>::min();  // disp of an undecoded position

// ---- offset buckets (model.md §5b) ----------------------------------------------------------
// Magnitude bucket of u >= 0: 0, 1, then two buckets per octave (2, 3 | 4-5, 6-7 | ...).
inline int bucket(int64_t u) {
    if (u < 2) return int(u);
    int e = 63 - __builtin_clzll(uint64_t(u));
    return 2 * e + int((u >> (e - 1)) & 1);
}

// (lo, hi) magnitudes of bucket b, inclusive.
inline void bucket_range(int b, int64_t& lo, int64_t& hi) {
    if (b < 2) {
        lo = hi = b;
        return;
    }
    int e = b >> 1;
    lo = int64_t(2 | (b & 1)) << (e - 1);
    hi = lo + (int64_t(1) << (e - 1)) - 1;
}

// The coders keep, per context, the counts in *layout order* (offset order): layout index
// SIDE - 1 - B holds the negative bucket of magnitude B, SIDE + B the positive one, so the valid
// buckets of a symbol are one contiguous layout range [xs, xe) and model.md §6's running sums are
// differences of one prefix-sum array P (P[x] = counts of layout indices < x). Closed forms:
//     G_x = (d0_x - (v - C)) + floor(Kp_x E / W),  T_x = w_x + floor(K_x E / W) - floor(Kp_x E / W)
// with Kp_x = P[x] - P[xs], K_x = P[x + 1] - P[xs], W = P[xe] - P[xs]: O(1) per bucket.
inline int layout(int64_t d) { return d >= 0 ? SIDE + bucket(d) : SIDE - 1 - bucket(-d - 1); }

// One symbol's valid offsets and window over the layout (model.md §5, §6).
struct Window {
    int64_t c, vlo, r;  // centre, first valid item, remaining items
    int xs, xe;         // valid layout range
    int64_t base, W, E;
    double winv;
    const int32_t* P;   // the context's prefix sums

    Window(const int32_t* Pc, int64_t c_, int64_t vlo_, int64_t r_) : c(c_), vlo(vlo_), r(r_), P(Pc) {
        xs = c > vlo ? SIDE - (bucket(c - vlo - 1) + 1) : SIDE;
        xe = SIDE + bucket(r - 1 - c) + 1;
        base = P[xs];
        W = int64_t(P[xe]) - base;
        winv = 1.0 / double(W);
        E = M - (r - vlo);
    }
    // floor(K * E / W) for 0 <= K <= W <= 2^17 (K * E < 2^45 is exact in binary64: the double
    // quotient is off by at most one, then corrected exactly).
    int64_t muldiv(int64_t K) const {
        int64_t num = K * E;
        int64_t q = int64_t(double(num) * winv);
        int64_t rest = num - q * W;
        if (rest < 0)
            --q;
        else if (rest >= W)
            ++q;
        return q;
    }
    // First valid offset d0 and valid width w of layout bucket x.
    void span(int x, int64_t& d0, int64_t& w) const {
        int64_t ulo, uhi;
        if (x >= SIDE) {
            bucket_range(x - SIDE, ulo, uhi);
            d0 = ulo;
            w = std::min(uhi, r - 1 - c) - ulo + 1;
        } else {
            bucket_range(SIDE - 1 - x, ulo, uhi);
            uhi = std::min(uhi, c - vlo - 1);
            d0 = -uhi - 1;
            w = uhi - ulo + 1;
        }
    }
    struct Slots {
        int64_t G, T, d0, w;
    };
    Slots slots(int x) const {
        Slots s;
        span(x, s.d0, s.w);
        int64_t q0 = muldiv(int64_t(P[x]) - base), q1 = muldiv(int64_t(P[x + 1]) - base);
        s.G = s.d0 + c - vlo + q0;
        s.T = s.w + q1 - q0;
        return s;
    }
    // F(j): the first slot of item j (F(r) = M), reusing `near` when j's offset falls in it.
    int64_t cdf(int64_t j, const Slots& near) const {
        if (j == r) return M;
        int64_t d = j - c;
        Slots s = (near.d0 <= d && d < near.d0 + near.w) ? near : slots(layout(d));
        return s.w == 1 ? s.G : s.G + ((d - s.d0) * s.T) / s.w;
    }
    // The valid layout bucket holding slot s: the last whose G <= s (G increases with x).
    int find(int64_t s) const {
        int lo = xs, hi = xe - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            int64_t d0, w;
            span(mid, d0, w);
            int64_t off = s - (d0 + c - vlo);
            if (off >= 0 && (int64_t(P[mid]) - base) * E < (off + 1) * W)
                lo = mid;
            else
                hi = mid - 1;
        }
        return lo;
    }
};

// Add INC to the bucket of the coded range [a, e)'s offset (0 if it holds the centre, else its end
// nearest the centre); halve the context's counts (rounding up) when their sum exceeds LIMIT.
inline void credit(int32_t* Q, int64_t a, int64_t e, int64_t c) {
    int64_t d = (a <= c && c < e) ? 0 : (a > c ? a - c : e - 1 - c);
    const int32_t x = layout(d);
    for (int32_t y = 0; y < PS; ++y) Q[y] += (y > x && y < PB) ? INC : 0;  // fixed count: vectorized
    if (Q[NB] > LIMIT) {
        int32_t prev = 0, acc = 0;
        for (int y = 1; y < PB; ++y) {
            int32_t cy = Q[y] - prev;
            prev = Q[y];
            acc += (cy + 1) >> 1;
            Q[y] = acc;
        }
    }
}

inline void tables_init(int32_t* P) {
    for (int k = 0; k < NCTX; ++k)
        for (int y = 0; y < PS; ++y) P[k * PS + y] = std::min(y, PB - 1);
}


// Fresh state of a row: every class full, no position decoded; returns the class count.
template <class T>
int64_t row_start(const Keys<T>& key, RowScratch& S) {
    int64_t ncls = classes(key, S);
    for (int64_t c = 0; c < ncls; ++c) S.rem[size_t(c)] = S.cstart[size_t(c) + 1] - S.cstart[size_t(c)];
    std::fill(S.disp.begin(), S.disp.end(), NOT_DONE);
    rans::fen_build(S.fen.data(), S.rem.data(), ncls);
    return ncls;
}

// Context, first valid item and centre of position i = order[t] (model.md §5).
struct Ctx {
    int k;
    int64_t vlo, c;
};
inline Ctx context(const RowScratch& S, int64_t t, int64_t i, int64_t r, const uint8_t* frozen, const int64_t* lags,
                   int nlags, int64_t lastcls) {
    const int64_t n = S.n;
    if (frozen[i]) {
        int64_t v = rans::fen_prefix(S.fen.data(), lastcls);
        return {1, v, v};
    }
    int64_t acc = 0, nav = 0;
    for (int k = 0; k < nlags; ++k) {
        int64_t L = lags[k];
        if (i - L >= 0 && S.disp[size_t(i - L)] != NOT_DONE) {
            acc += S.disp[size_t(i - L)];
            ++nav;
        }
        if (i + L < n && S.disp[size_t(i + L)] != NOT_DONE) {
            acc += S.disp[size_t(i + L)];
            ++nav;
        }
    }
    if (nav == 0) return {0, 0, 0};
    int64_t q = acc / nav;
    if ((acc % nav != 0) && (acc < 0)) --q;  // floor division
    int64_t P = std::min(std::max(t + q, int64_t(0)), n - 1);
    int64_t c = std::min(rans::fen_prefix(S.fen.data(), S.cls[size_t(P)]), r - 1);
    return {1 + int(std::min<int64_t>(nav, 4)), 0, c};
}

// After coding position i = order[t] with final class cf (model.md §7 steps 4-5).
inline void row_step(RowScratch& S, int64_t ncls, int64_t t, int64_t i, int64_t cf, const uint8_t* frozen,
                     int64_t& lastcls) {
    S.rem[size_t(cf)] -= 1;
    rans::fen_add(S.fen.data(), ncls, cf, int32_t(-1));
    S.disp[size_t(i)] = S.cstart[size_t(cf)] - S.cstart[size_t(S.cls[size_t(t)])];
    if (frozen[i]) lastcls = cf;
}


struct Side {  // frozen bitmap and lags, checked
    std::vector<uint8_t> frozen;
    std::vector<int64_t> lags;
};
Side side(const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& frozen,
          const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lags, int64_t n) {
    require(frozen.ndim() == 1 && frozen.shape(0) == n, "frozen must have one flag per column");
    require(lags.ndim() == 1 && lags.shape(0) <= 4, "at most 4 lags");
    Side s{std::vector<uint8_t>(frozen.data(), frozen.data() + n),
           std::vector<int64_t>(lags.data(), lags.data() + lags.shape(0))};
    for (int64_t L : s.lags) require(L >= 1 && L < std::max<int64_t>(n, 2), "lags must be in [1, n-1]");
    return s;
}

// ---- encoder --------------------------------------------------------------------------------
// Code rows [lo, hi) into one segment; false if the frozen set does not hold in some row.
template <class T>
bool encode_segment(const T* keys, bool raw, const int64_t* perm, int64_t n, const Side& sd, int64_t lo, int64_t hi,
                    int lanes, std::vector<uint32_t>& seg_out) {
    RowScratch S(n);
    std::vector<int32_t> tables(NCTX * PS);
    tables_init(tables.data());
    const int64_t K = (hi - lo) * n;
    std::vector<uint32_t> cum(static_cast<size_t>(K)), freq(static_cast<size_t>(K));
    std::vector<int32_t>& clsof = S.fcls;  // class of each source position
    const uint8_t* frozen = sd.frozen.data();
    int64_t k = 0;
    for (int64_t row = lo; row < hi; ++row) {
        Keys<T> key{keys + row * n, raw};
        int64_t ncls = row_start(key, S);
        for (int64_t q = 0; q < n; ++q) clsof[size_t(S.order[size_t(q)])] = S.cls[size_t(q)];
        const int64_t* prow = perm + row * n;
        int64_t lastcls = 0;
        for (int64_t t = 0; t < n; ++t) {
            int64_t r = n - t, i = S.order[size_t(t)];
            Ctx cx = context(S, t, i, r, frozen, sd.lags.data(), int(sd.lags.size()), lastcls);
            int64_t src = prow[i];
            require(src >= 0 && src < n, "perm holds an index outside [0, n)");
            int64_t cf = clsof[size_t(src)];
            require(S.rem[size_t(cf)] > 0, "a row of perm is not a permutation");
            int64_t a = rans::fen_prefix(S.fen.data(), cf), e = a + S.rem[size_t(cf)];
            if (a < cx.vlo) return false;  // the frozen set does not hold in this row
            int32_t* Q = tables.data() + cx.k * PS;
            Window win(Q, cx.c, cx.vlo, r);
            int64_t da = a - cx.c;
            Window::Slots sl = win.slots(layout(da));
            int64_t c0 = sl.w == 1 ? sl.G : sl.G + ((da - sl.d0) * sl.T) / sl.w;
            cum[size_t(k)] = uint32_t(c0);
            freq[size_t(k)] = uint32_t(win.cdf(e, sl) - c0);
            ++k;
            credit(Q, a, e, cx.c);
            row_step(S, ncls, t, i, cf, frozen, lastcls);
        }
    }
    rans::Encoder enc(lanes);
    enc.emitted.reserve(size_t(K));
    for (int64_t q = K - 1; q >= 0; --q) enc.push(int(q % lanes), cum[size_t(q)], freq[size_t(q)]);
    seg_out.resize(size_t(enc.size()));
    enc.flush(seg_out.data());
    return true;
}

// The payload (segment table + segments), or None if the frozen set does not hold.
py::object encode(const py::array& keys_a, bool raw, const py::array_t<int64_t, py::array::c_style>& perm_a,
                  const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& frozen_a,
                  const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lags_a, int64_t seg, int lanes) {
    require(perm_a.ndim() == 2, "perm must be 2-d");
    const int64_t rows = perm_a.shape(0), n = perm_a.shape(1);
    require(n <= MAX_N, "rows are at most 2^28 long");
    require(lanes >= 1 && lanes <= rans::MAX_LANES && seg >= 1, "bad lanes or segment_rows");
    py::buffer_info kb = info2d(keys_a, rows, n, "keys");
    info2d(perm_a, rows, n, "perm");
    Side sd = side(frozen_a, lags_a, n);
    const int64_t nseg = rows * n == 0 ? 0 : (rows + seg - 1) / seg;
    std::vector<std::vector<uint32_t>> segs(static_cast<size_t>(nseg));
    std::vector<uint8_t> ok(static_cast<size_t>(nseg), 1);
    const int64_t* perm = perm_a.data();
    {
        py::gil_scoped_release nogil;
        with_keys(kb, [&](auto keys) {
            parallel_for(nseg, double(seg * n), double(1 << 16), [&](int64_t g0, int64_t g1) {
                for (int64_t g = g0; g < g1; ++g)
                    ok[size_t(g)] = encode_segment(keys, raw, perm, n, sd, g * seg, std::min(rows, (g + 1) * seg),
                                                   lanes, segs[size_t(g)]);
            });
        });
    }
    for (uint8_t o : ok)
        if (!o) return py::none();
    std::string out;
    size_t total = nseg ? size_t(nseg - 1) : 0;
    for (auto& s : segs) total += s.size();
    out.reserve(total * 4);
    auto put = [&](uint32_t w) {
        char b[4] = {char(w & 255), char((w >> 8) & 255), char((w >> 16) & 255), char(w >> 24)};
        out.append(b, 4);
    };
    for (int64_t g = 0; g + 1 < nseg; ++g) {
        require(segs[size_t(g)].size() <= 0xFFFFFFFFu, "a segment exceeds 2^32 words (choose smaller segment_rows)");
        put(uint32_t(segs[size_t(g)].size()));
    }
    for (auto& s : segs)
        for (uint32_t w : s) put(w);
    return py::bytes(out);
}

// ---- decoder --------------------------------------------------------------------------------
const char* const ERRORS[] = {"", "a lane's initial state is outside [2**31, 2**63)", "the stream ends early",
                              "the stream does not end in the initial state", "a frozen position has no valid item left"};

// Decode rows [lo, hi) from words[wlo, whi); writes out[row, i] = src[row, perm[i]] where
// src is the row's values (gather) or, with gather false, the permutation itself. Returns 0 or an
// error code (index into ERRORS).
template <class T, class O>
int decode_segment(const T* keys, int64_t n, const Side& sd, int64_t lo, int64_t hi, int lanes,
                   const uint32_t* words, int64_t wlo, int64_t whi, O* out, bool gather) {
    RowScratch S(n);
    std::vector<int32_t> tables(NCTX * PS);
    tables_init(tables.data());
    rans::Decoder dec;
    if (!dec.open(words, wlo, whi, lanes)) return 1;
    const uint8_t* frozen = sd.frozen.data();
    for (int64_t row = lo; row < hi; ++row) {
        Keys<T> key{keys + row * n, true};
        int64_t ncls = row_start(key, S);
        int64_t top = rans::fen_top(ncls), lastcls = 0;
        for (int64_t t = 0; t < n; ++t) {
            int64_t r = n - t, i = S.order[size_t(t)];
            Ctx cx = context(S, t, i, r, frozen, sd.lags.data(), int(sd.lags.size()), lastcls);
            if (cx.vlo >= r) return 4;
            int32_t* Q = tables.data() + cx.k * PS;
            Window win(Q, cx.c, cx.vlo, r);
            int64_t s = dec.slot();
            Window::Slots sl = win.slots(win.find(s));
            int64_t j = cx.c + sl.d0 + ((s - sl.G + 1) * sl.w - 1) / sl.T;  // in [vlo, r) by §6
            int64_t a;
            int64_t cf = rans::fen_find(S.fen.data(), ncls, top, j, a);
            if (cf >= ncls) return 3;  // unreachable (§6 maps every slot to a valid item); never read past
            int64_t e = a + S.rem[size_t(cf)];
            int64_t c0 = win.cdf(a, sl);
            if (!dec.step(s, c0, win.cdf(e, sl) - c0)) return 2;
            S.fcls[size_t(i)] = int32_t(cf);
            credit(Q, a, e, cx.c);
            row_step(S, ncls, t, i, cf, frozen, lastcls);
        }
        // sources of each class in increasing position order: order[cstart[c]], ...
        for (int64_t c = 0; c < ncls; ++c) S.rem[size_t(c)] = S.cstart[size_t(c)];
        O* orow = out + row * n;
        const T* vrow = keys + row * n;
        for (int64_t i = 0; i < n; ++i) {
            int64_t src = S.order[size_t(S.rem[size_t(S.fcls[size_t(i)])]++)];
            orow[i] = gather ? O(vrow[src]) : O(src);
        }
    }
    return dec.finished() ? 0 : 3;
}

// out: int64 (rows, n) permutation, or (gather) the rearranged value bits, bits' width.
void decode(const py::array& bits_a, const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& frozen_a,
            const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lags_a, int64_t seg, int lanes,
            const py::array_t<uint32_t, py::array::c_style>& words_a,
            const py::array_t<int64_t, py::array::c_style>& bounds_a, py::array out_a, bool gather) {
    py::buffer_info vb = bits_a.request();
    require(vb.ndim == 2, "values must be 2-d");
    const int64_t rows = vb.shape[0], n = vb.shape[1];
    info2d(bits_a, rows, n, "values");
    py::buffer_info ob = info2d(out_a, rows, n, "out");
    require(!ob.readonly, "out must be writable");
    require(gather ? ob.itemsize == vb.itemsize : ob.itemsize == 8, "out has the wrong item size");
    require(n <= MAX_N && lanes >= 1 && lanes <= rans::MAX_LANES && seg >= 1, "bad layout");
    Side sd = side(frozen_a, lags_a, n);
    const int64_t nseg = rows * n == 0 ? 0 : (rows + seg - 1) / seg;
    require(bounds_a.ndim() == 1 && bounds_a.shape(0) == nseg + 1, "bounds must have nseg + 1 entries");
    const int64_t* bounds = bounds_a.data();
    const int64_t nwords = words_a.size();
    for (int64_t g = 0; g < nseg; ++g)
        require(0 <= bounds[g] && bounds[g] <= bounds[g + 1] && bounds[g + 1] <= nwords, "bounds outside the words");
    const uint32_t* words = words_a.data();
    std::vector<int> err(static_cast<size_t>(nseg), 0);
    {
        py::gil_scoped_release nogil;
        with_keys(vb, [&](auto keys) {
            using T = std::remove_const_t<std::remove_pointer_t<decltype(keys)>>;
            parallel_for(nseg, double(seg * n), double(1 << 16), [&](int64_t g0, int64_t g1) {
                for (int64_t g = g0; g < g1; ++g) {
                    int64_t lo = g * seg, hi = std::min(rows, lo + seg);
                    err[size_t(g)] = gather ? decode_segment(keys, n, sd, lo, hi, lanes, words, bounds[g], bounds[g + 1],
                                                             (T*)ob.ptr, true)
                                            : decode_segment(keys, n, sd, lo, hi, lanes, words, bounds[g], bounds[g + 1],
                                                             (int64_t*)ob.ptr, false);
                }
            });
        });
    }
    for (int64_t g = 0; g < nseg; ++g)
        if (err[size_t(g)])
            throw format_error("model payload segment " + std::to_string(g) + " is corrupt: " + ERRORS[err[size_t(g)]]);
}

}  // namespace
}  // namespace model

void init_model(py::module_& m) {
    using namespace model;
    m.attr("model_max_n") = MAX_N;
    m.attr("model_row_scratch_bytes") = ROW_SCRATCH_BYTES;
    m.attr("model_segment_scratch_bytes") = int64_t(NCTX * PS * 4 + 256 * 8 + 1024);
    m.def("model_encode", &encode, py::arg("keys"), py::arg("raw"), py::arg("perm"), py::arg("frozen"), py::arg("lags"),
          py::arg("segment_rows"), py::arg("lanes"),
          "model payload of perm (rows, n) against keys (order keys, or raw value bits), or None if a "
          "frozen column changes order in some row");
    m.def("model_decode", &decode, py::arg("bits"), py::arg("frozen"), py::arg("lags"), py::arg("segment_rows"),
          py::arg("lanes"), py::arg("words"), py::arg("bounds"), py::arg("out"), py::arg("gather"),
          "decode into out: the int64 permutation, or (gather) the rearranged value bits");
    init_search(m);
}

}  // namespace pc
