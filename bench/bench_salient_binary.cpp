// BiLLM's packed layout (salient_binary.hpp) × fp32 activations, against baselines measured in the
// same run: Eigen FP32 (the dense copy BiLLM ran as before) and lowbit's per-row binary1 weight-only
// kernel (plain binarization, ≈ 1 b/w). Blocks of 128 columns with 8 salient columns each and BiLLM's
// split (both code planes everywhere); random codes and tables (the kernel's time does not depend on them).
//   gemv/<kind>/<rows>x<cols>/<cache|dram>   one token (decode); dram cycles through ≥ 256 MiB
//   gemm/<kind>/<rows>x<cols>/tokens:<T>      T tokens (prefill, perplexity), weights in cache
//   kind: eigen_fp32, binary1_f32, salient_binary (ISA automatic), salient_binary_avx2, salient_binary_scalar
// Run: bench_salient_binary --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <lowbit/salient_binary.hpp>

#include "gemm_bench_util.hpp"

#include <benchmark/benchmark.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using lowbit::kernel_isa;

lowbit::salient_binary_matrix random_salient(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<lowbit::salient_binary_block> blocks;
    for (Eigen::Index c = 0; c < cols; c += 128) blocks.push_back({std::min<Eigen::Index>(128, cols - c), 8});
    std::vector<std::int32_t> perm(static_cast<std::size_t>(cols)), source;
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::size_t next = 0;
    for (const auto& b : blocks)
        for (Eigen::Index t = 0; t < (b.width + 15) / 16 * 16; ++t) source.push_back(t < b.width ? perm[next++] : -1);
    std::vector<std::uint16_t> codes(static_cast<std::size_t>(rows) * source.size() / 16 * 2); // p1 and p2 (split)
    for (auto& c : codes) c = static_cast<std::uint16_t>(rng());
    lowbit::vector_f table(rows * static_cast<Eigen::Index>(blocks.size()) * 8);
    std::normal_distribution<float> g(0.0f, 0.02f);
    for (Eigen::Index e = 0; e < table.size(); ++e) table(e) = static_cast<float>(Eigen::half(g(rng)));
    return lowbit::salient_binary_matrix(rows, cols, std::move(blocks), std::move(source), true, std::move(codes), table);
}

void salient_gemm(benchmark::State& st, Eigen::Index rows, Eigen::Index cols, Eigen::Index tokens, bool dram, kernel_isa isa) {
    if (!lowbit::isa_available(isa)) {
        st.SkipWithError("ISA not available on this CPU");
        return;
    }
    const auto w0 = random_salient(rows, cols, 7);
    const std::size_t bytes = w0.bytes().size();
    const std::size_t n = dram ? std::max<std::size_t>(2, lowbit_bench::dram_bytes() / bytes + 1) : 1;
    std::vector<lowbit::salient_binary_matrix> w(n, w0);
    const lowbit::matrix_f x = lowbit_bench::random_activations(tokens, cols, 1);
    lowbit::matrix_f y(tokens, rows);
    lowbit::salient_binary_workspace ws;
    std::size_t k = 0;
    for (auto _ : st) {
        lowbit::gemm_into(w[k], x, lowbit::act_fp32{}, y, ws, isa);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
        k = (k + 1) % n;
    }
    st.counters["bits_per_weight"] = w0.bits_per_weight();
}

std::string shape(Eigen::Index r, Eigen::Index c) { return std::to_string(r) + "x" + std::to_string(c); }

const int registered = [] {
    auto reg = [](const std::string& name, auto f) {
        benchmark::RegisterBenchmark(name.c_str(), f)->Unit(benchmark::kMicrosecond)->UseRealTime();
    };
    const std::pair<Eigen::Index, Eigen::Index> shapes[] = {{512, 512}, {1536, 512}, {512, 1536}, {4096, 4096}};
    for (auto [r, c] : shapes)
        for (bool dram : {false, true}) {
            if (dram && r != 4096) continue;
            const std::string sh = shape(r, c) + (dram ? "/dram" : "/cache");
            reg("gemv/eigen_fp32/" + sh, [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemv(s, r, c, dram); });
            reg("gemv/binary1_f32/" + sh, [=](benchmark::State& s) { lowbit_bench::packed_gemm_f32<lowbit::binary1>(s, r, c, 1, dram); });
            reg("gemv/salient_binary/" + sh, [=](benchmark::State& s) { salient_gemm(s, r, c, 1, dram, kernel_isa::automatic); });
            reg("gemv/salient_binary_avx2/" + sh, [=](benchmark::State& s) { salient_gemm(s, r, c, 1, dram, kernel_isa::avx2); });
            if (r != 4096)
                reg("gemv/salient_binary_scalar/" + sh, [=](benchmark::State& s) { salient_gemm(s, r, c, 1, dram, kernel_isa::scalar); });
        }
    for (Eigen::Index t : {4, 64, 512}) {
        const std::string sh = shape(1536, 512) + "/tokens:" + std::to_string(t);
        reg("gemm/eigen_fp32/" + sh, [=](benchmark::State& s) { lowbit_bench::eigen_fp32_gemm(s, t, 1536, 512); });
        reg("gemm/binary1_f32/" + sh, [=](benchmark::State& s) { lowbit_bench::packed_gemm_f32<lowbit::binary1>(s, 1536, 512, t, false); });
        reg("gemm/salient_binary/" + sh, [=](benchmark::State& s) { salient_gemm(s, 1536, 512, t, false, kernel_isa::automatic); });
    }
    return 0;
}();

} // namespace
