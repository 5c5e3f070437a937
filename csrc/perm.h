// Row primitives on permutations and bit patterns, shared by perm.cpp and the codecs' kernels.
//
// A permuted tensor is rows x n; row r of the trained tensor is w[r][j] = v[r][perm[r][j]]. Values
// are compared by bit pattern (so -0.0 != +0.0, and each NaN pattern is its own value), held as
// unsigned integers of the dtype's width (uint16 for float16/bfloat16, uint32, uint64).
// Everything here is header-only (inline templates) and allocation-free per row: callers own the
// scratch, sized once per thread, so a kernel's memory is O(n) per thread.
#pragma once
#include <cstdint>
#include <vector>

namespace pc {

// out[j] = src[prow[j]] for j in [0, n), checking on the way that prow is a permutation of
// [0, n); false (out partly written) if it is not. `stamp` has n entries, none equal to `r`
// before the call (start them at -1 and pass each row's index): it marks the sources taken, so
// it is never cleared between rows. Index type I may be signed or unsigned.
template <class I, class T>
inline bool put_row(const I* prow, int64_t n, const T* src, T* out, int64_t* stamp, int64_t r) {
    for (int64_t j = 0; j < n; ++j) {
        const uint64_t s = uint64_t(int64_t(prow[j]));  // a negative index becomes huge: rejected
        if (s >= uint64_t(n) || stamp[s] == r) return false;
        stamp[s] = r;
        out[j] = src[s];
    }
    return true;
}

// dtypes.order_keys of one bit pattern of `width` bits: an unsigned key with the float order
// (-0.0 just below +0.0), equal iff the bits are equal.
inline uint64_t order_key(uint64_t bits, int width) {
    const uint64_t sign = uint64_t(1) << (width - 1);
    const uint64_t all = sign | (sign - 1);
    return (bits & sign) ? (~bits & all) : (bits | sign);
}

// An open-addressing table numbering the distinct bit patterns of one row in order of first
// occurrence. Sized once for rows of n (2^k >= 2n slots); a slot is live when its stamp is the
// current row's, so starting the next row (`next_row`) costs nothing.
class KeyClasses {
public:
    explicit KeyClasses(int64_t n) {
        int log = 1;
        while ((int64_t(1) << log) < 2 * n) ++log;
        shift_ = 64 - log;
        mask_ = (uint64_t(1) << log) - 1;
        keys_.assign(size_t(mask_ + 1), 0);
        ids_.assign(size_t(mask_ + 1), 0);
        stamps_.assign(size_t(mask_ + 1), 0);
    }
    void next_row() { ++cur_; }
    // The class of `key`: its id if seen in this row, else `fresh` (recorded as its id).
    int64_t insert(uint64_t key, int64_t fresh) {
        for (uint64_t h = slot(key);; h = (h + 1) & mask_) {
            if (stamps_[h] != cur_) {
                stamps_[h] = cur_;
                keys_[h] = key;
                ids_[h] = fresh;
                return fresh;
            }
            if (keys_[h] == key) return ids_[h];
        }
    }
    // The class of `key` in this row, or -1.
    int64_t find(uint64_t key) const {
        for (uint64_t h = slot(key);; h = (h + 1) & mask_) {
            if (stamps_[h] != cur_) return -1;
            if (keys_[h] == key) return ids_[h];
        }
    }

private:
    uint64_t slot(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
    int shift_;
    uint64_t mask_;
    uint64_t cur_ = 1;  // stamps start at 0: no slot is live
    std::vector<uint64_t> keys_;
    std::vector<int64_t> ids_;
    std::vector<uint64_t> stamps_;
};

// Class id (first-occurrence order) of each of the row's n values into cls[n], each class's
// size into cnt[0..k); returns k, the number of distinct values.
template <class T>
inline int64_t row_classes(const T* row, int64_t n, KeyClasses& table, int64_t* cls, int64_t* cnt) {
    table.next_row();
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t c = table.insert(uint64_t(row[i]), k);
        if (c == k) cnt[k++] = 0;
        cls[i] = c;
        ++cnt[c];
    }
    return k;
}

// True iff some bit pattern occurs twice in the row (stops at the first repeat).
template <class T>
inline bool row_has_ties(const T* row, int64_t n, KeyClasses& table) {
    table.next_row();
    for (int64_t i = 0; i < n; ++i)
        if (table.insert(uint64_t(row[i]), i) != i) return true;
    return false;
}

// Scratch of find_row for rows of n, one per thread.
struct FindScratch {
    explicit FindScratch(int64_t n) : table(n), cls(size_t(n)), cnt(size_t(n)), base(size_t(n)), src(size_t(n)) {}
    KeyClasses table;
    std::vector<int64_t> cls, cnt, base, src;
};

// The canonical permutation of one row (perm.find_reference's): equal values' positions in
// increasing order take their sources in increasing order. v, w: the row's initial and trained
// bit patterns. False if w is not a rearrangement of v (out is then partly written).
template <class T>
inline bool find_row(const T* v, const T* w, int64_t n, int64_t* out, FindScratch& s) {
    int64_t* cls = s.cls.data();
    int64_t* cnt = s.cnt.data();
    const int64_t k = row_classes(v, n, s.table, cls, cnt);
    if (k == n) {  // all distinct: class c is source c; cnt marks uses
        for (int64_t c = 0; c < n; ++c) cnt[c] = 0;
        for (int64_t j = 0; j < n; ++j) {
            const int64_t c = s.table.find(uint64_t(w[j]));
            if (c < 0 || cnt[c]) return false;
            cnt[c] = 1;
            out[j] = c;
        }
        return true;
    }
    int64_t* base = s.base.data();  // counting sort: sources of class c at src[base[c] ..)
    int64_t* src = s.src.data();
    int64_t acc = 0;
    for (int64_t c = 0; c < k; ++c) {
        base[c] = acc;
        acc += cnt[c];
        cnt[c] = 0;
    }
    for (int64_t i = 0; i < n; ++i) src[base[cls[i]] + cnt[cls[i]]++] = i;
    for (int64_t c = 0; c < k; ++c) {  // cls[c]: class c's size; cnt[c]: its uses so far
        cls[c] = cnt[c];
        cnt[c] = 0;
    }
    for (int64_t j = 0; j < n; ++j) {
        const int64_t c = s.table.find(uint64_t(w[j]));
        if (c < 0 || cnt[c] >= cls[c]) return false;
        out[j] = src[base[c] + cnt[c]++];
    }
    return true;
}

}  // namespace pc
