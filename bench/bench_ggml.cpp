// llama.cpp's libggml as an in-process benchmark peer of lowbit's packed GEMV/GEMM (issue 16).
// Same process, same shapes, same regimes and the same Eigen FP32 baselines as bench_gemv /
// bench_gemm (gemm_bench_util.hpp), so scripts/bench turns every case into ratio_vs_eigen_fp32
// against a baseline measured in this process, and pairs each ggml type with the lowbit kernel of
// the same width (scripts/bench "peer" table).
//
// Weights: random N(0, 1) FP32 quantized with ggml's own quantizer (ggml_quantize_chunk), 4096x4096.
// Kernels, each with the activation quantization to the type's vec_dot_type inside the timed
// region (as lowbit's cases include quantize_activations):
//   ggml_<type>          the plain CPU type traits: vec_dot_type's from_float on x, then
//                        ggml_get_type_traits_cpu(type)->vec_dot row by row (1 thread) — ggml's
//                        non-repacked kernel, no graph overhead;
//   ggml_<type>_graph    a ggml_mul_mat graph on the CPU backend, weights in the plain CPU buffer
//                        (llama.cpp with use_extra_bufts = false), 1 and 2 threads;
//   ggml_<type>_<extra>  the same graph with the weight tensor in one of the CPU backend's "extra"
//                        buffer types (ggml_backend_dev_get_extra_bufts: CPU_REPACK -> "_repack",
//                        AMX -> "_amx"), i.e. weights repacked for ggml's interleaved kernels.
// Graphs are built and weights uploaded (repacked) outside the timed region; only
// ggml_backend_graph_compute is timed (which quantizes x itself). "dram" cycles through
// >= 256 MiB of weight copies (one graph per copy). Counter packed_bytes = ggml_row_size · rows.
// This libggml (llama-cpp-python's build) runs graph threads with OpenMP: run with
// OMP_WAIT_POLICY=passive (scripts/bench does) when other processes share the cores, else its
// spinning barriers make the 2-thread cases 10-40x slower than 1 thread.
//
// Every graph variant is first run in a forked child on a 512x4096 slice (1 and 2 threads; for
// the GEMV cases with 1 token, for the GEMM case with 128 tokens, which take other kernels) and
// compared with the type traits' vec_dot; a variant whose child crashes (llama.cpp's loader was
// seen crashing on repacked Q8_0; here the AMX buffer's 128-token path crashes on Q4_0 and Q8_0),
// whose buffer type does not take the op (supports_op false) or whose result differs by more than
// 1 % of max |y| is not registered, with the reason printed on stderr.
#include "gemm_bench_util.hpp"

#include <benchmark/benchmark.h>
#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr int dim = 4096; // rows = cols of every case
constexpr int gemm_tokens = 128;

/// Random N(0, 1) FP32 weights, rows x cols row-major (memoized: the benchmark functions run once
/// per repetition and per iteration-count probe).
const std::vector<float>& random_weights(int rows, int cols) {
    static std::map<std::pair<int, int>, std::vector<float>> memo;
    auto& w = memo[{rows, cols}];
    if (w.empty()) {
        const lowbit::matrix_f m = lowbit_bench::random_activations(rows, cols, 11);
        w.assign(m.data(), m.data() + m.size());
    }
    return w;
}

/// random_weights quantized to `type` with ggml_quantize_chunk (memoized).
const std::vector<std::uint8_t>& quantized(ggml_type type, int rows, int cols) {
    static std::map<std::tuple<int, int, int>, std::vector<std::uint8_t>> memo;
    auto& q = memo[{int(type), rows, cols}];
    if (q.empty()) {
        const auto& f = random_weights(rows, cols);
        q.resize(ggml_row_size(type, cols) * std::size_t(rows));
        const std::size_t n = ggml_quantize_chunk(type, f.data(), q.data(), 0, rows, cols, nullptr);
        if (n != q.size()) throw std::runtime_error("ggml_quantize_chunk wrote an unexpected size");
    }
    return q;
}

ggml_backend_dev_t cpu_device() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) throw std::runtime_error("ggml has no CPU device");
    return dev;
}

/// The CPU backend's extra buffer types (repacked weights, AMX), as llama.cpp's loader finds them.
std::vector<ggml_backend_buffer_type_t> extra_buffer_types() {
    ggml_backend_dev_t dev = cpu_device();
    auto get = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
    std::vector<ggml_backend_buffer_type_t> v;
    if (get)
        for (ggml_backend_buffer_type_t* p = get(dev); p && *p; ++p) v.push_back(*p);
    return v;
}

