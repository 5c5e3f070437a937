// permcodec._core: the `packed` codec (formats/codecs/packed.md), encoder and decoders.
//
// The plain reference is permcodec/codecs/packed.py (decode_reference / encode_reference); the
// tests compare this file's output with it bit for bit. Nothing here defines behaviour of its own.
//
// Both directions work in two passes over the rows:
//   1. layout: each row's classes of equal bit patterns (hash scan, O(n)) give its mode and its
//      size in bits; rows are grouped in blocks of BLOCK rows whose starting bit is recorded.
//      With ties=false every row has the same layout and this pass is skipped.
//      The encoder always runs it (it decides `ties`); the decoder also rejects, with ties=false,
//      a row that holds equal values (a conforming writer never produces one).
//   2. code: blocks are split among threads; each row is decoded (or encoded) from its block's
//      offset; four rows of the common kinds decode interleaved, and the decoder gathers the
//      values through perm.h's checked put_row.
// Working memory (working_bytes in packed.py, scratch_bytes here): the output, 16 bytes per row
// for the layout when ties=true, 8 bytes per block, O(n) tables, and O(n) scratch per thread.
// Every payload read is bounds-checked (Bits::read). Nothing depends on the thread count.
#include "common.h"
#include "perm.h"

#include <atomic>
#include <climits>
#include <cstring>
#include <mutex>

namespace pc {
namespace {

constexpr int NEED_BITS = 37;
constexpr int64_t NEED = int64_t(1) << NEED_BITS;
constexpr int64_t MAX_N = int64_t(1) << 24;
constexpr int64_t BLOCK = 64;  // rows per block (one recorded bit offset)
enum Mode : uint32_t { PERM = 0, SEQ = 1 };
enum Kind : uint32_t { DISTINCT = 0, ONE = 1, GENERAL = 2 };  // how a row decodes (see decode_row)

int bitlen(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// packed.schedule: K_t for the row's digits into `out` (T entries); returns the row's bits.
// `U_out` (optional) receives U before every digit.
int64_t schedule(uint32_t mode, int64_t n, int64_t p, uint8_t* out, int64_t* U_out = nullptr) {
    const int64_t T = mode == PERM ? n - p : n;
    auto radix = [&](int64_t t) { return mode == PERM ? n - t : p; };
    int64_t P = 1, tail = T;
    while (tail > 0 && P * radix(tail - 1) < NEED) P *= radix(--tail);
    int64_t U = 1, total = 0;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t R = radix(t);
        int64_t need = NEED;
        if (t >= tail) {
            need = P;
            P /= R;
        }
        int k = 0;
        if (U < need) {
            k = bitlen(uint64_t(need - 1)) - bitlen(uint64_t(U));
            if ((U << k) < need) ++k;
            U <<= k;
        }
        if (U_out) U_out[t] = U >> k;
        if (out) out[t] = uint8_t(k);
        total += k;
        U /= R;
    }
    return total;
}

int64_t row_bits(uint32_t mode, int64_t n, int64_t p) { return schedule(mode, n, p, nullptr); }

// PERM schedules from the one of (PERM, n, 1): before its tail (the last digits, whose radices
// multiply to less than NEED) a schedule's K_t and U depend on t alone, and a larger L only moves
// the tail earlier. So K of (PERM, n, p) is a copy of a prefix plus at most 37 tail digits.
struct PermBase {
    std::vector<uint8_t> K;
    std::vector<int64_t> U;  // U before digit t
    explicit PermBase(int64_t n) : K(size_t(std::max<int64_t>(n, 1)), 0), U(size_t(std::max<int64_t>(n, 1)), 1) {
        if (n >= 2) schedule(PERM, n, 1, K.data(), U.data());
    }
    // K of (PERM, n, p), 1 <= p <= n, into out (the prefix only if `prefix`); returns the tail's start.
    int64_t get(int64_t n, int64_t p, uint8_t* out, bool prefix = true) const {
        const int64_t T = n - p;
        int64_t P = 1, tail = T;
        while (tail > 0 && P * (n - tail + 1) < NEED) P *= n - --tail;
        if (prefix) std::memcpy(out, K.data(), size_t(tail));
        int64_t Uc = tail < int64_t(U.size()) ? U[size_t(tail)] : 1;
        for (int64_t t = tail; t < T; ++t) {
            const int64_t R = n - t, need = P;
            P /= R;
            int k = 0;
            if (Uc < need) {
                k = bitlen(uint64_t(need - 1)) - bitlen(uint64_t(Uc));
                if ((Uc << k) < need) ++k;
                Uc <<= k;
            }
            out[t] = uint8_t(k);
            Uc /= R;
        }
        return tail;
    }
};

// Row sizes in bits by (mode, p), computed once per distinct value: PERM ones from the base's
// prefix sums (O(37) each), SEQ ones in O(n).
struct BitsMemo {
    int64_t n;
    std::vector<int64_t> perm, seq, prefix;  // prefix[t] = K_0 + ... + K_{t-1} of (PERM, n, 1)
    PermBase base;
    std::vector<uint8_t> tail;
    explicit BitsMemo(int64_t n_)
        : n(n_), perm(size_t(n_ + 1), -1), seq(size_t(n_ + 1), -1), prefix(size_t(n_ + 1), 0), base(n_),
          tail(size_t(std::max<int64_t>(n_, 1))) {
        for (int64_t t = 0; t + 1 < n; ++t) prefix[size_t(t + 1)] = prefix[size_t(t)] + base.K[size_t(t)];
    }
    int64_t get(uint32_t mode, int64_t p) {
        int64_t& b = (mode == PERM ? perm : seq)[size_t(p)];
        if (b >= 0) return b;
        if (mode == PERM && p >= 1 && n >= 2) {
            const int64_t t0 = base.get(n, p, tail.data(), false);
            b = prefix[size_t(t0)];
            for (int64_t t = t0; t < n - p; ++t) b += tail[size_t(t)];
        } else {
            b = row_bits(mode, n, p);
        }
        return b;
    }
    int64_t bits(uint32_t mode, int64_t p) const { return (mode == PERM ? perm : seq)[size_t(p)]; }  // filled
    // packed.row_mode: SEQ where it takes fewer bits than PERM.
    uint32_t mode_of(int64_t m, int64_t k) {
        return k > 1 && get(SEQ, k) < get(PERM, m) ? SEQ : PERM;
    }
};

// One thread's schedule tables, the last few (mode, p) used (rows mostly share a few layouts).
// Least recently used goes first: the 4 tables of one group of rows are never evicted by each other.
struct Schedules {
    int64_t n;
    struct Entry { uint32_t mode; int64_t p; uint64_t used; std::vector<uint8_t> K; };
    std::vector<Entry> cache;
    uint64_t clock = 0;
    PermBase base;
    explicit Schedules(int64_t n_) : n(n_), base(n_) {}
    const uint8_t* get(uint32_t mode, int64_t p) {
        ++clock;
        for (auto& e : cache)
            if (e.mode == mode && e.p == p) {
                e.used = clock;
                return e.K.data();
            }
        if (cache.size() < 8) cache.push_back({0, 0, 0, std::vector<uint8_t>(size_t(std::max<int64_t>(n, 1)), 0)});
        Entry* e = &cache[0];
        for (auto& c : cache)
            if (c.used < e->used) e = &c;
        e->mode = mode;
        e->p = p;
        e->used = clock;
        if (mode == PERM && p >= 1) base.get(n, p, e->K.data());
        else schedule(mode, n, p, e->K.data());
        return e->K.data();
    }
};

// ---- classes ----------------------------------------------------------------------------------
struct RowClasses {
    uint32_t m, k, nrep, lfirst;  // largest class size, classes, classes with several members, L's first member
};

// Open-addressing table over one row's bit patterns; a generation stamp empties it in O(1).
// One slot holds everything a probe reads (one cache line).
template <class U>
struct ClassTable {
    struct Slot { U key; uint32_t stamp, count, first; };
    std::vector<Slot> slots;
    std::vector<U> keys;  // has_tie's table: 0 = empty
    std::vector<uint32_t> uniq;
    uint32_t gen = 0;
    int shift = 63, kshift = 63;
    uint64_t mask = 0, kmask = 0;
    explicit ClassTable(int64_t n) {
        int64_t size = 2;
        while (size < 2 * n) size <<= 1;
        slots.assign(size_t(size), Slot{0, 0, 0, 0});
        int64_t ksize = 2;  // load <= 1/2: short probe runs
        while (ksize < 2 * n) ksize <<= 1;
        keys.assign(size_t(ksize), 0);
        kshift = 64 - bitlen(uint64_t(ksize - 1));
        kmask = uint64_t(ksize - 1);
        uniq.resize(size_t(std::max<int64_t>(n, 1)));
        shift = 64 - bitlen(uint64_t(size - 1));
        mask = uint64_t(size - 1);
    }
    void reset() {
        if (++gen == 0) {
            for (auto& e : slots) e.stamp = 0;
            gen = 1;
        }
    }
    uint64_t slot(U v) const { return (uint64_t(v) * 0x9E3779B97F4A7C15ull) >> shift; }

