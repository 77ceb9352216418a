// GEMV y = W·x benchmarks: Eigen FP32 (the baseline, same process) against lowbit's packed kernels
// (dynamic int8 activation quantization included in the timed region), weights in cache ("cache":
// one matrix reused) or in DRAM ("dram": cycling through >= 256 MiB of copies), 1 or 2 threads
// (row halves through the row-range API). Kernels "<format>_r4_*" run on the 4-row interleaved
// layout (interleaved_matrix). Counter packed_bytes = weight bytes read per call.
// scripts/bench turns the medians into "ratio_vs_eigen_fp32" and "gbps" summary lines.
#include "gemm_bench_util.hpp"

#include <lowbit/gemm.hpp>
#include <lowbit/thread_pool.hpp>

#include <benchmark/benchmark.h>

#include <string>

namespace {

using lowbit_bench::copies;
using lowbit_bench::random_activations;

template <class F, bool Interleaved = false>
void packed_gemv(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram, int threads) {
    const auto p0 = lowbit_bench::random_packed<F>(rows, cols, 7);
    const auto w0 = [&] {
        if constexpr (Interleaved) return lowbit::interleave(p0);
        else return p0;
    }();
    const auto w = copies(w0, dram);
    const lowbit::matrix_f x = random_activations(1, cols, 1);
    lowbit::matrix_f y(1, rows);
    lowbit_bench::thread_pair pool(threads);
    std::size_t k = 0;
    if (threads == 1) { // the decode-loop call: one gemm_into with a reused workspace (no allocation)
        lowbit::gemm_workspace ws;
        for (auto _ : st) {
            lowbit::gemm_into(w[k], x, lowbit::act_int{8}, y, ws);
            benchmark::DoNotOptimize(y.data());
            benchmark::ClobberMemory();
            k = (k + 1) % w.size();
        }
    } else
    for (auto _ : st) {
        const double c0 = lowbit_bench::thread_pair::thread_cpu_us();
        const auto a = lowbit::quantize_activations(x, 8);
        const double serial = lowbit_bench::thread_pair::thread_cpu_us() - c0;
        const auto& wk = w[k];
        pool.run(
            [&](int p, int np) {
                const auto [r0, r1] = lowbit_bench::part_rows(rows, p, np);
                lowbit::gemm_rows(wk, a, r0, r1, y, lowbit::kernel_isa::automatic);
            },
            serial);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % w.size();
    }
    st.counters["packed_bytes"] = double(w0.bytes().size());
    if (threads == 2) {
        st.counters["worker_share"] = pool.worker_share(); // 1.0: the worker ran every part 1
        st.counters["part_cpu_us"] = pool.part_cpu_us();   // max thread CPU of the two halves, per call
    }
    st.counters["bits_per_weight"] = w0.bits_per_weight();
}

/// The library's own two-thread entry point: gemm_parallel over a lowbit::thread_pool (activation
/// quantization on the caller, rows split in two; wall time only).
template <class F>
void pool_gemv(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram, int threads) {
    const auto w0 = lowbit::interleave(lowbit_bench::random_packed<F>(rows, cols, 7));
    const auto w = copies(w0, dram);
    const lowbit::matrix_f x = random_activations(1, cols, 1);
    lowbit::thread_pool pool(threads);
    std::size_t k = 0;
    for (auto _ : st) {
        lowbit::matrix_f y = lowbit::gemm_parallel(w[k], x, lowbit::act_int{8}, pool);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % w.size();
    }
    st.counters["packed_bytes"] = double(w0.bytes().size());
}

/// Weight-only GEMV: fp32 activations (gemm_into(w, x, act_fp32, y, workspace), 1 token; no
/// activation quantization).
template <class F>
void packed_gemv_f32(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram) {
    lowbit_bench::packed_gemm_f32<F>(st, rows, cols, 1, dram);
}

/// The decode step of a quantized_linear layer: gemv_into (one token; activations, codes and dot
/// products on the stack, no workspace, ISA resolved once per call), `Act` act_int{8} (quantization
/// timed) or act_fp32 (weight-only).
template <class F, class Act>
void packed_gemv_into(benchmark::State& st, Eigen::Index rows, Eigen::Index cols) {
    const auto w = lowbit_bench::random_packed<F>(rows, cols, 7);
    const lowbit::vector_f x = random_activations(1, cols, 1).row(0).transpose();
    lowbit::vector_f y(rows);
    const Act act = [] {
        if constexpr (std::is_same_v<Act, lowbit::act_int>) return lowbit::act_int{8};
        else return lowbit::act_fp32{};
    }();
    for (auto _ : st) {
        lowbit::gemv_into(w, x, act, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    st.counters["packed_bytes"] = double(w.bytes().size());
    st.counters["bits_per_weight"] = w.bits_per_weight();
}

/// Grouped int4 (fp16 scale and offset per `gc` columns, gemm.hpp grouped kernels), 1 token: `Act`
/// act_int{8} (quantized inside, timed; gemm_into with a reused workspace) or act_fp32 (weight-only;
/// gemv_into, what a layer's decode step runs); `isa` scalar = the portable loop that AVX2, NEON and
/// xsimd requests run (the baseline of the AVX-512 kernel).
template <class Act>
void grouped_gemv(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, Eigen::Index gc,
                  lowbit::kernel_isa isa = lowbit::kernel_isa::automatic) {
    const auto p = lowbit_bench::random_packed<lowbit::int4>(rows, cols, 7);
    lowbit::packed_matrix<lowbit::int4> codes(rows, cols, p.bytes(), lowbit::vector_f::Ones(rows));
    const Eigen::Index ng = (cols + gc - 1) / gc;
    const lowbit::grouped_int4_matrix w(std::move(codes), gc, lowbit::matrix_f::Constant(rows, ng, 0.0078125f),
                                        lowbit::matrix_f::Constant(rows, ng, -0.25f));
    const lowbit::matrix_f x = random_activations(1, cols, 1);
    lowbit::matrix_f y(1, rows);
    lowbit::vector_f yv(rows);
    lowbit::gemm_workspace ws;
    for (auto _ : st) {
        if constexpr (std::is_same_v<Act, lowbit::act_int>) lowbit::gemm_into(w, x, lowbit::act_int{8}, y, ws, isa);
        else lowbit::gemv_into(w, x.row(0).transpose(), lowbit::act_fp32{}, yv, isa); // the decode step of a layer
        benchmark::DoNotOptimize(y.data());
        benchmark::DoNotOptimize(yv.data());
        benchmark::ClobberMemory();
    }
    st.counters["packed_bytes"] = double(w.codes().bytes().size());
    st.counters["bits_per_weight"] = w.bits_per_weight();
}

template <bool Interleaved = false>
void xnor(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram) {
    const auto p0 = lowbit_bench::random_packed<lowbit::binary1>(rows, cols, 7);
    const auto w = copies([&] {
        if constexpr (Interleaved) return lowbit::interleave(p0);
        else return p0;
    }(), dram);
    const lowbit::vector_f x = random_activations(1, cols, 1).row(0).transpose();
    std::vector<std::int32_t> d(rows);
    std::size_t k = 0;
    for (auto _ : st) {
        const auto a = lowbit::binarize_activations(x);
        lowbit::xnor_dot_rows(w[k], a, 0, rows, d.data());
        benchmark::DoNotOptimize(d.data());
        benchmark::ClobberMemory();
        k = (k + 1) % w.size();
    }
    st.counters["packed_bytes"] = double(w[0].bytes().size());
}

template <class L>
void mxfp4_gemv(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, bool dram, int threads) {
    std::mt19937_64 rng(3);
    std::uniform_int_distribution<int> dc(0, 15), de(115, 125);
    lowbit::detail::u8_matrix c(rows, cols), e(rows, (cols + 31) / 32);
    for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = static_cast<std::uint8_t>(dc(rng));
    for (Eigen::Index i = 0; i < e.size(); ++i) e.data()[i] = static_cast<std::uint8_t>(de(rng));
    const auto w0 = lowbit::pack_mxfp4<L>(c, e);
    const std::size_t n = dram ? lowbit_bench::dram_bytes() / w0.bytes().size() + 1 : 1;
    std::vector<lowbit::packed_mxfp4<L>> w(n, w0);
    const lowbit::matrix_f x = random_activations(1, cols, 1);
    lowbit::matrix_f y(1, rows);
    lowbit_bench::thread_pair pool(threads);
    std::size_t k = 0;
    for (auto _ : st) {
        const double c0 = lowbit_bench::thread_pair::thread_cpu_us();
        const auto a = lowbit::quantize_activations(x, 8);
        const double serial = lowbit_bench::thread_pair::thread_cpu_us() - c0;
        const auto& wk = w[k];
        pool.run(
            [&](int p, int np) {
                const auto [r0, r1] = lowbit_bench::part_rows(rows, p, np);
                lowbit::gemm_rows(wk, a, r0, r1, y);
            },
            serial);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % n;
    }
    st.counters["packed_bytes"] = double(w0.bytes().size());
    st.counters["bits_per_weight"] = w0.bits_per_weight();
    if (threads == 2) {
        st.counters["worker_share"] = pool.worker_share();
        st.counters["part_cpu_us"] = pool.part_cpu_us();
    }
}

std::string shape(Eigen::Index r, Eigen::Index c) { return std::to_string(r) + "x" + std::to_string(c); }

const int registered = [] {
    const std::pair<Eigen::Index, Eigen::Index> shapes[] = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
    for (auto [r, c] : shapes)
        for (bool dram : {false, true}) {
            const std::string where = dram ? "/dram" : "/cache";
            benchmark::RegisterBenchmark(("gemv/eigen_fp32/" + shape(r, c) + where + "/threads:1").c_str(),
                                         [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv(s, r, c, dram); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            if (r == 4096 && c == 4096) // the same GEMV on two row halves: the two-thread read roof
                benchmark::RegisterBenchmark(("gemv/eigen_fp32/" + shape(r, c) + where + "/threads:2").c_str(),
                                             [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv_threads(s, r, c, dram, 2); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
            for (int t : {1, 2})
                benchmark::RegisterBenchmark(("gemv/ternary2_i8/" + shape(r, c) + where + "/threads:" + std::to_string(t)).c_str(),
                                             [=](benchmark::State& s) { packed_gemv<lowbit::ternary2>(s, r, c, dram, t); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
            for (int t : {1, 2}) // lowbit::thread_pool + gemm_parallel (the library's threading entry point)
                benchmark::RegisterBenchmark(("gemv/ternary2_r4_pool_i8/" + shape(r, c) + where + "/threads:" + std::to_string(t)).c_str(),
                                             [=](benchmark::State& s) { pool_gemv<lowbit::ternary2>(s, r, c, dram, t); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
            for (int t : {1, 2}) // 4-row interleaved tiles (interleaved_matrix)
                benchmark::RegisterBenchmark(("gemv/ternary2_r4_i8/" + shape(r, c) + where + "/threads:" + std::to_string(t)).c_str(),
                                             [=](benchmark::State& s) { packed_gemv<lowbit::ternary2, true>(s, r, c, dram, t); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
        }
    for (bool dram : {false, true}) {
        const std::string where = dram ? "/dram" : "/cache";
        for (int t : {1, 2}) {
            benchmark::RegisterBenchmark(("gemv/ternary_base3_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::ternary_base3>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/binary1_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::binary1>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/binary1_r4_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::binary1, true>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/ternary_base3_r4_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::ternary_base3, true>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        }
        for (int t : {1, 2}) {
            benchmark::RegisterBenchmark(("gemv/int4_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::int4>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/int4_r4_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { packed_gemv<lowbit::int4, true>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/mxfp4_ggml_i8/4096x4096" + where + "/threads:" + std::to_string(t)).c_str(),
                                         [=](benchmark::State& s) { mxfp4_gemv<lowbit::mxfp4_ggml>(s, 4096, 4096, dram, t); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        }
        benchmark::RegisterBenchmark(("gemv/int2_i8/4096x4096" + where + "/threads:1").c_str(),
                                     [=](benchmark::State& s) { packed_gemv<lowbit::int2>(s, 4096, 4096, dram, 1); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/xnor_binary1_b1/4096x4096" + where + "/threads:1").c_str(),
                                     [=](benchmark::State& s) { xnor(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/xnor_binary1_r4_b1/4096x4096" + where + "/threads:1").c_str(),
                                     [=](benchmark::State& s) { xnor<true>(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    // fp32 activations (weight-only) and int8 activations at the shapes engines call besides 4096²:
    // MoE experts of qwen3moe-18M-en (256x512, 512x256) and a wider MoE FFN (1536x512), the
    // stories260K layers (64x64, 172x64, 64x172), in cache; 4096² from cache and DRAM.
    const std::pair<Eigen::Index, Eigen::Index> small[] = {{256, 512}, {512, 256}, {1536, 512}, {64, 64}, {172, 64}, {64, 172}};
    for (auto [r, c] : small) {
        const std::string sh = shape(r, c) + "/cache/threads:1";
        benchmark::RegisterBenchmark(("gemv/eigen_fp32/" + sh).c_str(), [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv(s, r, c, false); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/ternary2_i8/" + sh).c_str(),
                                     [=](benchmark::State& s) { packed_gemv<lowbit::ternary2>(s, r, c, false, 1); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/int4_i8/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv<lowbit::int4>(s, r, c, false, 1); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    for (auto [r, c] : small) {
        const std::string sh = shape(r, c) + "/cache/threads:1";
        benchmark::RegisterBenchmark(("gemv/ternary2_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::ternary2>(s, r, c, false); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/binary1_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::binary1>(s, r, c, false); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/int4_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::int4>(s, r, c, false); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    // gemv_into (the decode step of quantized_linear) at the same small shapes: "<format>_i8_into",
    // "<format>_f32_into"; ratios against gemv/eigen_fp32 of the same shape
    for (auto [r, c] : small) {
        const std::string sh = shape(r, c) + "/cache/threads:1";
        const auto reg = [&](const std::string& name, auto fn) {
            benchmark::RegisterBenchmark(("gemv/" + name + "/" + sh).c_str(), [=](benchmark::State& s) { fn(s, r, c); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        };
        reg("ternary2_i8_into", packed_gemv_into<lowbit::ternary2, lowbit::act_int>);
        reg("ternary_base3_i8_into", packed_gemv_into<lowbit::ternary_base3, lowbit::act_int>);
        reg("binary1_i8_into", packed_gemv_into<lowbit::binary1, lowbit::act_int>);
        reg("int4_i8_into", packed_gemv_into<lowbit::int4, lowbit::act_int>);
        reg("ternary2_f32_into", packed_gemv_into<lowbit::ternary2, lowbit::act_fp32>);
        reg("ternary_base3_f32_into", packed_gemv_into<lowbit::ternary_base3, lowbit::act_fp32>);
        reg("binary1_f32_into", packed_gemv_into<lowbit::binary1, lowbit::act_fp32>);
        reg("int4_f32_into", packed_gemv_into<lowbit::int4, lowbit::act_fp32>);
    }
    // grouped int4 (per-128 / per-256-column scale and offset) next to per-row int4 and Eigen FP32
    // (llama-21M-en's layer shapes and 4096², in cache)
    const std::pair<Eigen::Index, Eigen::Index> grouped[] = {{512, 512}, {1536, 512}, {512, 1536}, {4096, 4096}};
    for (auto [r, c] : grouped) {
        const std::string sh = shape(r, c) + "/cache/threads:1";
        const bool registered_above = (r == 1536 && c == 512) || r == 4096;
        if (!registered_above)
            benchmark::RegisterBenchmark(("gemv/eigen_fp32/" + sh).c_str(), [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv(s, r, c, false); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        if (!registered_above)
            benchmark::RegisterBenchmark(("gemv/int4_i8/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv<lowbit::int4>(s, r, c, false, 1); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        for (Eigen::Index gc : {128, 256}) {
            const std::string g = std::to_string(gc);
            benchmark::RegisterBenchmark(("gemv/int4g" + g + "_i8/" + sh).c_str(),
                                         [=](benchmark::State& s) { grouped_gemv<lowbit::act_int>(s, r, c, gc); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
            benchmark::RegisterBenchmark(("gemv/int4g" + g + "_f32/" + sh).c_str(),
                                         [=](benchmark::State& s) { grouped_gemv<lowbit::act_fp32>(s, r, c, gc); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
        }
        benchmark::RegisterBenchmark(("gemv/int4g128_f32_portable/" + sh).c_str(),
                                     [=](benchmark::State& s) { grouped_gemv<lowbit::act_fp32>(s, r, c, 128, lowbit::kernel_isa::scalar); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        if (r == 4096 && lowbit::detail::host_cpu_features().avx2) // the AVX2 kernel (arch/avx2_fp32.hpp)
            benchmark::RegisterBenchmark(("gemv/int4g128_f32_avx2/" + sh).c_str(),
                                         [=](benchmark::State& s) { grouped_gemv<lowbit::act_fp32>(s, r, c, 128, lowbit::kernel_isa::avx2); })
                ->Unit(benchmark::kMicrosecond)->UseRealTime();
    }
    for (bool dram : {false, true}) {
        const std::string sh = std::string("4096x4096") + (dram ? "/dram" : "/cache") + "/threads:1";
        benchmark::RegisterBenchmark(("gemv/ternary2_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::ternary2>(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/ternary_base3_f32/" + sh).c_str(),
                                     [=](benchmark::State& s) { packed_gemv_f32<lowbit::ternary_base3>(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/binary1_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::binary1>(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        benchmark::RegisterBenchmark(("gemv/int4_f32/" + sh).c_str(), [=](benchmark::State& s) { packed_gemv_f32<lowbit::int4>(s, 4096, 4096, dram); })
            ->Unit(benchmark::kMicrosecond)->UseRealTime();
        // the AVX2 kernels (arch/avx2_fp32.hpp) and the xsimd path that AVX2 requests ran before them
        // ("_generic": xsimd in this build's architecture — SSE2 in a build without -march, AVX-512
        // with LOWBIT_BENCH_NATIVE on such a CPU), on any CPU with AVX2
        if (lowbit::detail::host_cpu_features().avx2)
            for (const auto& [suffix, isa] : {std::pair{std::string("_avx2"), lowbit::kernel_isa::avx2},
                                              std::pair{std::string("_generic"), lowbit::kernel_isa::generic}}) {
                benchmark::RegisterBenchmark(("gemv/ternary2_f32" + suffix + "/" + sh).c_str(),
                                             [=](benchmark::State& s) { lowbit_bench::packed_gemm_f32<lowbit::ternary2>(s, 4096, 4096, 1, dram, isa); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
                benchmark::RegisterBenchmark(("gemv/ternary_base3_f32" + suffix + "/" + sh).c_str(),
                                             [=](benchmark::State& s) { lowbit_bench::packed_gemm_f32<lowbit::ternary_base3>(s, 4096, 4096, 1, dram, isa); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
                benchmark::RegisterBenchmark(("gemv/int4_f32" + suffix + "/" + sh).c_str(),
                                             [=](benchmark::State& s) { lowbit_bench::packed_gemm_f32<lowbit::int4>(s, 4096, 4096, 1, dram, isa); })
                    ->Unit(benchmark::kMicrosecond)->UseRealTime();
            }
    }
    return 0;
}();

} // namespace
