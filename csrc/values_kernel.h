// The generator's tile kernel: Philox words -> binary64 values -> the output dtype, 128 elements
// at a time. No include guard: values.cpp includes this file twice, once plainly (the portable
// path) and once under `#pragma GCC target("avx2")` with PC_AVX2 defined, each time inside its
// own namespace. The two copies run the same operations in the same order (plain loops the
// compiler may vectorize, which never changes a bit: no fast-math, no contraction); only the
// Philox stage is written with AVX2 intrinsics in the second copy.
//
// Every step mirrors permcodec/values.py and philox.py (the executable spec):
// * u = (2k + 1 - 2^53) * 2^-53 is computed as (hi * 2^26 + lo) * 2^-52 + (2^-53 - 1), where
//   hi = a >> 5 and lo = b >> 6 are exact in binary64 and every rounding step is exact (the
//   result is representable); the normal rule's p = (1 - |u|) * 0.5 is exactly (2^53 - |s|) * 2^-54.
// * From there, the reference's operations in its order: Horner from the highest coefficient,
//   ppnd16's central and tail branches, log_ by the exponent split and the odd polynomial.

// Horner's rule from the highest coefficient, as values._horner (no fused multiply-add).
template <int N>
static inline double horner(const double (&c)[N], double x) {
    double acc = c[0];
    for (int i = 1; i < N; ++i) acc = acc * x + c[i];
    return acc;
}

#ifdef PC_AVX2
// horner() on four lanes: the same multiplies and adds in the same order (no FMA in this target).
template <int N>
static inline __m256d horner4(const double (&c)[N], __m256d x) {
    __m256d acc = _mm256_set1_pd(c[0]);
    for (int i = 1; i < N; ++i) acc = _mm256_add_pd(_mm256_mul_pd(acc, x), _mm256_set1_pd(c[i]));
    return acc;
}
#endif

// binary32 bits -> binary16 bits, round to nearest even, as numpy's float32 -> float16 cast
// (finite and infinite inputs; the generator makes no NaN).
static inline uint16_t f16_bits(uint32_t x) {
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7FFFFFFFu;
    const uint32_t b = ax - 0x38000000u;  // normal: rebias the exponent, round 13 bits off
    const uint32_t normal = (b + 0xFFFu + ((b >> 13) & 1u)) >> 13;
    const int32_t e = int32_t(ax >> 23);  // subnormal: m * 2^(e - 126) in units of 2^-24
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t sh = uint32_t(std::min(std::max(126 - e, 1), 31));
    const uint32_t q = m >> sh;
    const uint32_t rem = m & ((1u << sh) - 1u);
    const uint32_t half = 1u << (sh - 1u);
    const uint32_t sub = q + uint32_t((rem > half) || (rem == half && (q & 1u)));
    uint32_t h = ax < 0x38800000u ? sub : normal;
    h = ax >= 0x477FF000u ? 0x7C00u : h;
    return uint16_t(sign | h);
}