    // Classes of a row: L is the largest class, among equal sizes the one met first in source order.
    // The zero pattern (+0.0: pruned weights) is counted apart, without hashing.
    RowClasses scan(const U* row, int64_t n) {
        reset();
        uint32_t nu = 0, zeros = 0, zfirst = 0;
        Slot* t = slots.data();
        for (int64_t j = 0; j < n; ++j) {
            const U v = row[j];
            if (v == 0) {
                zfirst = zeros++ ? zfirst : uint32_t(j);
                continue;
            }
            uint64_t h = slot(v);
            while (t[h].stamp == gen && t[h].key != v) h = (h + 1) & mask;
            Slot& e = t[h];
            if (e.stamp == gen) {
                ++e.count;
            } else {
                e = Slot{v, gen, 1, uint32_t(j)};
                uniq[nu++] = uint32_t(h);
            }
        }
        RowClasses c{1, nu + (zeros > 0), zeros > 1, 0};
        uint32_t best = 0;
        for (uint32_t i = 0; i < nu; ++i) {  // uniq is in order of first occurrence
            const Slot& e = t[uniq[i]];
            if (e.count > best) {
                best = e.count;
                c.lfirst = e.first;
            }
            c.nrep += e.count > 1;
        }
        if (zeros > best || (zeros && zeros == best && zfirst < c.lfirst)) {
            best = zeros;
            c.lfirst = zfirst;
        }
        c.m = n ? best : 1;
        return c;
    }

    // True if two entries of the row hold the same bit pattern (stops at the first repeat). The
    // common case (none) is what a load meets most: keys only, 0 marks an empty slot (the zero
    // pattern is counted apart), and only the slots used are emptied again.
    bool has_tie(const U* row, int64_t n) {
        const Quick q = quick(row, n);
        return q.nonzero_tie || q.zeros > 1;
    }