/// "_repack" for CPU_REPACK, "_amx" for AMX, "_graph" for the plain CPU buffer.
std::string variant_suffix(ggml_backend_buffer_type_t buft) {
    if (buft == ggml_backend_cpu_buffer_type()) return "_graph";
    std::string n = ggml_backend_buft_name(buft);
    if (n.rfind("CPU_", 0) == 0) n = n.substr(4);
    for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
    return "_" + n;
}

std::string type_label(ggml_type type) {
    std::string n = ggml_type_name(type);
    for (char& c : n) c = char(std::tolower(static_cast<unsigned char>(c)));
    return n;
}

/// Y (tokens x rows) = X (tokens x cols) · Wᵀ with the plain type traits: X quantized row by row
/// with the vec_dot_type's from_float into xq, then one vec_dot per (row, token).
void vec_dot_product(ggml_type type, const std::uint8_t* w, int rows, int cols, const float* x, int tokens,
                     std::vector<std::uint8_t>& xq, float* y) {
    const ggml_type_traits_cpu* tt = ggml_get_type_traits_cpu(type);
    const ggml_type_traits_cpu* vt = ggml_get_type_traits_cpu(tt->vec_dot_type);
    const std::size_t xrow = ggml_row_size(tt->vec_dot_type, cols), wrow = ggml_row_size(type, cols);
    xq.resize(xrow * std::size_t(tokens));
    for (int t = 0; t < tokens; ++t) vt->from_float(x + std::size_t(t) * cols, xq.data() + xrow * t, cols);
    for (int r = 0; r < rows; ++r)
        for (int t = 0; t < tokens; ++t)
            tt->vec_dot(cols, y + std::size_t(t) * rows + r, 0, w + wrow * r, 0, xq.data() + xrow * t, 0, 1);
}

/// `copies` weight tensors (each holding `wq`) in buffer type `buft`, one FP32 input X
/// (tokens x cols) and one ggml_mul_mat graph per copy on a CPU backend with `threads` threads.
/// supported() is false when the CPU device does not take the op with the weight in `buft`
/// (then no weight is uploaded: an extra buffer type's set_tensor needs a supported tensor).
class mul_mat_graphs {
public:
    mul_mat_graphs(ggml_type type, ggml_backend_buffer_type_t buft, const std::vector<std::uint8_t>& wq, std::size_t copies,
                   int rows, int cols, int tokens, int threads, const float* x)
        : rows_(rows), tokens_(tokens) {
        backend_ = ggml_backend_cpu_init();
        ggml_backend_cpu_set_n_threads(backend_, threads);
        ctx_w_ = ggml_init({ggml_tensor_overhead() * copies + 1024, nullptr, true});
        ctx_g_ = ggml_init({ggml_tensor_overhead() * (copies + 1) + ggml_graph_overhead_custom(4, false) * copies + 1024,
                            nullptr, true});
        std::vector<ggml_tensor*> w;
        for (std::size_t i = 0; i < copies; ++i) w.push_back(ggml_new_tensor_2d(ctx_w_, type, cols, rows));
        x_ = ggml_new_tensor_2d(ctx_g_, GGML_TYPE_F32, cols, tokens);
        for (std::size_t i = 0; i < copies; ++i) {
            out_.push_back(ggml_mul_mat(ctx_g_, w[i], x_));
            graphs_.push_back(ggml_new_graph_custom(ctx_g_, 4, false));
            ggml_build_forward_expand(graphs_.back(), out_.back());
        }
        buf_w_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_w_, buft);
        if (!buf_w_) throw std::runtime_error("cannot allocate the weights in " + std::string(ggml_backend_buft_name(buft)));
        ggml_backend_buffer_set_usage(buf_w_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        supported_ = ggml_backend_dev_supports_op(cpu_device(), out_[0]);
        if (!supported_) return;
        if (wq.size() != ggml_nbytes(w[0])) throw std::runtime_error("weight bytes do not match the tensor");
        for (ggml_tensor* t : w) ggml_backend_tensor_set(t, wq.data(), 0, wq.size()); // repacks in extra buffers
        buf_g_ = ggml_backend_alloc_ctx_tensors(ctx_g_, backend_);
        ggml_backend_tensor_set(x_, x, 0, ggml_nbytes(x_));
    }
    mul_mat_graphs(const mul_mat_graphs&) = delete;
    mul_mat_graphs& operator=(const mul_mat_graphs&) = delete;
    ~mul_mat_graphs() {
        if (buf_g_) ggml_backend_buffer_free(buf_g_);
        if (buf_w_) ggml_backend_buffer_free(buf_w_);
        ggml_free(ctx_g_);
        ggml_free(ctx_w_);
        ggml_backend_free(backend_);
    }
    bool supported() const { return supported_; }
    std::size_t size() const { return graphs_.size(); }
    /// Runs graph k; false if ggml reports a failure.
    bool compute(std::size_t k) { return ggml_backend_graph_compute(backend_, graphs_[k]) == GGML_STATUS_SUCCESS; }
    /// Output of graph k, tokens x rows row-major.
    std::vector<float> output(std::size_t k) const {
        std::vector<float> y(std::size_t(rows_) * tokens_);
        ggml_backend_tensor_get(out_[k], y.data(), 0, y.size() * sizeof(float));
        return y;
    }

private:
    int rows_, tokens_;
    ggml_backend_t backend_ = nullptr;
    ggml_context *ctx_w_ = nullptr, *ctx_g_ = nullptr;
    ggml_backend_buffer_t buf_w_ = nullptr, buf_g_ = nullptr;
    ggml_tensor* x_ = nullptr;
    std::vector<ggml_tensor*> out_;
    std::vector<ggml_cgraph*> graphs_;
    bool supported_ = false;
};

