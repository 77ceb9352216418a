// MoE expert GEMV/GEMM y = x·Ŵᵀ (model/moe_experts.hpp) against the dense FP32 Eigen product of the
// same Ŵ_e in the same process, at the expert shapes of qwen3moe-18M-en (w1/w3 [256 x 512], w2
// [512 x 256]), 1 and 16 tokens, weights in cache:
//   eigen_fp32/<m>x<n>/T       dense Ŵ_e (what the former dense-fallback records ran)
//   cejd_binary1/<m>x<n>/T     cejd_expert_linear at k = m (MoBiE's default rank): binary1 kernel + fp16 G
//   kbvq_vq/<m>x<n>/T          kbvq_expert_linear at ~2 bits (d = 4, K = 256, r = 4, BCOS), automatic path
//   kbvq_vq_decode/<m>x<n>/T   the same with the row-decoding residual path forced
//   binary1_fp32/<k>x<n>/T     the binary factor alone (gemm(packed_matrix<binary1>, x, act_fp32), k = m):
//                              the share of cejd_binary1's time spent in the existing packed kernel
// The pieces are random (the timing does not depend on their values).
#include <lowbit/model/moe_experts.hpp>

#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

namespace {

lowbit::matrix_f random_matrix(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(Eigen::half(nd(rng)));
    return m;
}

template <class Op>
void run(benchmark::State& st, const Op& op, Eigen::Index tokens, Eigen::Index n) {
    const lowbit::matrix_f x = random_matrix(tokens, n, 99);
    lowbit::matrix_f y;
    for (auto _ : st) {
        op.apply(x, y);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
}

void eigen_fp32(benchmark::State& st, Eigen::Index m, Eigen::Index n, Eigen::Index tokens) {
    const lowbit::dense_linear op(random_matrix(m, n, 1));
    run(st, op, tokens, n);
}

void cejd(benchmark::State& st, Eigen::Index m, Eigen::Index n, Eigen::Index tokens) {
    const Eigen::Index k = m;
    std::mt19937_64 rng(2);
    lowbit::matrix_i8 codes(k, n);
    for (Eigen::Index i = 0; i < codes.size(); ++i) codes.data()[i] = (rng() & 1) ? 1 : -1;
    const lowbit::vector_f alpha = lowbit::vector_f::Constant(k, 0.01f), mu = lowbit::vector_f::Constant(k, 0.001f);
    const lowbit::cejd_expert_linear op(lowbit::pack<lowbit::binary1>(codes, alpha, mu),
                                        std::make_shared<const lowbit::matrix_f>(random_matrix(m, k, 3)), 8);
    run(st, op, tokens, n);
}

void binary_factor(benchmark::State& st, Eigen::Index m, Eigen::Index n, Eigen::Index tokens) {
    std::mt19937_64 rng(2);
    lowbit::matrix_i8 codes(m, n);
    for (Eigen::Index i = 0; i < codes.size(); ++i) codes.data()[i] = (rng() & 1) ? 1 : -1;
    const auto w = lowbit::pack<lowbit::binary1>(codes, lowbit::vector_f::Constant(m, 0.01f), lowbit::vector_f::Constant(m, 0.001f));
    const lowbit::matrix_f x = random_matrix(tokens, n, 99);
    for (auto _ : st) {
        lowbit::matrix_f y = lowbit::gemm(w, x, lowbit::act_fp32{});
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
}

void kbvq(benchmark::State& st, Eigen::Index m, Eigen::Index n, Eigen::Index tokens, lowbit::vq_residual_path path) {
    const Eigen::Index r = 4, d = 4;
    const int bits = 8;
    lowbit::kbvq_expert_pieces p;
    p.rows = m;
    p.cols = n;
    p.basis = std::make_shared<const lowbit::matrix_f>(random_matrix(r, n, 4));
    p.coeff = random_matrix(m, r, 5);
    p.codebook = std::make_shared<const lowbit::matrix_f>(random_matrix(Eigen::Index{1} << bits, d, 6));
    std::mt19937_64 rng(7);
    std::vector<std::uint32_t> idx(static_cast<std::size_t>(m * n / d));
    for (auto& v : idx) v = static_cast<std::uint32_t>(rng() & 255u);
    p.codes = lowbit::pack_vq_indices(idx, bits);
    p.scale = lowbit::vector_f::Constant(m, 0.01f);
    p.beta = random_matrix(m, 1, 8).col(0);
    p.direction = random_matrix(n, 1, 9).col(0);
    p.shared_by = 8;
    const lowbit::kbvq_expert_linear op(std::move(p), path);
    run(st, op, tokens, n);
}

void register_all() {
    for (auto [m, n] : {std::pair<Eigen::Index, Eigen::Index>{256, 512}, {512, 256}})
        for (Eigen::Index t : {1, 16}) {
            const std::string shape = std::to_string(m) + "x" + std::to_string(n) + "/" + std::to_string(t);
            benchmark::RegisterBenchmark(("eigen_fp32/" + shape).c_str(), eigen_fp32, m, n, t);
            benchmark::RegisterBenchmark(("cejd_binary1/" + shape).c_str(), cejd, m, n, t);
            benchmark::RegisterBenchmark(("binary1_fp32/" + shape).c_str(), binary_factor, m, n, t);
            benchmark::RegisterBenchmark(("kbvq_vq/" + shape).c_str(), kbvq, m, n, t, lowbit::vq_residual_path::automatic);
            benchmark::RegisterBenchmark(("kbvq_vq_decode/" + shape).c_str(), kbvq, m, n, t, lowbit::vq_residual_path::decode);
        }
}

const bool registered = (register_all(), true);

} // namespace