    // Whether the row's nonzero patterns repeat (stops at the first repeat), and its zeros: the
    // classes of a row of distinct values or of pruned distinct values, without the full scan.
    struct Quick { bool nonzero_tie; uint32_t zeros, zfirst; };
    Quick quick(const U* row, int64_t n) {
        U* t = keys.data();  // locals: with -fno-strict-aliasing a member is reloaded after every store
        uint32_t* u = uniq.data();
        const int sh = kshift;
        const uint64_t mk = kmask;
        int64_t nu = 0;
        uint32_t zeros = 0, zfirst = 0;
        bool tie = false;
        for (int64_t j = 0; j < n; ++j) {
            const U v = row[j];
            if (v == 0) {
                zfirst = zeros++ ? zfirst : uint32_t(j);
                continue;
            }
            uint64_t h = (uint64_t(v) * 0x9E3779B97F4A7C15ull) >> sh;
            U e;
            while ((e = t[h]) != 0 && e != v) h = (h + 1) & mk;
            if (e == v) {
                tie = true;
                break;
            }
            t[h] = v;
            u[nu++] = uint32_t(h);
        }
        const uint32_t size = uint32_t(mk + 1);  // <= 2^26 slots
        if (8 * nu < int64_t(size)) {  // empty the slots used, or all of them at memory speed
            for (int64_t i = 0; i < nu; ++i) t[u[i]] = 0;
        } else {
            for (uint32_t i = 0; i < size; ++i) t[i] = 0;
        }
        return Quick{tie, zeros, zfirst};
    }

    // classes() through quick() where the nonzero patterns are distinct (L: the zeros if repeated).
    RowClasses classes(const U* row, int64_t n) {
        const Quick q = quick(row, n);
        if (q.nonzero_tie) return scan(row, n);
        if (q.zeros <= 1) return RowClasses{1, uint32_t(n), 0, 0};
        return RowClasses{q.zeros, uint32_t(n) - q.zeros + 1, 1, q.zfirst};
    }
};

// Per-row layout of a tensor with ties (12 bytes a row): p (m or k), the kind and mode, L's first member.
struct RowLayout {
    uint32_t p, flags, lfirst;  // flags: kind | mode << 2
    uint32_t kind() const { return flags & 3; }
    uint32_t mode() const { return flags >> 2; }
};

// Bit offsets of the blocks and per-row layouts. Without ties every row is (PERM, 1).
struct Layout {
    int64_t rows = 0, n = 0;
    bool ties = false;
    int64_t uniform_bits = 0;         // bits of every row when !ties
    std::vector<RowLayout> row;       // ties only
    std::vector<int64_t> block_off;   // bit offset of every block (+ the total at the end)
    int64_t total() const { return block_off.back(); }
    int64_t nblocks() const { return int64_t(block_off.size()) - 1; }
};

template <class U>
Layout plan(const U* raw, int64_t rows, int64_t n, bool ties, BitsMemo& memo) {
    Layout L;
    L.rows = rows;
    L.n = n;
    L.ties = ties && n >= 2;  // a row of one weight has one layout whatever it holds
    const int64_t nb = (rows + BLOCK - 1) / BLOCK;
    L.block_off.assign(size_t(nb + 1), 0);
    if (!L.ties) {
        L.uniform_bits = n >= 2 ? memo.get(PERM, 1) : 0;
        for (int64_t b = 0; b <= nb; ++b) L.block_off[size_t(b)] = std::min(b * BLOCK, rows) * L.uniform_bits;
        return L;
    }
    L.row.resize(size_t(rows));
    std::vector<uint32_t> kcount(static_cast<size_t>(rows));
    parallel_for(rows, double(n), 1 << 16, [&](int64_t lo, int64_t hi) {
        ClassTable<U> table(n);
        for (int64_t r = lo; r < hi; ++r) {
            const RowClasses c = table.classes(raw + r * n, n);
            const uint32_t kind = c.nrep == 0 ? DISTINCT : c.nrep == 1 ? ONE : GENERAL;
            L.row[size_t(r)] = {c.m, kind, c.lfirst};
            kcount[size_t(r)] = c.k;
        }
    });
    int64_t off = 0;
    for (int64_t r = 0; r < rows; ++r) {  // serial: the memo fills once per distinct (m, k)
        RowLayout& e = L.row[size_t(r)];
        const int64_t m = e.p, k = kcount[size_t(r)];
        const uint32_t mode = memo.mode_of(m, k);
        const int64_t p = mode == SEQ ? k : m;
        uint32_t kind = e.kind();
        if (mode == SEQ) kind = GENERAL;
        e.p = uint32_t(p);
        e.flags = kind | (mode << 2);
        if (r % BLOCK == 0) L.block_off[size_t(r / BLOCK)] = off;
        off += memo.get(mode, p);
    }
    L.block_off[size_t(nb)] = off;
    return L;
}

// Sorted classes of a row (general rows): source indices by (order key, index), class starts.
template <class U>
struct SortedClasses {
    std::vector<std::pair<uint64_t, uint32_t>> pairs;
    std::vector<uint32_t> order, start;  // order[i]: i-th source in sorted order; start[c]: class c's first i
    void build(const U* row, int64_t n) {
        pairs.resize(size_t(n));
        order.resize(size_t(n));
        start.clear();
        for (int64_t j = 0; j < n; ++j) pairs[size_t(j)] = {order_key(uint64_t(row[j]), int(8 * sizeof(U))), uint32_t(j)};
        std::sort(pairs.begin(), pairs.end());
        for (int64_t i = 0; i < n; ++i) {
            order[size_t(i)] = pairs[size_t(i)].second;
            if (i == 0 || pairs[size_t(i)].first != pairs[size_t(i - 1)].first) start.push_back(uint32_t(i));
        }
        start.push_back(uint32_t(n));
    }
};

// ---- bit reading ------------------------------------------------------------------------------
struct Bits {
    const uint8_t* p;
    int64_t len;  // bytes
    // The k <= 38 bits at bit `pos` (MSB first); reads nothing outside [0, len).
    uint64_t read(int64_t pos, int k) const {
        if (k == 0) return 0;
        const int64_t byte = pos >> 3;
        uint64_t w = 0;
        if (byte + 8 <= len) {
            std::memcpy(&w, p + byte, 8);
            w = __builtin_bswap64(w);
        } else {
            for (int i = 0; i < 8; ++i) w = (w << 8) | (byte + i < len && byte + i >= 0 ? p[byte + i] : 0);
        }
        return (w << (pos & 7)) >> (64 - k);
    }
};

// (x div R, x mod R) for 0 <= x < 2^52, from a binary64 estimate corrected exactly.
inline int64_t divmod(int64_t x, int64_t R, double ir, int64_t& d) {
    int64_t q = int64_t(double(x) * ir);
    d = x - q * R;
    if (d < 0) {
        --q;
        d += R;
    } else if (d >= R) {
        ++q;
        d -= R;
    }
    if (uint64_t(d) >= uint64_t(R)) {  // never below 2^52; exact (and in range) for any bits
        q = int64_t(uint64_t(x) / uint64_t(R));
        d = int64_t(uint64_t(x) % uint64_t(R));
    }
    return q;
}

// ---- decoding ---------------------------------------------------------------------------------
enum Bad : int { OK = 0, NOT_ZERO = 1, TOO_MANY = 2, NOT_PERM = 3, TIED = 4 };

const char* bad_text(int why) {
    switch (why) {
        case NOT_ZERO: return "does not end in state 0";
        case TOO_MANY: return "places too many copies of one value";
        case TIED: return "holds equal values while the payload says ties=false (a conforming writer sets ties=true)";
        default: return "is not a permutation";
    }
}

// One row being decoded by a swap chain: its items, L's members, free slots, output, state.
struct Lane {
    std::vector<int32_t> items, lmem, free, orow;
    const uint8_t* K = nullptr;
    int64_t T = 0, m = 1, pos = 0, x = 0;
    explicit Lane(int64_t n) : items(size_t(n) + 1), lmem(size_t(n) + 1), free(size_t(n)), orow(size_t(n)) {}
};

// One thread's scratch for decoding rows of n weights (O(n)).
template <class U>
struct Decoder {
    int64_t n;
    Bits bits;
    Schedules sched;
    ClassTable<U> table;
    SortedClasses<U> sorted;
    std::vector<Lane> lanes;  // four rows decode at once (3 more made at the first four); [0] serves all rows
    std::vector<int32_t> cls, used;
    std::vector<int64_t> stamp;  // put_row's marks: the index of the last row that took each source
    std::vector<double> inv;  // inv[t] = 1 / (n - t)
    Decoder(int64_t n_, Bits b)
        : n(n_), bits(b), sched(n_), table(n_), lanes(1, Lane(n_)), cls(size_t(n_)), used(size_t(n_) + 1),
          stamp(size_t(n_), -1), inv(size_t(n_) + 1) {
        for (int64_t t = 0; t < n; ++t) inv[size_t(t)] = 1.0 / double(n - t);
    }