constexpr int probe_unsupported = 4, probe_mismatch = 5, probe_failed = 6;

/// Child side of probe(): 512x4096 slice, `tokens` tokens, 1 and 2 threads, against vec_dot.
int probe_child(ggml_type type, ggml_backend_buffer_type_t buft, int tokens) {
    const int rows = 512, cols = dim;
    const auto& wq = quantized(type, rows, cols);
    for (int threads : {1, 2}) {
        const lowbit::matrix_f x = lowbit_bench::random_activations(tokens, cols, 5);
        mul_mat_graphs g(type, buft, wq, 1, rows, cols, tokens, threads, x.data());
        if (!g.supported()) return probe_unsupported;
        if (!g.compute(0)) return probe_failed;
        const std::vector<float> y = g.output(0);
        std::vector<float> ref(y.size());
        std::vector<std::uint8_t> xq;
        vec_dot_product(type, wq.data(), rows, cols, x.data(), tokens, xq, ref.data());
        double err = 0, scale = 0;
        for (std::size_t i = 0; i < y.size(); ++i) {
            err = std::max(err, double(std::abs(y[i] - ref[i])));
            scale = std::max(scale, double(std::abs(ref[i])));
        }
        std::fprintf(stderr, "bench_ggml: probe %s%s tokens=%d threads=%d: max |graph - vec_dot| = %.3g (max |y| %.3g)\n",
                     type_label(type).c_str(), variant_suffix(buft).c_str(), tokens, threads, err, scale);
        if (!(err <= 1e-2 * scale)) return probe_mismatch;
    }
    return 0;
}

/// Runs probe_child in a forked process (called at registration, before any thread exists);
/// returns "" if the variant works with `tokens` tokens, else the reason it is skipped.
std::string probe(ggml_type type, ggml_backend_buffer_type_t buft, int tokens) {
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
        int code = probe_failed;
        try {
            code = probe_child(type, buft, tokens);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "bench_ggml: probe: %s\n", e.what());
        }
        std::fflush(nullptr);
        _exit(code);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) return "waitpid failed";
    if (WIFSIGNALED(status))
        return "crashed (signal " + std::to_string(WTERMSIG(status)) + ", " + strsignal(WTERMSIG(status)) + ")";
    switch (WEXITSTATUS(status)) {
    case 0: return "";
    case probe_unsupported: return "the buffer type does not take this mul_mat (supports_op false)";
    case probe_mismatch: return "its result differs from the type traits' vec_dot by more than 1% of max |y|";
    default: return "failed (exit status " + std::to_string(WEXITSTATUS(status)) + ")";
    }
}

std::size_t copy_count(std::size_t bytes, bool dram) {
    return dram ? std::max<std::size_t>(2, lowbit_bench::dram_bytes() / bytes + 1) : 1;
}

void set_counters(benchmark::State& st, std::size_t bytes, int rows, int cols) {
    st.counters["packed_bytes"] = double(bytes);
    st.counters["bits_per_weight"] = 8.0 * double(bytes) / (double(rows) * cols);
}

/// ggml_<type>: the type traits' from_float + vec_dot, 1 thread.
void vec_dot_case(benchmark::State& st, ggml_type type, int tokens, bool dram) {
    const auto& w0 = quantized(type, dim, dim);
    const std::vector<std::vector<std::uint8_t>> w(copy_count(w0.size(), dram), w0);
    const lowbit::matrix_f x = lowbit_bench::random_activations(tokens, dim, 1);
    std::vector<float> y(std::size_t(tokens) * dim);
    std::vector<std::uint8_t> xq;
    std::size_t k = 0;
    for (auto _ : st) {
        vec_dot_product(type, w[k].data(), dim, dim, x.data(), tokens, xq, y.data());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % w.size();
    }
    set_counters(st, w0.size(), dim, dim);
}

