// permcodec._core: the generator (formats/SPEC.md §4): Philox4x32-10 words -> binary64 values ->
// the tensor's dtype, bit-equal to values.generate_reference (tests/test_generator.py). The tile
// kernel is in values_kernel.h, compiled twice: a portable copy and an AVX2 copy chosen at run
// time (never -march=native); PERMCODEC_SIMD=portable or generate(..., simd="portable") forces
// the portable one, so the tests compare both.
#include "common.h"

#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PC_HAVE_AVX2_PATH 1
#endif

namespace pc {
namespace gen {

constexpr int kTile = 128;  // elements per tile: 64 value blocks, 32 mask blocks
constexpr int kRounds = 10;
constexpr uint64_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
constexpr int kMaskDomain = 1;
constexpr double kSerialBelow = 1 << 16;  // elements below which a call stays on one thread

constexpr double kTwo26 = 67108864.0;                         // 2^26
constexpr double kTwoM52 = 2.220446049250313080847263336181640625e-16;  // 2^-52
constexpr double kUOff = 1.1102230246251565404236316680908203125e-16 - 1.0;  // 2^-53 - 1 (exact)
constexpr double kSqrt2 = 1.4142135623730951;
constexpr double kLn2 = 0.6931471805599453;

// values.py's coefficients (Wichura's AS241), highest degree first, digit for digit.
constexpr double kA[8] = {2.5090809287301226727e+3, 3.3430575583588128105e+4, 6.7265770927008700853e+4,
                          4.5921953931549871457e+4, 1.3731693765509461125e+4, 1.9715909503065514427e+3,
                          1.3314166789178437745e+2, 3.3871328727963666080e+0};
constexpr double kB[8] = {5.2264952788528545610e+3, 2.8729085735721942674e+4, 3.9307895800092710610e+4,
                          2.1213794301586595867e+4, 5.3941960214247511077e+3, 6.8718700749205790830e+2,
                          4.2313330701600911252e+1, 1.0};
constexpr double kC[8] = {7.74545014278341407640e-4, 2.27238449892691845833e-2, 2.41780725177450611770e-1,
                          1.27045825245236838258e+0, 3.64784832476320460504e+0, 5.76949722146069140550e+0,
                          4.63033784615654529590e+0, 1.42343711074968357734e+0};
constexpr double kD[8] = {1.05075007164441684324e-9, 5.47593808499534494600e-4, 1.51986665636164571966e-2,
                          1.48103976427480074590e-1, 6.89767334985100004550e-1, 1.67638483018380384940e+0,
                          2.05319162663775882187e+0, 1.0};
constexpr double kE[8] = {2.01033439929228813265e-7, 2.71155556874348757815e-5, 1.24266094738807843860e-3,
                          2.65321895265761230930e-2, 2.96560571828504891230e-1, 1.78482653991729133580e+0,
                          5.46378491116411436990e+0, 6.65790464350110377720e+0};
constexpr double kF[8] = {2.04426310338993978564e-15, 1.42151175831644588870e-7, 1.84631831751005468180e-5,
                          7.86869131145613259100e-4, 1.48753612908506148525e-2, 1.36929880922735805310e-1,
                          5.99832206555887937690e-1, 1.0};
// values.LOG_C: 1 / (2i + 1) for i = 11 .. 0 (each a correctly rounded quotient).
constexpr double kLogC[12] = {1.0 / 23, 1.0 / 21, 1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13,
                              1.0 / 11, 1.0 / 9,  1.0 / 7,  1.0 / 5,  1.0 / 3,  1.0};

// kCompress[m]: the int32 lane order that moves the 64-bit lanes set in the 4-bit mask m to the
// front, in order (the AVX2 normal path gathers its tail elements with it).
struct CompressTable {
    alignas(32) int32_t lanes[16][8];
    constexpr CompressTable() : lanes{} {
        for (int m = 0; m < 16; ++m) {
            int k = 0;
            for (int b = 0; b < 4; ++b)
                if (m >> b & 1) {
                    lanes[m][k++] = 2 * b;
                    lanes[m][k++] = 2 * b + 1;
                }
        }
    }
};
constexpr CompressTable kCompress{};

enum class Dist { uniform, normal, constant };
enum class Out { f64, f32, f16, bf16 };

// One generate call: elements [start, end) of a rule into dst.
struct Job {
    uint32_t keys[2 * kRounds];  // the ten round keys (k0, k1)
    uint64_t stream;
    Dist dist;
    double scale;
    uint64_t prune;
    Out out;
    int64_t start, end;
    void* dst;
};

namespace portable {
#include "values_kernel.h"
}  // namespace portable

#ifdef PC_HAVE_AVX2_PATH
#pragma GCC push_options
#pragma GCC target("avx2")
#define PC_AVX2 1
namespace avx2 {
#include "values_kernel.h"
}  // namespace avx2
#undef PC_AVX2
#pragma GCC pop_options
#endif

bool avx2_supported() {
#ifdef PC_HAVE_AVX2_PATH
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

// The SIMD path to run: "auto" is AVX2 where the CPU has it, unless PERMCODEC_SIMD=portable.
bool use_avx2(const std::string& simd) {
    if (simd == "portable") return false;
    if (simd == "avx2") {
        if (!avx2_supported()) throw py::value_error("simd='avx2' but this CPU has no AVX2: use 'auto' or 'portable'");
        return true;
    }
    if (simd != "auto") throw py::value_error("simd must be 'auto', 'portable' or 'avx2', not '" + simd + "'");
    const char* env = std::getenv("PERMCODEC_SIMD");
    if (env && std::string(env) == "portable") return false;
    return avx2_supported();
}

Dist dist_of(const std::string& d) {
    if (d == "uniform") return Dist::uniform;
    if (d == "normal") return Dist::normal;
    if (d == "constant") return Dist::constant;
    throw py::value_error("unknown distribution '" + d + "': expected 'uniform', 'normal' or 'constant'");
}

Out out_of(const std::string& dtype, const char** numpy_name) {
    static const struct { const char* name; const char* storage; Out out; } table[] = {
        {"float64", "float64", Out::f64}, {"float32", "float32", Out::f32},
        {"float16", "float16", Out::f16}, {"bfloat16", "uint16", Out::bf16}};
    for (const auto& t : table)
        if (dtype == t.name) {
            *numpy_name = t.storage;
            return t.out;
        }
    throw py::value_error("unknown dtype '" + dtype + "': use float64, float32, float16 or bfloat16");
}

// Elements start .. start+count-1 of the rule, in dtype (bfloat16 as uint16 bit patterns).
py::array generate(uint64_t seed, uint64_t stream, int64_t start, int64_t count, const std::string& dist,
                   double scale, uint64_t prune, const std::string& dtype, const std::string& simd) {
    if (start < 0 || count < 0 || count > INT64_MAX - start)
        throw py::value_error("start and count must be >= 0 and start + count must fit in 63 bits");
    if (stream >> 62) throw py::value_error("stream must be below 2^62");
    Job job;
    const char* storage = nullptr;
    job.out = out_of(dtype, &storage);
    job.dist = dist_of(dist);
    const bool fast = use_avx2(simd);
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    for (int r = 0; r < kRounds; ++r, k0 += kW0, k1 += kW1) {
        job.keys[2 * r] = k0;
        job.keys[2 * r + 1] = k1;
    }
    job.stream = stream;
    job.scale = scale;
    job.prune = prune;
    job.start = start;
    job.end = start + count;
    py::array out(py::dtype(storage), std::vector<py::ssize_t>{py::ssize_t(count)});
    job.dst = out.mutable_data();
    if (count == 0) return out;
    const int64_t t0 = start / kTile, t1 = (job.end + kTile - 1) / kTile;
    auto run = [&](int64_t lo, int64_t hi) {
#ifdef PC_HAVE_AVX2_PATH
        if (fast) return avx2::run_tiles(t0 + lo, t0 + hi, job);
#endif
        portable::run_tiles(t0 + lo, t0 + hi, job);
    };
    {
        py::gil_scoped_release nogil;
        parallel_for(t1 - t0, kTile, kSerialBelow, run);
    }
    return out;
}

// binary32 bit patterns -> binary16 bit patterns by the generator's own rounding (for tests).
py::array_t<uint16_t> f16_bits_of(const py::array_t<uint32_t, py::array::c_style | py::array::forcecast>& x,
                                  const std::string& simd) {
    py::array_t<uint16_t> out(x.size());
    const uint32_t* p = x.data();
    uint16_t* o = out.mutable_data();
#ifdef PC_HAVE_AVX2_PATH
    if (use_avx2(simd)) {
        for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = avx2::f16_bits(p[i]);
        return out;
    }
#endif
    for (py::ssize_t i = 0; i < x.size(); ++i) o[i] = portable::f16_bits(p[i]);
    return out;
}

}  // namespace gen

void init_values(py::module_& m) {
    m.def("generate", &gen::generate, py::arg("seed"), py::arg("stream"), py::arg("start"), py::arg("count"),
          py::arg("dist"), py::arg("scale"), py::arg("prune"), py::arg("dtype"), py::arg("simd") = "auto",
          "elements start .. start+count-1 of a rule in dtype: values.generate_reference's bits");
    m.def("simd_paths", [] {
        py::list l;
        l.append("portable");
        if (gen::avx2_supported()) l.append("avx2");
        return l;
    }, "the generator's SIMD paths this CPU can run");
    m.def("f16_bits", &gen::f16_bits_of, py::arg("bits"), py::arg("simd") = "auto",
          "binary32 bit patterns -> binary16 bit patterns, the generator's rounding (for tests)");
}

}  // namespace pc