    // A PERM row whose only repeated value (if any) is L's: no class search, no sort.
    static bool simple(const RowLayout& lay) { return lay.kind() == DISTINCT || lay.kind() == ONE; }

    // Items (sources outside L, increasing) and L's members of a simple row; free slots reset.
    void prepare(Lane& l, const U* row, const RowLayout& lay, int64_t pos) {
        l.pos = pos;
        l.x = 0;
        if (lay.kind() == DISTINCT) {  // L = {0}
            for (int64_t t = 0; t + 1 < n; ++t) l.items[size_t(t)] = int32_t(t + 1);
            l.T = n - 1;
            l.m = 1;
            l.lmem[0] = 0;
            l.K = sched.get(PERM, 1);
        } else {  // L: the sources holding L's bit pattern
            const U lkey = row[lay.lfirst];
            int64_t T = 0, nl = 0;
            int32_t *items = l.items.data(), *lmem = l.lmem.data(), *orow = l.orow.data();
            for (int64_t s = 0; s < n; ++s) {  // branch free: L's share of a row is unpredictable
                const int64_t e = row[s] == lkey;
                items[T] = int32_t(s);
                lmem[nl] = int32_t(s);
                T += 1 - e;
                nl += e;
                orow[s] = -1;
            }
            l.T = T;
            l.m = nl;  // == lay.p: the layout counted this very class
            l.K = sched.get(PERM, nl);
        }
        for (int64_t i = 0; i < n; ++i) l.free[size_t(i)] = int32_t(i);
    }

    // A lane's chain state in locals: the build has -fno-strict-aliasing, so state kept in the
    // Lane would be reloaded after every store to a slot.
    struct Chain {
        const uint8_t* K;
        const int32_t* items;
        int32_t *free, *orow;
        int64_t pos, x;
        explicit Chain(Lane& l) : K(l.K), items(l.items.data()), free(l.free.data()), orow(l.orow.data()), pos(l.pos), x(l.x) {}
        void save(Lane& l) const { l.pos = pos; l.x = x; }
    };

    // Digit t of a chain: refill, divide, and the swap-remove of its slot.
    static inline void step(Chain& c, const Bits& bits, int64_t t, int64_t R, double ir) {
        const int k = c.K[t];
        int64_t d;
        c.x = divmod((c.x << k) | int64_t(bits.read(c.pos, k)), R, ir, d);
        c.pos += k;
        c.orow[c.free[d]] = c.items[t];
        c.free[d] = c.free[R - 1];
    }

