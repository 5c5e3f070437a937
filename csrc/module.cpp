// permcodec._core: the compiled core. One implementation per algorithm; the numpy references in
// permcodec/ are the executable spec and the tests compare the two bit for bit.
#include "common.h"

#include <exception>
#include <mutex>

namespace pc {

int num_threads() {
    const char* s = std::getenv("PERMCODEC_NUM_THREADS");
    if (s && *s) {
        char* end = nullptr;
        long v = std::strtol(s, &end, 10);
        if (end && *end == 0 && v >= 1) return int(std::min<long>(v, 256));
    }
    unsigned h = std::thread::hardware_concurrency();
    return h ? int(std::min<unsigned>(h, 256)) : 1;
}

void parallel_for(int64_t n, double work_per_item, double serial_below,
                  const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    int t = num_threads();
    if (t <= 1 || n == 1 || double(n) * work_per_item < serial_below) {
        fn(0, n);
        return;
    }
    int64_t chunks = std::min<int64_t>(n, t);
    std::exception_ptr err;
    std::mutex mu;
    std::vector<std::thread> pool;
    pool.reserve(size_t(chunks - 1));
    auto run = [&](int64_t c) {
        try {
            fn(c * n / chunks, (c + 1) * n / chunks);
        } catch (...) {
            std::lock_guard<std::mutex> g(mu);
            if (!err) err = std::current_exception();
        }
    };
    // A thread that cannot be created (EAGAIN under a process or thread limit) is not an error:
    // its chunk, and every later one, runs on the calling thread. Every started thread is joined
    // before anything unwinds (a joinable std::thread's destructor would abort the process).
    int64_t started = 1;
    try {
        for (; started < chunks; ++started) pool.emplace_back(run, started);
    } catch (...) {
    }
    run(0);
    for (int64_t c = started; c < chunks; ++c) run(c);
    for (auto& th : pool) th.join();
    if (err) std::rethrow_exception(err);
}

}  // namespace pc

PYBIND11_MODULE(_core, m) {
    m.doc() = "permcodec's compiled core (generator, permutations, codecs)";
    // Held for the life of the process (never decref'd at exit, when the interpreter is gone).
    static PyObject* format_error_type =
        py::object(py::module_::import("permcodec.errors").attr("FormatError")).release().ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const pc::format_error& e) {
            PyErr_SetString(format_error_type, e.what());
        }
    });
    m.def("num_threads", &pc::num_threads, "threads the core uses (PERMCODEC_NUM_THREADS or the CPU count)");
    pc::init_values(m);
    pc::init_perm(m);
    pc::init_packed(m);
    pc::init_rans(m);
    pc::init_model(m);
}