// Philox blocks first .. first+nblocks-1 (nblocks a multiple of 16) of the counter words 2, 3 =
// s0, s1, into w[4 * lane + q] (block order, four words per block).
static inline void philox_blocks(uint64_t first, int nblocks, uint32_t s0, uint32_t s1, const uint32_t* ks,
                                 uint32_t* w) {
#ifdef PC_AVX2
    // Two independent sets of 8 blocks per pass: a round's multiply latency overlaps the other's.
    const __m256i m0 = _mm256_set1_epi64x(kM0), m1 = _mm256_set1_epi64x(kM1);
    for (int l = 0; l < nblocks; l += 16) {
        alignas(32) uint32_t c0[16], c1[16];
        for (int j = 0; j < 16; ++j) {
            const uint64_t i = first + uint64_t(l + j);
            c0[j] = uint32_t(i);
            c1[j] = uint32_t(i >> 32);
        }
        __m256i x0[2], x1[2], x2[2], x3[2];
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; ++h) {
            x0[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c0 + 8 * h));
            x1[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c1 + 8 * h));
            x2[h] = _mm256_set1_epi32(int(s0));
            x3[h] = _mm256_set1_epi32(int(s1));
        }
        for (int r = 0; r < kRounds; ++r) {
            const __m256i k0 = _mm256_set1_epi32(int(ks[2 * r])), k1 = _mm256_set1_epi32(int(ks[2 * r + 1]));
            _Pragma("GCC unroll 2") for (int h = 0; h < 2; ++h) {
                const __m256i e0 = _mm256_mul_epu32(x0[h], m0), o0 = _mm256_mul_epu32(_mm256_srli_epi64(x0[h], 32), m0);
                const __m256i e1 = _mm256_mul_epu32(x2[h], m1), o1 = _mm256_mul_epu32(_mm256_srli_epi64(x2[h], 32), m1);
                const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(e0, 32), o0, 0xAA);
                const __m256i lo0 = _mm256_blend_epi32(e0, _mm256_slli_epi64(o0, 32), 0xAA);
                const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(e1, 32), o1, 0xAA);
                const __m256i lo1 = _mm256_blend_epi32(e1, _mm256_slli_epi64(o1, 32), 0xAA);
                x0[h] = _mm256_xor_si256(_mm256_xor_si256(hi1, x1[h]), k0);
                x1[h] = lo1;
                x2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, x3[h]), k1);
                x3[h] = lo0;
            }
        }
        _Pragma("GCC unroll 2") for (int h = 0; h < 2; ++h) {  // 4 x 8 transpose: four consecutive words per block
            const __m256i a = _mm256_unpacklo_epi32(x0[h], x1[h]), b = _mm256_unpackhi_epi32(x0[h], x1[h]);
            const __m256i c = _mm256_unpacklo_epi32(x2[h], x3[h]), d = _mm256_unpackhi_epi32(x2[h], x3[h]);
            const __m256i r0 = _mm256_unpacklo_epi64(a, c), r1 = _mm256_unpackhi_epi64(a, c);
            const __m256i r2 = _mm256_unpacklo_epi64(b, d), r3 = _mm256_unpackhi_epi64(b, d);
            __m256i* o = reinterpret_cast<__m256i*>(w + 4 * (l + 8 * h));
            _mm256_storeu_si256(o + 0, _mm256_permute2x128_si256(r0, r1, 0x20));
            _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(r2, r3, 0x20));
            _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(r0, r1, 0x31));
            _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(r2, r3, 0x31));
        }
    }
#else
    for (int l = 0; l < nblocks; ++l) {
        const uint64_t i = first + uint64_t(l);
        uint32_t x0 = uint32_t(i), x1 = uint32_t(i >> 32), x2 = s0, x3 = s1;
        for (int r = 0; r < kRounds; ++r) {
            const uint64_t p0 = uint64_t(x0) * kM0, p1 = uint64_t(x2) * kM1;
            x0 = uint32_t(p1 >> 32) ^ x1 ^ ks[2 * r];
            x1 = uint32_t(p1);
            x2 = uint32_t(p0 >> 32) ^ x3 ^ ks[2 * r + 1];
            x3 = uint32_t(p0);
        }
        w[4 * l] = x0;
        w[4 * l + 1] = x1;
        w[4 * l + 2] = x2;
        w[4 * l + 3] = x3;
    }
#endif
}

// u[e] = (2k + 1 - 2^53) * 2^-53 of element e's value words w[2e], w[2e+1] (exact).
static inline void unit_values(const uint32_t* w, double* u) {
    for (int e = 0; e < kTile; ++e) {
        const double hi = double(int32_t(w[2 * e] >> 5)), lo = double(int32_t(w[2 * e + 1] >> 6));
        u[e] = (hi * kTwo26 + lo) * kTwoM52 + kUOff;
    }
}