    // Swap chains of `count` lanes; four lanes run interleaved (independent division latencies
    // overlap) up to the shortest, then each finishes alone.
    void run(int count) {
        const Bits bt = bits;
        const double* iv = inv.data();
        const int64_t nn = n;
        int64_t Tm = 0;
        if (count == 4) {
            Tm = std::min(std::min(lanes[0].T, lanes[1].T), std::min(lanes[2].T, lanes[3].T));
            Chain a(lanes[0]), b(lanes[1]), c(lanes[2]), d(lanes[3]);
            for (int64_t t = 0; t < Tm; ++t) {
                const int64_t R = nn - t;
                const double ir = iv[t];
                step(a, bt, t, R, ir);
                step(b, bt, t, R, ir);
                step(c, bt, t, R, ir);
                step(d, bt, t, R, ir);
            }
            a.save(lanes[0]);
            b.save(lanes[1]);
            c.save(lanes[2]);
            d.save(lanes[3]);
        }
        for (int i = 0; i < count; ++i) {
            Chain c(lanes[size_t(i)]);
            for (int64_t t = Tm, T = lanes[size_t(i)].T; t < T; ++t) step(c, bt, t, nn - t, iv[t]);
            c.save(lanes[size_t(i)]);
        }
    }

    // L's members, increasing, into the slots left, increasing; the row's Bad code.
    int fill(Lane& l) {
        if (l.m == 1) {
            l.orow[size_t(l.free[0])] = l.lmem[0];
        } else {
            int32_t *orow = l.orow.data();
            const int32_t* lmem = l.lmem.data();
            for (int64_t j = 0, i = 0; j < n; ++j) {  // branch free
                const int32_t v = orow[j];
                const int64_t e = v < 0;
                orow[j] = e ? lmem[i] : v;
                i += e;
            }
        }
        return l.x ? NOT_ZERO : OK;
    }

