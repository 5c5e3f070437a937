// The rANS coder and Fenwick tree shared by the `uniform` and `model` codecs (header-only).
//
// formats/codecs/uniform.md §3 is normative; permcodec/codecs/_rans.py holds the Python twin
// (Reader is the reference). State x in [2^31, 2^63); frequencies out of M = 2^28; the stream is
// 32-bit words. Every payload read goes through read_states/advance, which check the segment's
// end: a hostile payload can make a decode fail, never read outside its words.
//
// Names and signatures here are stable (model.cpp uses them): add, never rename.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pc {
namespace rans {

constexpr int PREC = 28;
constexpr int64_t M = int64_t(1) << PREC;
constexpr int64_t LOW = int64_t(1) << 31;
constexpr int MAX_LANES = 64;

// ---- decoding -------------------------------------------------------------------------------

// The lanes' initial states from words[wlo .. wlo + 2*lanes) (low word first) into x; false if
// the segment [wlo, whi) is too short or a state is outside [2^31, 2^63).
inline bool read_states(const uint32_t* words, int64_t wlo, int64_t whi, int lanes, int64_t* x) {
    if (lanes < 1 || lanes > MAX_LANES || whi - wlo < 2 * int64_t(lanes)) return false;
    for (int l = 0; l < lanes; ++l) {
        uint64_t v = uint64_t(words[wlo + 2 * l]) | (uint64_t(words[wlo + 2 * l + 1]) << 32);
        if (v < uint64_t(LOW) || v >> 63) return false;
        x[l] = int64_t(v);
    }
    return true;
}

// One decoding step of a lane in state x whose slot s = x % M fell in [cum, cum + freq): the next
// state, reading words[p] (p < whi) when it drops below 2^31. False when the stream ends early.
inline bool advance(int64_t& x, int64_t freq, int64_t s, int64_t cum, const uint32_t* words, int64_t& p,
                    int64_t whi) {
    int64_t y = freq * (x >> PREC) + s - cum;
    if (y < LOW) {
        if (p >= whi) return false;
        y = (y << 32) | int64_t(words[p]);
        ++p;
    }
    x = y;
    return true;
}

// A segment's decoder: lanes interleaved, symbol k on lane k % lanes (every symbol counts, also
// one with freq = M), all lanes reading from one shared stream pointer.
struct Decoder {
    const uint32_t* words = nullptr;
    int64_t p = 0, end = 0;
    int lanes = 1, lane = 0;
    int64_t x[MAX_LANES];

    // False if words[lo, hi) cannot start a segment of `lanes` lanes.
    bool open(const uint32_t* w, int64_t lo, int64_t hi, int nlanes) {
        words = w;
        end = hi;
        lanes = nlanes;
        lane = 0;
        if (!read_states(w, lo, hi, nlanes, x)) return false;
        p = lo + 2 * int64_t(nlanes);
        return true;
    }
    int64_t slot() const { return x[lane] & (M - 1); }
    // Consume the current symbol (cum, freq) of slot s = slot(); false when the stream ends early.
    bool step(int64_t s, int64_t cum, int64_t freq) {
        if (!advance(x[lane], freq, s, cum, words, p, end)) return false;
        if (++lane == lanes) lane = 0;
        return true;
    }
    // Every word read and every lane back in the initial state.
    bool finished() const {
        if (p != end) return false;
        for (int l = 0; l < lanes; ++l)
            if (x[l] != LOW) return false;
        return true;
    }
};

// ---- encoding -------------------------------------------------------------------------------

// A segment's encoder: push the symbols last to first (symbol k on lane k % lanes), then flush.
struct Encoder {
    int lanes;
    int64_t x[MAX_LANES];
    std::vector<uint32_t> emitted;  // in order of emission (the segment stores them reversed)

    explicit Encoder(int nlanes) : lanes(nlanes) {
        for (int l = 0; l < lanes; ++l) x[l] = LOW;
    }
    void reset() {
        for (int l = 0; l < lanes; ++l) x[l] = LOW;
        emitted.clear();
    }
    // Code (cum, freq) on `lane`; requires 1 <= freq, cum + freq <= M.
    void push(int lane, int64_t cum, int64_t freq) {
        int64_t s = x[lane];
        if ((s >> (63 - PREC)) >= freq) {
            emitted.push_back(uint32_t(s & 0xFFFFFFFF));
            s >>= 32;
        }
        x[lane] = (s / freq) * M + s % freq + cum;
    }
    // Words the segment takes: the lanes' states, then the stream.
    int64_t size() const { return 2 * int64_t(lanes) + int64_t(emitted.size()); }
    // Write the segment (size() words) to out; returns size().
    int64_t flush(uint32_t* out) const {
        for (int l = 0; l < lanes; ++l) {
            out[2 * l] = uint32_t(uint64_t(x[l]) & 0xFFFFFFFF);
            out[2 * l + 1] = uint32_t(uint64_t(x[l]) >> 32);
        }
        int64_t w = 2 * int64_t(lanes);
        for (std::size_t i = emitted.size(); i-- > 0;) out[w++] = emitted[i];
        return w;
    }
};

// floor(a * M / r) for 0 <= a <= r <= M, by a double estimate (off by at most one: a * M < 2^57
// and the quotient is <= M) corrected with exact integers; rinv = 1.0 / r.
inline int64_t scaled(int64_t a, int64_t r, double rinv) {
    int64_t num = a << PREC;
    int64_t q = int64_t(double(num) * rinv);
    int64_t d = num - q * r;
    if (d < 0)
        --q;
    else if (d >= r)
        ++q;
    return q;
}

// ---- Fenwick tree over K counts (1-based: fen[1..K]; fen[0] unused) ----------------------------

template <class T, class C>
inline void fen_build(T* fen, const C* rem, int64_t K) {
    for (int64_t t = 0; t < K; ++t) fen[t + 1] = T(rem[t]);
    for (int64_t t = 1; t <= K; ++t) {
        int64_t u = t + (t & -t);
        if (u <= K) fen[u] += fen[t];
    }
}

// count[t] += d (t 0-based).
template <class T>
inline void fen_add(T* fen, int64_t K, int64_t t, T d) {
    for (++t; t <= K; t += t & -t) fen[t] += d;
}

// Sum of the counts of classes 0 .. t-1.
template <class T>
inline int64_t fen_prefix(const T* fen, int64_t t) {
    int64_t acc = 0;
    for (; t > 0; t -= t & -t) acc += fen[t];
    return acc;
}

// Largest power of two <= K (0 for K = 0): fen_find's first step.
inline int64_t fen_top(int64_t K) {
    int64_t top = K ? 1 : 0;
    while (top && top * 2 <= K) top *= 2;
    return top;
}

// The class t holding item q (0 <= q < total count), and in `acc` the items before it (prefix(t)).
template <class T>
inline int64_t fen_find(const T* fen, int64_t K, int64_t top, int64_t q, int64_t& acc) {
    int64_t pos = 0;
    acc = 0;
    for (int64_t step = top; step; step >>= 1) {  // branch-free: the descent is data-dependent
        const int64_t nxt = pos + step;
        const int64_t v = int64_t(fen[nxt <= K ? nxt : K]);
        const bool take = (nxt <= K) & (acc + v <= q);
        pos = take ? nxt : pos;
        acc = take ? acc + v : acc;
    }
    return pos;
}

}  // namespace rans
}  // namespace pc