// values.ppnd16 of p = (1 - |u|) * 0.5 for each element, then scale * (u > 0 ? -z : z).
// The central branch is computed for all elements; the tails (|q| > 0.425, about 15%) are
// gathered, computed, and scattered back. s holds scratch of 5 * kTile doubles, idx kTile integers.
static inline void normal_values(const double* u, double scale, double* x, double* s, int64_t* idx) {
    double* p = s;
    double* tp = s + kTile;
    double* t = s + 2 * kTile;
    double* lm = s + 3 * kTile;
#ifdef PC_AVX2
    const __m256d half = _mm256_set1_pd(0.5), one = _mm256_set1_pd(1.0);
    const __m256d sign = _mm256_set1_pd(-0.0);
    for (int e = 0; e < kTile; e += 4) {
        const __m256d pe = _mm256_mul_pd(_mm256_sub_pd(one, _mm256_andnot_pd(sign, _mm256_load_pd(u + e))), half);
        const __m256d q = _mm256_sub_pd(pe, half);
        const __m256d r = _mm256_sub_pd(_mm256_set1_pd(0.180625), _mm256_mul_pd(q, q));
        _mm256_store_pd(p + e, pe);
        _mm256_store_pd(x + e, _mm256_div_pd(_mm256_mul_pd(horner4(kA, r), q), horner4(kB, r)));
    }
#else
    for (int e = 0; e < kTile; ++e) {
        const double pe = (1.0 - std::fabs(u[e])) * 0.5;
        const double q = pe - 0.5;
        const double r = 0.180625 - q * q;
        p[e] = pe;
        x[e] = (horner(kA, r) * q) / horner(kB, r);
    }
#endif
    int n = 0;
#ifdef PC_AVX2
    const __m256d cut = _mm256_set1_pd(0.425);
    __m256i pos = _mm256_setr_epi64x(0, 1, 2, 3);
    for (int e = 0; e < kTile; e += 4, pos = _mm256_add_epi64(pos, _mm256_set1_epi64x(4))) {
        const __m256d pe = _mm256_load_pd(p + e);
        const __m256d tail = _mm256_cmp_pd(_mm256_andnot_pd(sign, _mm256_sub_pd(pe, half)), cut, _CMP_GT_OQ);
        const int mask = _mm256_movemask_pd(tail);
        const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.lanes[mask]));
        _mm256_storeu_pd(tp + n, _mm256_castsi256_pd(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(pe), order)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + n), _mm256_permutevar8x32_epi32(pos, order));
        n += __builtin_popcount(unsigned(mask));  // n <= e: the stores stay inside tp and idx
    }
#else
    for (int e = 0; e < kTile; ++e) {
        idx[n] = e;
        tp[n] = p[e];
        n += std::fabs(p[e] - 0.5) > 0.425;
    }
#endif
#ifdef PC_AVX2
    for (int j = n; j < ((n + 3) & ~3); ++j) tp[j] = 0.25;  // padding lanes, never scattered
    const __m256i frac = _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll), bias = _mm256_set1_epi64x(1023ll << 52);
    const __m256i low32 = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int j = 0; j < n; j += 4) {
        const __m256d pj = _mm256_load_pd(tp + j);
        const __m256d lower = _mm256_cmp_pd(_mm256_sub_pd(pj, half), _mm256_setzero_pd(), _CMP_LE_OQ);
        const __m256i bits = _mm256_castpd_si256(_mm256_blendv_pd(_mm256_sub_pd(one, pj), pj, lower));
        __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, frac), bias));
        const __m256i e32 = _mm256_permutevar8x32_epi32(_mm256_srli_epi64(bits, 52), low32);
        __m256d e = _mm256_cvtepi32_pd(_mm_sub_epi32(_mm256_castsi256_si128(e32), _mm_set1_epi32(1023)));
        const __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(kSqrt2), _CMP_GT_OQ);
        m = _mm256_blendv_pd(m, _mm256_mul_pd(m, half), big);
        e = _mm256_blendv_pd(e, _mm256_add_pd(e, one), big);
        const __m256d sl = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
        const __m256d lg = _mm256_add_pd(_mm256_mul_pd(e, _mm256_set1_pd(kLn2)),
                                         _mm256_mul_pd(_mm256_mul_pd(sl, _mm256_set1_pd(2.0)),
                                                       horner4(kLogC, _mm256_mul_pd(sl, sl))));
        const __m256d tj = _mm256_sqrt_pd(_mm256_xor_pd(lg, sign));
        _mm256_store_pd(t + j, tj);
        const __m256d r = _mm256_sub_pd(tj, _mm256_set1_pd(1.6));
        _mm256_store_pd(lm + j, _mm256_div_pd(horner4(kC, r), horner4(kD, r)));
    }