    // Decode one row into lanes[0].orow (the source index of every position); returns a Bad code.
    int decode_row(const U* row, const RowLayout& lay, int64_t pos) {
        Lane& l = lanes[0];
        if (simple(lay)) {
            prepare(l, row, lay, pos);
            run(1);
            return fill(l);
        }
        int32_t* orow = l.orow.data();
        int32_t* items = l.items.data();
        sorted.build(row, n);
        const auto& order = sorted.order;
        const auto& start = sorted.start;
        const int64_t k = int64_t(start.size()) - 1;
        const uint8_t* K = sched.get(lay.mode(), lay.p);
        if (lay.mode() == SEQ) {  // the class of every position
            if (int64_t(lay.p) != k) return NOT_PERM;  // cannot happen
            for (int64_t c = 0; c < k; ++c) used[size_t(c)] = int32_t(start[size_t(c)]);
            const double ik = 1.0 / double(k);
            int64_t x = 0;
            for (int64_t j = 0; j < n; ++j) {
                const int kk = K[j];
                x = (x << kk) | int64_t(bits.read(pos, kk));
                pos += kk;
                int64_t c;
                x = divmod(x, k, ik, c);
                if (used[size_t(c)] >= int32_t(start[size_t(c + 1)])) return TOO_MANY;
                orow[size_t(j)] = int32_t(order[size_t(used[size_t(c)]++)]);
            }
            return x ? NOT_ZERO : OK;
        }
        // PERM with several repeated classes: L is the largest, among equals the smallest member
        int64_t big = 0, ms = 0;
        for (int64_t c = 0; c < k; ++c) {
            const int64_t a = start[size_t(c)], len = start[size_t(c + 1)] - a;
            if (len > ms || (len == ms && order[size_t(a)] < order[size_t(big)])) {
                ms = len;
                big = a;
            }
        }
        for (int64_t c = 0; c < k; ++c) {  // cls[s]: -1 in L, -2 alone, else where its class starts in `order`
            const int64_t a = start[size_t(c)], e = start[size_t(c + 1)];
            const int32_t tag = a == big ? -1 : e - a == 1 ? -2 : int32_t(a);
            for (int64_t i = a; i < e; ++i) cls[size_t(order[size_t(i)])] = tag;
            used[size_t(a)] = int32_t(a);
        }
        int64_t T = 0;
        for (int64_t s = 0; s < n; ++s) {
            if (cls[size_t(s)] != -1) items[size_t(T++)] = int32_t(s);
            orow[size_t(s)] = -1;
        }
        if (T != n - int64_t(lay.p)) return NOT_PERM;  // cannot happen
        l.K = K;
        l.T = T;
        l.pos = pos;
        l.x = 0;
        for (int64_t i = 0; i < n; ++i) l.free[size_t(i)] = int32_t(i);
        run(1);
        const int64_t x = l.x;
        // walking slots increasingly, each class's slots take its members increasingly
        int64_t li = big;
        for (int64_t j = 0; j < n; ++j) {
            const int32_t s = orow[size_t(j)];
            if (s < 0) {
                orow[size_t(j)] = int32_t(order[size_t(li++)]);
            } else {
                const int32_t a = cls[size_t(s)];
                if (a >= 0) orow[size_t(j)] = int32_t(order[size_t(used[size_t(a)]++)]);
            }
        }
        return x ? NOT_ZERO : OK;
    }

};

// Decode every row: out[r][j] = src[r * src_stride + perm[r][j]]: the gathered values (src = the
// bit patterns, stride n) or the permutation (src = 0 .. n-1, stride 0).
template <class U, class O>
void decode_rows(const U* raw, const Layout& L, const BitsMemo& memo, Bits bits, const O* src, int64_t src_stride,
                 O* out) {
    const int64_t n = L.n, rows = L.rows;
    std::mutex mu;
    int64_t bad_row = INT64_MAX;
    int bad_why = OK;
    const RowLayout distinct{1, DISTINCT, 0};
    auto layout = [&](int64_t r) -> const RowLayout& { return L.ties ? L.row[size_t(r)] : distinct; };
    auto simple = [&](int64_t r) { return Decoder<U>::simple(layout(r)); };
    parallel_for(L.nblocks(), double(BLOCK * std::max<int64_t>(n, 1)), 1 << 16, [&](int64_t blo, int64_t bhi) {
        Decoder<U> dec(n, bits);
        // checks and gathers row r from its decoded sources; false (recorded) if the row is bad
        auto finish = [&](int64_t r, const int32_t* orow, int why) {
            const U* row = raw + r * n;
            if (!why && !L.ties && n >= 2 && dec.table.has_tie(row, n)) why = TIED;
            if (!why && !put_row(orow, n, src + r * src_stride, out + r * n, dec.stamp.data(), r)) why = NOT_PERM;
            if (why) {
                std::lock_guard<std::mutex> g(mu);
                if (r < bad_row) {
                    bad_row = r;
                    bad_why = why;
                }
            }
            return !why;
        };
        for (int64_t r = blo * BLOCK, end = std::min(rows, bhi * BLOCK); r < end; ) {
            int64_t pos = L.block_off[size_t(r / BLOCK)];
            for (const int64_t e = std::min(end, r + BLOCK); r < e; ) {
                if (n >= 2 && r + 4 <= e && simple(r) && simple(r + 1) && simple(r + 2) && simple(r + 3)) {
                    while (dec.lanes.size() < 4) dec.lanes.emplace_back(n);
                    for (int i = 0; i < 4; ++i) {
                        const RowLayout& lay = layout(r + i);
                        dec.prepare(dec.lanes[size_t(i)], raw + (r + i) * n, lay, pos);
                        pos += L.ties ? memo.bits(PERM, lay.p) : L.uniform_bits;
                    }
                    dec.run(4);
                    for (int i = 0; i < 4; ++i) {
                        Lane& l = dec.lanes[size_t(i)];
                        if (!finish(r + i, l.orow.data(), dec.fill(l))) return;
                    }
                    r += 4;
                    continue;
                }
                int why = OK;
                if (n >= 2) {
                    const RowLayout& lay = L.ties ? L.row[size_t(r)] : distinct;
                    why = dec.decode_row(raw + r * n, lay, pos);
                    pos += L.ties ? memo.bits(lay.mode(), lay.p) : L.uniform_bits;
                } else if (n == 1) {
                    dec.lanes[0].orow[0] = 0;
                }
                if (!finish(r, dec.lanes[0].orow.data(), why)) return;  // this chunk's first bad row
                ++r;
            }
        }
    });
    if (bad_why != OK)
        throw format_error("packed row " + std::to_string(bad_row) + " " + bad_text(bad_why) + ": corrupt payload");
}


// ---- encoding ---------------------------------------------------------------------------------
// Writes bits MSB first into out[] from bit `off`; the first and last bytes of the range are
// shared with the neighbouring chunks and go to edge[0], edge[1] (ORed in after the join).
struct BitWriter {
    uint8_t* out;
    int64_t o, fb, lb;
    uint8_t* edge;
    uint64_t acc = 0;
    int nacc;
    BitWriter(uint8_t* out_, int64_t off0, int64_t off1, uint8_t* edge_)
        : out(out_), o(off0 >> 3), fb(off0 >> 3), lb((off1 - 1) >> 3), edge(edge_), nacc(int(off0 & 7)) {}
    void byte(uint8_t b) {
        if (o == fb) edge[0] |= b;
        else if (o == lb) edge[1] |= b;
        else out[o] = b;
        ++o;
    }
    void put(uint64_t v, int k) {  // k <= 38
        acc = (acc << k) | v;
        nacc += k;
        while (nacc >= 8) {
            nacc -= 8;
            byte(uint8_t(acc >> nacc));
        }
        acc &= (uint64_t(1) << nacc) - 1;
    }
    void flush() {
        if (nacc) byte(uint8_t(acc << (8 - nacc)));
    }
};

template <class U>
struct Encoder {
    int64_t n;
    Schedules sched;
    SortedClasses<U> sorted;
    std::vector<int64_t> inv, free_, where, items, digits, chunks, cls;
    explicit Encoder(int64_t n_)
        : n(n_), sched(n_), inv(size_t(n_)), free_(size_t(n_)), where(size_t(n_)), items(size_t(n_)),
          digits(size_t(n_)), chunks(size_t(n_)), cls(size_t(n_)) {}