/// ggml_<type>_<buffer>: ggml_mul_mat graphs on the CPU backend, only the compute timed.
void graph_case(benchmark::State& st, ggml_type type, ggml_backend_buffer_type_t buft, int tokens, bool dram, int threads) {
    const auto& w0 = quantized(type, dim, dim);
    const lowbit::matrix_f x = lowbit_bench::random_activations(tokens, dim, 1);
    mul_mat_graphs g(type, buft, w0, copy_count(w0.size(), dram), dim, dim, tokens, threads, x.data());
    if (!g.supported()) {
        st.SkipWithError("buffer type does not support this mul_mat");
        return;
    }
    std::size_t k = 0;
    for (auto _ : st) {
        if (!g.compute(k)) {
            st.SkipWithError("ggml_backend_graph_compute failed");
            break;
        }
        benchmark::ClobberMemory();
        k = (k + 1) % g.size();
    }
    set_counters(st, w0.size(), dim, dim);
}

const int registered = [] {
    ggml_cpu_init();
    const std::string shape = std::to_string(dim) + "x" + std::to_string(dim);
    for (bool dram : {false, true})
        benchmark::RegisterBenchmark(("gemv/eigen_fp32/" + shape + (dram ? "/dram" : "/cache") + "/threads:1").c_str(),
                                     [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv(s, dim, dim, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("gemm128/eigen_fp32/" + shape + "/cache/threads:1").c_str(),
                                 [](benchmark::State& s) { lowbit_bench::eigen_fp32_gemm(s, gemm_tokens, dim, dim); })
        ->Unit(benchmark::kMillisecond)->UseRealTime();

    std::vector<ggml_backend_buffer_type_t> bufts{ggml_backend_cpu_buffer_type()};
    for (auto b : extra_buffer_types()) bufts.push_back(b);
    const ggml_type types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, GGML_TYPE_TQ2_0, GGML_TYPE_TQ1_0, GGML_TYPE_MXFP4, GGML_TYPE_Q2_K};
    for (ggml_type type : types) {
        const ggml_type_traits_cpu* tt = ggml_get_type_traits_cpu(type);
        if (!tt || !tt->vec_dot || !ggml_get_type_traits_cpu(tt->vec_dot_type)->from_float) {
            std::fprintf(stderr, "bench_ggml: skipping %s: no CPU vec_dot in this ggml\n", type_label(type).c_str());
            continue;
        }
        const std::string k = "ggml_" + type_label(type);
        for (bool dram : {false, true})
            benchmark::RegisterBenchmark(("gemv/" + k + "/" + shape + (dram ? "/dram" : "/cache") + "/threads:1").c_str(),
                                         [=](benchmark::State& s) { vec_dot_case(s, type, 1, dram); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemm128/" + k + "/" + shape + "/cache/threads:1").c_str(),
                                     [=](benchmark::State& s) { vec_dot_case(s, type, gemm_tokens, false); })
            ->Unit(benchmark::kMillisecond)->UseRealTime();
        for (ggml_backend_buffer_type_t buft : bufts) {
            const std::string kv = k + variant_suffix(buft);
            // GEMV (1 token) and GEMM (128 tokens) take different kernels: probed separately
            const std::string why_gemv = probe(type, buft, 1);
            const std::string why_gemm = why_gemv.rfind("the buffer type", 0) == 0 ? why_gemv : probe(type, buft, gemm_tokens);
            if (!why_gemv.empty())
                std::fprintf(stderr, "bench_ggml: skipping gemv/%s (weights in %s): %s\n", kv.c_str(), ggml_backend_buft_name(buft),
                             why_gemv.c_str());
            if (!why_gemm.empty())
                std::fprintf(stderr, "bench_ggml: skipping gemm128/%s (weights in %s): %s\n", kv.c_str(),
                             ggml_backend_buft_name(buft), why_gemm.c_str());
            if (why_gemv.empty())
                for (bool dram : {false, true})
                    for (int t : {1, 2})
                        benchmark::RegisterBenchmark(
                            ("gemv/" + kv + "/" + shape + (dram ? "/dram" : "/cache") + "/threads:" + std::to_string(t)).c_str(),
                            [=](benchmark::State& s) { graph_case(s, type, buft, 1, dram, t); })
                            ->Unit(benchmark::kMicrosecond)->UseRealTime();
            if (why_gemm.empty())
                benchmark::RegisterBenchmark(("gemm128/" + kv + "/" + shape + "/cache/threads:1").c_str(),
                                             [=](benchmark::State& s) { graph_case(s, type, buft, gemm_tokens, false, 1); })
                    ->Unit(benchmark::kMillisecond)->UseRealTime();
        }
    }
    return 0;
}();

} // namespace