#else
    double* le = s + 4 * kTile;
    for (int j = 0; j < n; ++j) {  // t = p or 1 - p, split into exponent and mantissa in [1, 2)
        const double pj = tp[j];
        const double tj = pj - 0.5 <= 0.0 ? pj : 1.0 - pj;
        uint64_t bits;
        std::memcpy(&bits, &tj, 8);
        const uint64_t mb = (bits & 0x000FFFFFFFFFFFFFull) | (uint64_t(1023) << 52);
        std::memcpy(&lm[j], &mb, 8);
        le[j] = double(int32_t(int64_t(bits >> 52) - 1023));
    }
    for (int j = 0; j < n; ++j) {  // t = sqrt(-log_(t)); then the near tail's rational function
        double m = lm[j], e = le[j];
        const bool big = m > kSqrt2;
        m = big ? m * 0.5 : m;
        e = big ? e + 1.0 : e;
        const double sl = (m - 1.0) / (m + 1.0);
        const double tj = std::sqrt(-(e * kLn2 + (sl * 2.0) * horner(kLogC, sl * sl)));
        t[j] = tj;
        const double r = tj - 1.6;
        lm[j] = horner(kC, r) / horner(kD, r);
    }
#endif
    for (int j = 0; j < n; ++j) {  // the far tail (t > 5, p < 1.4e-11) is rare
        if (t[j] > 5.0) {
            const double r = t[j] - 5.0;
            lm[j] = horner(kE, r) / horner(kF, r);
        }
    }
    for (int j = 0; j < n; ++j) x[idx[j]] = tp[j] - 0.5 < 0.0 ? -lm[j] : lm[j];
    for (int e = 0; e < kTile; ++e) x[e] = scale * (u[e] > 0.0 ? -x[e] : x[e]);
}

// Tiles t0 .. t1-1 (absolute) of one rule, clipped to elements [start, end), into out.
static void run_tiles(int64_t t0, int64_t t1, const Job& job) {
    alignas(32) uint32_t w[2 * kTile];
    alignas(32) double u[kTile], x[kTile], s[5 * kTile];
    alignas(32) float f[kTile];
    int64_t idx[kTile];
    const uint32_t s0 = uint32_t(job.stream), s1 = uint32_t(job.stream >> 32);
    const uint32_t s1m = s1 | (uint32_t(kMaskDomain) << 30);
    for (int64_t t = t0; t < t1; ++t) {
        if (job.dist == Dist::constant) {
            for (int e = 0; e < kTile; ++e) x[e] = job.scale;
        } else {
            philox_blocks(uint64_t(t) * (kTile / 2), kTile / 2, s0, s1, job.keys, w);
            unit_values(w, u);
            if (job.dist == Dist::uniform) {
                for (int e = 0; e < kTile; ++e) x[e] = job.scale * u[e];
            } else {
                normal_values(u, job.scale, x, s, idx);
            }
        }
        if (job.prune) {  // mask word of element e: word e & 3 of mask block e >> 2
            philox_blocks(uint64_t(t) * (kTile / 4), kTile / 4, s0, s1m, job.keys, w);
            for (int e = 0; e < kTile; ++e) x[e] = uint64_t(w[e]) < job.prune ? 0.0 : x[e];
        }
        const int64_t base = t * kTile;
        const int lo = int(std::max<int64_t>(job.start - base, 0));
        const int hi = int(std::min<int64_t>(job.end - base, kTile));
        const int64_t o = base + lo - job.start;
        switch (job.out) {
            case Out::f64:
                std::memcpy(static_cast<double*>(job.dst) + o, x + lo, size_t(hi - lo) * 8);
                break;
            case Out::f32:
                for (int e = 0; e < kTile; ++e) f[e] = float(x[e]);
                std::memcpy(static_cast<float*>(job.dst) + o, f + lo, size_t(hi - lo) * 4);
                break;
            case Out::f16:
            case Out::bf16: {
                for (int e = 0; e < kTile; ++e) f[e] = float(x[e]);
                uint32_t* b = w;  // the words are spent: reuse them for the binary32 bits
                std::memcpy(b, f, sizeof f);
                uint16_t* d = static_cast<uint16_t*>(job.dst) + o - lo;
                if (job.out == Out::bf16) {
                    for (int e = lo; e < hi; ++e) d[e] = uint16_t((b[e] + 0x7FFFu + ((b[e] >> 16) & 1u)) >> 16);
                } else {
                    for (int e = lo; e < hi; ++e) d[e] = f16_bits(b[e]);
                }
                break;
            }
        }
    }
}