    void row(const U* vals, const int64_t* prow, const RowLayout& lay, BitWriter& w) {
        const uint32_t mode = lay.mode();
        int64_t T = 0;
        if (mode == SEQ) {  // digit j is the class of perm[j], classes in order-key order
            sorted.build(vals, n);
            for (size_t c = 0; c + 1 < sorted.start.size(); ++c)
                for (uint32_t i = sorted.start[c]; i < sorted.start[c + 1]; ++i) cls[sorted.order[i]] = int64_t(c);
            for (int64_t j = 0; j < n; ++j) digits[size_t(j)] = cls[size_t(prow[j])];
            T = n;
        } else {  // items: the sources outside L (L's bit pattern), increasing
            if (lay.kind() == DISTINCT) {
                for (int64_t s = 1; s < n; ++s) items[size_t(T++)] = s;
            } else {
                const U lkey = vals[lay.lfirst];
                for (int64_t s = 0; s < n; ++s)
                    if (vals[s] != lkey) items[size_t(T++)] = s;
            }
            for (int64_t j = 0; j < n; ++j) {
                inv[size_t(prow[j])] = j;
                free_[size_t(j)] = j;
                where[size_t(j)] = j;
            }
            for (int64_t t = 0; t < T; ++t) {
                const int64_t d = where[size_t(inv[size_t(items[size_t(t)])])];
                const int64_t last = free_[size_t(n - t - 1)];
                free_[size_t(d)] = last;
                where[size_t(last)] = d;
                digits[size_t(t)] = d;
            }
        }
        const uint8_t* K = sched.get(mode, lay.p);
        int64_t x = 0;
        for (int64_t t = T - 1; t >= 0; --t) {  // the reverse pass of the state machine
            x = x * (mode == SEQ ? int64_t(lay.p) : n - t) + digits[size_t(t)];
            chunks[size_t(t)] = x & ((int64_t(1) << K[t]) - 1);
            x >>= K[t];
        }
        for (int64_t t = 0; t < T; ++t) w.put(uint64_t(chunks[size_t(t)]), K[t]);
    }
};

// Every row of perm must be a permutation of 0 .. n-1 (the encoder indexes with it).
void check_perm(const int64_t* perm, int64_t rows, int64_t n) {
    std::atomic<int64_t> bad{INT64_MAX};
    parallel_for(rows, double(n), 1 << 16, [&](int64_t lo, int64_t hi) {
        std::vector<int64_t> seen(size_t(std::max<int64_t>(n, 1)), -1);
        for (int64_t r = lo; r < hi; ++r)
            for (int64_t j = 0; j < n; ++j) {
                const int64_t s = perm[r * n + j];
                if (s < 0 || s >= n || seen[size_t(s)] == r) {
                    int64_t cur = bad.load();
                    while (r < cur && !bad.compare_exchange_weak(cur, r)) {}
                    return;
                }
                seen[size_t(s)] = r;
            }
    });
    if (bad.load() != INT64_MAX)
        throw std::invalid_argument("packed.encode: row " + std::to_string(bad.load()) + " of perm is not a permutation");
}

template <class U>
py::tuple encode(const int64_t* perm, const U* raw, int64_t rows, int64_t n) {
    BitsMemo memo(n);
    Layout L;
    bool ties = false;
    {
        py::gil_scoped_release nogil;
        check_perm(perm, rows, n);
        L = plan(raw, rows, n, true, memo);
        for (const RowLayout& e : L.row) ties = ties || e.kind() != DISTINCT;
    }
    const int64_t total = L.total(), nbytes = (total + 7) / 8;
    PyObject* obj = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(nbytes));
    if (!obj) throw py::error_already_set();
    py::bytes payload = py::reinterpret_steal<py::bytes>(obj);
    uint8_t* out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(obj));
    {
        py::gil_scoped_release nogil;
        std::memset(out, 0, size_t(nbytes));
        std::vector<uint8_t> edge(size_t(2 * L.nblocks()), 0);
        std::vector<int64_t> chunk_end(size_t(L.nblocks()), -1);  // chunk starting at block b ends at
        const RowLayout distinct{1, DISTINCT, 0};
        parallel_for(L.nblocks(), double(BLOCK * std::max<int64_t>(n, 1)), 1 << 15, [&](int64_t b0, int64_t b1) {
            chunk_end[size_t(b0)] = b1;
            const int64_t off0 = L.block_off[size_t(b0)], off1 = L.block_off[size_t(b1)];
            if (off1 == off0) return;
            Encoder<U> enc(n);
            BitWriter w(out, off0, off1, &edge[size_t(2 * b0)]);
            for (int64_t r = b0 * BLOCK, end = std::min(rows, b1 * BLOCK); r < end; ++r)
                enc.row(raw + r * n, perm + r * n, L.ties ? L.row[size_t(r)] : distinct, w);
            w.flush();
        });
        for (int64_t b = 0; b < L.nblocks(); ++b) {  // the bytes chunks share with their neighbours
            const int64_t e = chunk_end[size_t(b)];
            if (e < 0 || L.block_off[size_t(e)] == L.block_off[size_t(b)]) continue;
            out[L.block_off[size_t(b)] >> 3] |= edge[size_t(2 * b)];
            out[(L.block_off[size_t(e)] - 1) >> 3] |= edge[size_t(2 * b + 1)];
        }
    }
    return py::make_tuple(ties, payload);
}

}  // namespace
}  // namespace pc

namespace pc {
namespace {

// A C-contiguous 2-D array of unsigned integers (bit patterns) or int64.
py::array rows_of(const py::array& a, const char* what) {
    if (a.ndim() != 2 || !(a.flags() & py::array::c_style))
        throw std::invalid_argument(std::string("packed: ") + what + " must be a C-contiguous rows x n array");
    return a;
}

template <class F>
auto by_width(const py::array& raw, F&& f) {
    const auto kind = raw.dtype().kind();
    if (kind != 'u') throw std::invalid_argument("packed: values must be passed as unsigned bit patterns");
    switch (raw.itemsize()) {
        case 1: return f(uint8_t{});
        case 2: return f(uint16_t{});
        case 4: return f(uint32_t{});
        case 8: return f(uint64_t{});
    }
    throw std::invalid_argument("packed: values of " + std::to_string(raw.itemsize()) + " bytes are not supported");
}

void check_n(int64_t n) {
    if (n > MAX_N)
        throw format_error("packed rows hold at most " + std::to_string(MAX_N) + " weights, this tensor's rows have " +
                           std::to_string(n));
}

// Decode: the gathered bit patterns (gather) or the int64 permutation.
py::array decode_py(const py::array& raw_, const py::buffer& payload, bool ties, bool gather) {
    const py::array raw = rows_of(raw_, "values");
    const int64_t rows = raw.shape(0), n = raw.shape(1);
    check_n(n);
    const py::buffer_info pb = payload.request();
    if (pb.ndim > 1 || pb.itemsize != 1) throw std::invalid_argument("packed: payload must be bytes");
    const Bits bits{static_cast<const uint8_t*>(pb.ptr), int64_t(pb.size)};
    return by_width(raw, [&](auto zero) -> py::array {
        using U = decltype(zero);
        const U* src = static_cast<const U*>(raw.data());
        BitsMemo memo(n);
        Layout L;
        {
            py::gil_scoped_release nogil;
            L = plan(src, rows, n, ties, memo);
            const int64_t total = L.total(), need = (total + 7) / 8;
            if (bits.len != need)
                throw format_error("packed payload is " + std::to_string(bits.len) + " bytes, " + std::to_string(need) +
                                   " expected (" + std::to_string(total) + " bits)");
            if (total % 8 && (bits.p[need - 1] & ((1 << (8 - total % 8)) - 1)))
                throw format_error("packed payload's padding bits are not zero: corrupt payload");
        }
        if (gather) {
            py::array out(raw.dtype(), {rows, n});
            U* o = static_cast<U*>(out.mutable_data());
            py::gil_scoped_release nogil;
            decode_rows(src, L, memo, bits, src, n, o);
            return out;
        }
        py::array_t<int64_t> out({rows, n});
        int64_t* o = out.mutable_data();
        py::gil_scoped_release nogil;
        std::vector<int64_t> ident(static_cast<size_t>(n));
        for (int64_t j = 0; j < n; ++j) ident[size_t(j)] = j;
        decode_rows(src, L, memo, bits, ident.data(), 0, o);
        return std::move(out);
    });
}

py::tuple encode_py(const py::array& perm_, const py::array& raw_) {
    const py::array raw = rows_of(raw_, "values");
    const py::array perm = rows_of(perm_, "perm");
    if (!py::isinstance<py::array_t<int64_t>>(perm) || perm.shape(0) != raw.shape(0) || perm.shape(1) != raw.shape(1))
        throw std::invalid_argument("packed: perm must be int64 with the values' shape");
    const int64_t rows = raw.shape(0), n = raw.shape(1);
    if (n > MAX_N)
        throw std::invalid_argument("packed codes rows of at most " + std::to_string(MAX_N) + " weights");
    return by_width(raw, [&](auto zero) {
        using U = decltype(zero);
        return encode(static_cast<const int64_t*>(perm.data()), static_cast<const U*>(raw.data()), rows, n);
    });
}

// Upper bound of one decoding thread's scratch (Decoder<U>: tables, chains, sorted classes) in bytes.
int64_t scratch_bytes(int64_t n, int64_t itemsize) {
    const int64_t slots = 4 * n + 2;  // a power of two >= 2n
    const int64_t table = slots * (std::max<int64_t>(16, itemsize + 16) + itemsize) + 4 * n;
    const int64_t schedules = 8 * (n + 1) + 9 * (n + 1);  // 8 cached tables, the PERM base K and U
    const int64_t sorted = 24 * (n + 1);                   // (key, index) pairs, order, class starts
    const int64_t lanes = 4 * 16 * (n + 1);                // items, L's members, free slots, sources
    const int64_t rest = (4 + 4 + 8 + 8) * (n + 1);        // cls, used, put_row's stamps, 1 / R
    return table + schedules + sorted + lanes + rest + 4096;
}

void check_layout_args(uint32_t mode, int64_t n, int64_t p) {
    if (mode > SEQ || n < 0 || n > MAX_N || p < (mode == SEQ ? 1 : 0) || p > std::max<int64_t>(n, 1))
        throw std::invalid_argument("packed: no layout (mode " + std::to_string(mode) + ", n " + std::to_string(n) +
                                    ", p " + std::to_string(p) + ")");
}

}  // namespace

void init_packed(py::module_& m) {
    m.def("packed_encode", &encode_py, py::arg("perm"), py::arg("bits"),
          "(ties, payload) of the canonical perm (int64 rows x n) of the values' bit patterns");
    m.def("packed_decode", &decode_py, py::arg("bits"), py::arg("payload"), py::arg("ties"), py::arg("gather"),
          "gathered bit patterns (gather) or the int64 permutation; FormatError on a corrupt payload");
    m.def("packed_schedule", [](uint32_t mode, int64_t n, int64_t p) {
        check_layout_args(mode, n, p);
        const int64_t T = std::max<int64_t>(mode == PERM ? n - p : n, 0);
        py::array_t<uint8_t> out(T);
        Schedules sched(n);  // the decoders' path (a PERM prefix copied), tested against packed.schedule
        if (T) std::memcpy(out.mutable_data(), sched.get(mode, p), size_t(T));
        return out;
    }, py::arg("mode"), py::arg("n"), py::arg("p"), "K_t of a row layout (uint8, one per digit)");
    m.def("packed_row_bits", [](uint32_t mode, int64_t n, int64_t p) {
        check_layout_args(mode, n, p);
        return row_bits(mode, n, p);
    }, py::arg("mode"), py::arg("n"), py::arg("p"), "bits of a row layout");
    m.def("packed_layout_bits", [](const py::array& raw_, bool ties) {
        const py::array raw = rows_of(raw_, "values");
        const int64_t rows = raw.shape(0), n = raw.shape(1);
        check_n(n);
        return by_width(raw, [&](auto zero) -> int64_t {
            using U = decltype(zero);
            BitsMemo memo(n);
            py::gil_scoped_release nogil;
            return plan(static_cast<const U*>(raw.data()), rows, n, ties, memo).total();
        });
    }, py::arg("bits"), py::arg("ties"),
          "bits these rows take in a payload (the decoders' layout pass): where a row slice starts");
    m.def("packed_scratch_bytes", &scratch_bytes, py::arg("n"), py::arg("itemsize"),
          "upper bound of one thread's scratch for rows of n weights");
}

}  // namespace pc
