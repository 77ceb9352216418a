// Tests for lowbit/gemm.hpp and the arch/ kernels. Every ISA path this CPU can run (scalar, generic,
// AVX2, AVX-512, AMX; NEON on aarch64, cross-built and run under qemu by scripts/test-aarch64) is checked bit-exact against an independent int64 brute force over the original
// codes; float epilogues against double references within the bounds stated in gemm.hpp; dynamic
// activation quantization against rtn.hpp's quantize_per_token (symmetric grid).
#include <lowbit/gemm.hpp>
#include <lowbit/rtn.hpp>

#include <doctest/doctest.h>

#include "random_codes.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using lowbit::kernel_isa;
constexpr kernel_isa all_isas[] = {kernel_isa::scalar, kernel_isa::generic, kernel_isa::avx2, kernel_isa::avx512,
                                   kernel_isa::amx, kernel_isa::neon};
constexpr double u32 = 1.0 / (1 << 24);

using lowbit_test::random_codes;

lowbit::matrix_f random_x(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f x(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j) x(i, j) = g(rng) * (j % 17 == 0 ? 8.0f : 1.0f);
    return x;
}

// out[k][i] = Σ_j c_ij q_kj in int64 straight from the original codes.
std::vector<std::int64_t> brute_dot(const lowbit::matrix_i8& c, const lowbit::quantized_activations& a) {
    std::vector<std::int64_t> out(static_cast<std::size_t>(a.tokens() * c.rows()));
    for (Eigen::Index k = 0; k < a.tokens(); ++k)
        for (Eigen::Index i = 0; i < c.rows(); ++i) {
            std::int64_t s = 0;
            for (Eigen::Index j = 0; j < c.cols(); ++j) s += std::int64_t(c(i, j)) * a.q(k, j);
            out[static_cast<std::size_t>(k * c.rows() + i)] = s;
        }
    return out;
}

template <class M>
void check_exact_layout(const M& w, const lowbit::quantized_activations& a, const std::vector<std::int64_t>& want,
                        Eigen::Index rows, Eigen::Index tokens);

template <class F>
void check_exact(Eigen::Index rows, Eigen::Index cols, Eigen::Index tokens, int bits, bool extreme) {
    const lowbit::matrix_i8 c = random_codes<F>(rows, cols, static_cast<std::uint64_t>(rows * 131 + cols), extreme);
    const auto w = lowbit::pack<F>(c, lowbit::vector_f::Ones(rows));
    lowbit::matrix_f x = random_x(tokens, cols, static_cast<std::uint64_t>(cols + tokens));
    if (extreme)
        for (Eigen::Index j = 0; j < cols; ++j) x(0, j) = (j % 3 == 0) ? -1.0f : 1.0f; // q = ±L everywhere
    const auto a = lowbit::quantize_activations(x, bits);
    const auto want = brute_dot(c, a);
    check_exact_layout(w, a, want, rows, tokens);
    check_exact_layout(lowbit::interleave(w), a, want, rows, tokens); // 4-row tiles
}

// Every ISA path on weights `w` (either layout) against the int64 brute force `want`, full range
// and the sub-range [1, rows − 1) (which cuts through the first and last 4-row tiles).
template <class M>
void check_exact_layout(const M& w, const lowbit::quantized_activations& a, const std::vector<std::int64_t>& want,
                        Eigen::Index rows, Eigen::Index tokens) {
    for (kernel_isa isa : all_isas) {
        if (!lowbit::isa_available(isa)) continue;
        CAPTURE(lowbit::isa_name(isa));
        CAPTURE(lowbit::pack_format<typename M::format>::name);
        CAPTURE(w.cols());
        CAPTURE(rows);
        std::vector<std::int32_t> got(static_cast<std::size_t>(tokens * rows), -12345);
        lowbit::dot_rows(w, a, 0, rows, got.data(), rows, isa);
        bool same = true;
        for (std::size_t t = 0; t < got.size(); ++t) same = same && std::int64_t(got[t]) == want[t];
        CHECK(same);
        // row sub-range: writes only its slice
        if (rows >= 3) {
            std::vector<std::int32_t> part(static_cast<std::size_t>(tokens * (rows - 2)));
            lowbit::dot_rows(w, a, 1, rows - 1, part.data(), rows - 2, isa);
            bool same_part = true;
            for (Eigen::Index k = 0; k < tokens; ++k)
                for (Eigen::Index i = 1; i < rows - 1; ++i)
                    same_part = same_part && std::int64_t(part[static_cast<std::size_t>(k * (rows - 2) + i - 1)]) ==
                                                 want[static_cast<std::size_t>(k * rows + i)];
            CHECK(same_part);
        }
    }
}

} // namespace

TEST_CASE("isa detection is consistent") {
    CHECK(lowbit::isa_available(kernel_isa::scalar));
    CHECK(lowbit::isa_available(kernel_isa::generic));
    CHECK(lowbit::isa_available(lowbit::best_isa()));
    if (lowbit::isa_available(kernel_isa::avx512)) CHECK(lowbit::isa_available(kernel_isa::avx2));
    if (lowbit::isa_available(kernel_isa::amx)) CHECK(lowbit::isa_available(kernel_isa::avx512));
    CHECK(std::string(lowbit::isa_name(kernel_isa::amx)) == "amx");
#if defined(__aarch64__)
    CHECK(lowbit::isa_available(kernel_isa::neon));
    CHECK(lowbit::best_isa() == kernel_isa::neon);
#else
    CHECK_FALSE(lowbit::isa_available(kernel_isa::neon));
#endif
    CHECK(std::string(lowbit::isa_name(kernel_isa::neon)) == "neon");
    MESSAGE("kernel paths on this CPU: avx2=" << lowbit::isa_available(kernel_isa::avx2)
                                              << " avx512=" << lowbit::isa_available(kernel_isa::avx512)
                                              << " amx=" << lowbit::isa_available(kernel_isa::amx)
                                              << " neon=" << lowbit::isa_available(kernel_isa::neon)
                                              << " neon_dotprod=" << lowbit::detail::host_cpu_features().neon_dotprod
                                              << " neon_i8mm=" << lowbit::detail::host_cpu_features().neon_i8mm);
}

namespace {
// AMX (explicit request, any token count) and `automatic` against scalar_kernels::dot_rows and the
// int64 brute force, on weights `w` of either layout; the full range and [1, rows) when rows > 1.
template <class M>
void check_amx_layout(const M& w, const lowbit::quantized_activations& a, const std::vector<std::int64_t>& want,
                      Eigen::Index rows, Eigen::Index tokens) {
    for (Eigen::Index r0 : {Eigen::Index(0), Eigen::Index(1)}) {
        if (r0 >= rows) continue;
        const Eigen::Index nr = rows - r0;
        std::vector<std::int32_t> ref(static_cast<std::size_t>(tokens * nr), -1), amx(ref.size(), -7), aut(ref.size(), -9);
        lowbit::dot_rows(w, a, r0, rows, ref.data(), nr, kernel_isa::scalar);
        lowbit::dot_rows(w, a, r0, rows, amx.data(), nr, kernel_isa::amx);
        lowbit::dot_rows(w, a, r0, rows, aut.data(), nr, kernel_isa::automatic);
        bool ref_ok = true;
        for (Eigen::Index k = 0; k < tokens; ++k)
            for (Eigen::Index i = r0; i < rows; ++i)
                ref_ok = ref_ok && std::int64_t(ref[static_cast<std::size_t>(k * nr + i - r0)]) == want[static_cast<std::size_t>(k * rows + i)];
        CHECK(ref_ok);
        CHECK(amx == ref);
        CHECK(aut == ref);
    }
}
} // namespace

TEST_CASE_TEMPLATE("AMX GEMM is bit-exact with the scalar reference: token, row and column tails", F, lowbit::ternary2,
                   lowbit::int2, lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    if (!lowbit::isa_available(kernel_isa::amx)) {
        MESSAGE("AMX not available on this CPU/OS: AMX GEMM test skipped");
        const auto w = lowbit::pack<F>(random_codes<F>(3, 64, 1), lowbit::vector_f::Ones(3));
        const auto a = lowbit::quantize_activations(random_x(2, 64, 2));
        std::vector<std::int32_t> out(6);
        CHECK_THROWS_AS(lowbit::dot_rows(w, a, 0, 3, out.data(), 3, kernel_isa::amx), lowbit::invalid_argument);
        return;
    }
    for (Eigen::Index cols : {64, 300, 1280 + 7})
        for (Eigen::Index rows : {1, 15, 16, 17, 64 + 3}) {
            const bool extreme = rows == 17; // codes at their extremes
            const lowbit::matrix_i8 c = random_codes<F>(rows, cols, static_cast<std::uint64_t>(rows * 7 + cols), extreme);
            const auto w = lowbit::pack<F>(c, lowbit::vector_f::Ones(rows));
            const auto wi = lowbit::interleave(w);
            for (Eigen::Index tokens : {1, 15, 16, 17, 33, 128}) {
                CAPTURE(lowbit::pack_format<F>::name);
                CAPTURE(cols);
                CAPTURE(rows);
                CAPTURE(tokens);
                lowbit::matrix_f x = random_x(tokens, cols, static_cast<std::uint64_t>(tokens * 3 + cols));
                if (extreme)
                    for (Eigen::Index j = 0; j < cols; ++j) x(tokens - 1, j) = (j % 3 == 0) ? -1.0f : 1.0f; // q = ±127
                const auto a = lowbit::quantize_activations(x, 8);
                const auto want = brute_dot(c, a);
                check_amx_layout(w, a, want, rows, tokens);
                check_amx_layout(wi, a, want, rows, tokens);
            }
        }
}

TEST_CASE("AMX: gemm, gemm_parallel, MXFP4 and XNOR accept an amx request") {
    const lowbit::matrix_i8 c = random_codes<lowbit::ternary2>(40, 300, 3);
    const auto w = lowbit::pack<lowbit::ternary2>(c, lowbit::vector_f::LinSpaced(40, 0.5f, 1.5f), lowbit::vector_f::Constant(40, 0.25f));
    const lowbit::matrix_f x = random_x(20, 300, 4);
    if (!lowbit::isa_available(kernel_isa::amx)) {
        CHECK_THROWS_AS((void)lowbit::gemm(w, x, lowbit::act_int{8}, kernel_isa::amx), lowbit::invalid_argument);
        CHECK_THROWS_AS((void)lowbit::gemm_parallel(w, x, lowbit::act_int{8}, kernel_isa::amx), lowbit::invalid_argument);
        return;
    }
    const lowbit::matrix_f ref = lowbit::gemm(w, x, lowbit::act_int{8}, kernel_isa::scalar);
    CHECK(lowbit::gemm(w, x, lowbit::act_int{8}, kernel_isa::amx) == ref);
    CHECK(lowbit::gemm(w, x, lowbit::act_int{8}) == ref); // automatic: 20 tokens ≥ amx_min_tokens
    CHECK(lowbit::gemm_parallel(w, x, lowbit::act_int{8}, kernel_isa::amx) == ref);
    CHECK(lowbit::gemm_parallel(w, x, lowbit::act_int{4}) == lowbit::gemm(w, x, lowbit::act_int{4}, kernel_isa::scalar));
    const auto wb = lowbit::pack<lowbit::binary1>(random_codes<lowbit::binary1>(9, 300, 5), lowbit::vector_f::Ones(9));
    const lowbit::vector_f xv = x.row(0).transpose();
    CHECK(lowbit::xnor_gemv(wb, xv, kernel_isa::amx) == lowbit::xnor_gemv(wb, xv, kernel_isa::scalar));
}

TEST_CASE_TEMPLATE("integer kernels are bit-exact on every ISA path, random and awkward shapes", F, lowbit::ternary2,
                   lowbit::int2, lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{1, 1}, {5, 172}, {17, 255}, {3, 321}, {33, 640},
                              {4, 4544}, {2, 13696}, {1, 29568}, {7, 4544}, {6, 172}, {5, 33000}})
        for (int bits : {8, 4}) check_exact<F>(rows, cols, rows % 2 ? 1 : 3, bits, false);
    // 2- and 3-bit activations (codes {−1, 0, 1} and −3..3) through the same kernels
    for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{1, 1}, {5, 172}, {3, 321}, {4, 4544}})
        for (int bits : {3, 2}) check_exact<F>(rows, cols, rows % 2 ? 1 : 3, bits, false);
    // token counts around the 4-token micro-kernel of the AVX-512 path
    for (Eigen::Index tokens : {4, 5, 9}) check_exact<F>(7, 700, tokens, 8, false);
    // one token, narrow rows (≤ 2 blocks): the AVX-512 16-row GEMV kernel, its 4-row and 1-row tails
    for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{16, 64}, {40, 512}, {35, 300}, {48, 172}, {19, 640}})
        for (bool extreme : {false, true}) check_exact<F>(rows, cols, 1, 8, extreme);
}

TEST_CASE_TEMPLATE("integer kernels do not saturate at extreme codes and activations", F, lowbit::ternary2, lowbit::int2,
                   lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    check_exact<F>(6, 4544, 2, 8, true);
    check_exact<F>(3, 13696, 1, 8, true);
    check_exact<F>(5, 4544, 6, 8, true);
    check_exact<F>(5, 33000, 1, 8, true); // > 128 blocks: crosses a chunk of the AND-only 2-bit micro-kernel
}

TEST_CASE("base 3: exact where 256·Σu·x of a row exceeds int32 (the AVX-512 linear form folds in chunks)") {
    // all weights +1 (digit 2) and all activation codes +127 over 40 000 columns: Σu·x = 10 160 000,
    // 256·Σu·x ≈ 2.6e9 > 2^31, so an unchunked int32 fold of the linear form would wrap
    for (Eigen::Index tokens : {1, 2, 5}) {
        const Eigen::Index rows = 6, cols = 40000;
        const lowbit::matrix_i8 c = lowbit::matrix_i8::Ones(rows, cols);
        const auto w = lowbit::pack<lowbit::ternary_base3>(c, lowbit::vector_f::Ones(rows));
        const auto a = lowbit::quantize_activations(lowbit::matrix_f::Ones(tokens, cols), 8);
        const auto want = brute_dot(c, a);
        CHECK(want[0] == 127 * cols);
        check_exact_layout(w, a, want, rows, tokens);
        check_exact_layout(lowbit::interleave(w), a, want, rows, tokens);
    }
}

namespace {
// d from `run` against the scalar reference on both layouts of one random matrix, every
// (tokens, rows, cols) of the grid; rows 11 cut a 4-row tile and a 16-row tile.
template <class F, class Run>
void check_against_scalar(Run run) {
    for (Eigen::Index tokens : {1, 3, 8})
        for (Eigen::Index rows : {1, 5, 11})
            for (Eigen::Index cols : {64, 300, 1287}) {
                CAPTURE(tokens);
                CAPTURE(rows);
                CAPTURE(cols);
                const lowbit::matrix_i8 c = random_codes<F>(rows, cols, static_cast<std::uint64_t>(rows * 7 + cols), false);
                const auto w = lowbit::pack<F>(c, lowbit::vector_f::Ones(rows));
                const auto wi = lowbit::interleave(w);
                const auto a = lowbit::quantize_activations(random_x(tokens, cols, static_cast<std::uint64_t>(tokens + cols)));
                const std::size_t n = static_cast<std::size_t>(tokens * rows);
                std::vector<std::int32_t> want(n), got(n, -12345), got_i(n, -12345);
                lowbit::dot_rows(w, a, 0, rows, want.data(), rows, kernel_isa::scalar);
                run(w, a, rows, got.data());
                run(wi, a, rows, got_i.data());
                CHECK(got == want);
                CHECK(got_i == want);
            }
}
} // namespace

TEST_CASE_TEMPLATE("every ISA path equals the scalar reference on the tokens x rows x cols grid", F, lowbit::ternary2,
                   lowbit::int2, lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    for (kernel_isa isa : all_isas) {
        if (!lowbit::isa_available(isa)) continue;
        CAPTURE(lowbit::isa_name(isa));
        check_against_scalar<F>([isa](const auto& w, const lowbit::quantized_activations& a, Eigen::Index rows, std::int32_t* out) {
            lowbit::dot_rows(w, a, 0, rows, out, rows, isa);
        });
    }
}

#if LOWBIT_HAVE_NEON_KERNELS
TEST_CASE_TEMPLATE("NEON: baseline ASIMD, sdot and smmla micro-kernels equal the scalar reference", F, lowbit::ternary2,
                   lowbit::int2, lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    namespace nk = lowbit::detail::neon_kernels;
    // the baseline path directly (automatic dispatch takes sdot on a CPU that has it)
    check_against_scalar<F>([](const auto& w, const lowbit::quantized_activations& a, Eigen::Index rows, std::int32_t* out) {
        nk::dot_rows_asimd(w, 0, rows, a.q.data(), a.q.cols(), a.qsum.data(), a.tokens(), out, rows);
    });
#if LOWBIT_HAVE_NEON_SDOT
    if (!lowbit::detail::host_cpu_features().neon_dotprod) {
        MESSAGE("no dot-product extension on this CPU: sdot path not run");
        return;
    }
    check_against_scalar<F>([](const auto& w, const lowbit::quantized_activations& a, Eigen::Index rows, std::int32_t* out) {
        nk::dot_rows_dotprod(w, 0, rows, a.q.data(), a.q.cols(), a.qsum.data(), a.tokens(), out, rows);
    });
#else
    MESSAGE("sdot path not compiled (Clang without -march=...+dotprod)");
#endif
#if LOWBIT_HAVE_NEON_I8MM
    if (!lowbit::detail::host_cpu_features().neon_i8mm) {
        MESSAGE("no int8 matrix-multiply extension on this CPU: smmla path not run");
        return;
    }
    // tokens {1, 3, 8} × rows {1, 5, 11}: odd rows and odd tokens take the sdot remainder
    check_against_scalar<F>([](const auto& w, const lowbit::quantized_activations& a, Eigen::Index rows, std::int32_t* out) {
        nk::dot_rows_i8mm(w, 0, rows, a.q.data(), a.q.cols(), a.qsum.data(), a.tokens(), out, rows);
    });
#endif
}
#endif

#if LOWBIT_HAVE_X86_KERNELS
TEST_CASE_TEMPLATE("AVX-512 4-row tile micro-kernels: AND-only unpack equals shift+AND decode, exactly", F, lowbit::ternary2,
                   lowbit::int2) {
    if (!lowbit::isa_available(kernel_isa::avx512)) return;
    using T = lowbit::pack_format<F>;
    for (auto [cols, extreme] : {std::pair<Eigen::Index, bool>{172, false}, {4544, true}, {33000, false}, {33000, true}}) {
        CAPTURE(cols);
        const lowbit::matrix_i8 c = random_codes<F>(4, cols, static_cast<std::uint64_t>(cols), extreme);
        const auto wi = lowbit::interleave(lowbit::pack<F>(c, lowbit::vector_f::Ones(4)));
        lowbit::matrix_f x = random_x(1, cols, 8);
        if (extreme) x.setConstant(-1.0f); // q = −127 everywhere: the largest |4^k·Σ| per chunk
        const auto a = lowbit::quantize_activations(x);
        const auto want = brute_dot(c, a);
        std::int32_t r_and[4], r_dec[4];
        lowbit::detail::avx512_kernels::tile_dot4_and_only<F>(wi.tile_data(0), a.q.data(), wi.blocks_per_row(), r_and);
        lowbit::detail::avx512_kernels::tile_dot4<F>(wi.tile_data(0), a.q.data(), wi.blocks_per_row(), r_dec);
        for (int j = 0; j < 4; ++j) {
            CHECK(r_and[j] == r_dec[j]);
            CHECK(std::int64_t(r_and[j]) * T::digit_mul - std::int64_t(T::digit_offset) * a.qsum[0] == want[std::size_t(j)]);
        }
    }
}
#endif

TEST_CASE("quantize_activations matches rtn's symmetric per-token grid") {
    const lowbit::matrix_f x = random_x(4, 300, 11);
    for (int bits : {8, 7, 6, 5, 4, 3, 2}) {
        const auto a = lowbit::quantize_activations(x, bits);
        lowbit::per_token_quantizer pq;
        pq.bits = bits;
        pq.mode = lowbit::int_mode::symmetric;
        const auto ref = lowbit::quantize_per_token(x, pq);
        const int levels = (1 << (bits - 1)) - 1;
        // padded to the widest packed format of this width (blocks of 256 and of 320 weights)
        const Eigen::Index n = x.cols();
        CHECK(a.padded_cols() == std::max((n + 255) / 256 * 256, (n + 319) / 320 * 320));
        CHECK((a.q.rightCols(a.padded_cols() - n).array() == 0).all());
        for (Eigen::Index k = 0; k < x.rows(); ++k) {
            CHECK(a.scale(k) == ref.scale(k, 0));
            std::int32_t qs = 0;
            bool same = true;
            for (Eigen::Index j = 0; j < x.cols(); ++j) {
                same = same && int(a.q(k, j)) == int(ref.codes(k, j)) - levels;
                qs += a.q(k, j);
            }
            for (Eigen::Index j = x.cols(); j < a.padded_cols(); ++j) same = same && a.q(k, j) == 0;
            CHECK(same);
            CHECK(a.qsum[static_cast<std::size_t>(k)] == qs);
            // Σx in double, 8 lane-interleaved partial sums combined pairwise (gemm.hpp's fixed order)
            double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (Eigen::Index j = 0; j < x.cols(); ++j) p[j % 8] += x(k, j);
            const double s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            CHECK(a.sum(k) == static_cast<float>(s));
        }
    }
    // both compilations of the row quantizer (default architecture, AVX2 clone) give identical codes
    if (lowbit::isa_available(kernel_isa::avx2)) {
        std::vector<std::int8_t> q1(300), q2(300);
        float s1 = 0, s2 = 0;
        double m1 = 0, m2 = 0;
        std::int32_t c1 = 0, c2 = 0;
        CHECK(lowbit::detail::quantize_row(x.row(1).data(), 300, 127, q1.data(), s1, m1, c1));
        CHECK(lowbit::detail::quantize_row_avx2(x.row(1).data(), 300, 127, q2.data(), s2, m2, c2));
        CHECK(q1 == q2);
        CHECK(s1 == s2);
        CHECK(m1 == m2);
        CHECK(c1 == c2);
    }
    if (lowbit::isa_available(kernel_isa::avx512)) { // the AVX-512 clone too (n = 300: 8-lane sum tail of 4)
        std::vector<std::int8_t> q1(300), q2(300);
        float s1 = 0, s2 = 0;
        double m1 = 0, m2 = 0;
        std::int32_t c1 = 0, c2 = 0;
        CHECK(lowbit::detail::quantize_row(x.row(2).data(), 300, 31, q1.data(), s1, m1, c1));
        CHECK(lowbit::detail::quantize_row_avx512(x.row(2).data(), 300, 31, q2.data(), s2, m2, c2));
        CHECK(q1 == q2);
        CHECK(s1 == s2);
        CHECK(m1 == m2);
        CHECK(c1 == c2);
    }
    const auto z = lowbit::quantize_activations(lowbit::matrix_f::Zero(1, 10));
    CHECK(z.q.isZero());
}

TEST_CASE("AVX-512 activation codes equal the scalar row quantizer at every width, on ties and at the clamp") {
    if (!lowbit::isa_available(kernel_isa::avx512)) return;
    // widths 1..72 (every masked tail of the 8- and 16-lane loops) and a few wide ones; levels of 8, 6, 4, 3 and 2 bits
    std::vector<Eigen::Index> widths;
    for (Eigen::Index n = 1; n <= 72; ++n) widths.push_back(n);
    for (Eigen::Index n : {255, 256, 300, 4096}) widths.push_back(n);
    for (const Eigen::Index n : widths)
        for (int levels : {127, 31, 7, 3, 1}) {
            CAPTURE(n);
            CAPTURE(levels);
            lowbit::matrix_f x = random_x(1, n, static_cast<unsigned>(n * 3 + levels));
            // exact ties: amax = levels gives s = 1, so k + 0.5 must round half to even (ties inside
            // (−levels, levels): −3.5..4.5 for the wide grids, −levels + ½..levels − ½ for 3 and 2 bits)
            const int span = levels >= 7 ? 9 : 2 * levels, offset = levels >= 7 ? 4 : levels;
            if (n >= 3) {
                x(0, 0) = static_cast<float>(levels);
                for (Eigen::Index j = 1; j < n; ++j) x(0, j) = static_cast<float>((j % span) - offset) + 0.5f;
            }
            std::vector<std::int8_t> q1(static_cast<std::size_t>(n) + 8, 99), q2(q1);
            float s1 = 0, s2 = 0;
            double m1 = 0, m2 = 0;
            std::int32_t c1 = 0, c2 = 0;
            REQUIRE(lowbit::detail::quantize_row(x.data(), n, levels, q1.data(), s1, m1, c1));
            REQUIRE(lowbit::detail::quantize_row_avx512(x.data(), n, levels, q2.data(), s2, m2, c2));
            CHECK(q1 == q2); // includes the 8 bytes after n: the masked store wrote none of them
            CHECK(s1 == s2);
            CHECK(m1 == m2);
            CHECK(c1 == c2);
            if (n >= 3) {
                CHECK(int(q2[0]) == levels);
                for (Eigen::Index j = 1; j < n; ++j) { // round half to even, independent of the library
                    const double v = static_cast<double>((j % span) - offset) + 0.5;
                    const double lo = std::floor(v);
                    const double want = (static_cast<long long>(lo) % 2 == 0) ? lo : lo + 1;
                    CHECK(int(q2[static_cast<std::size_t>(j)]) == static_cast<int>(want));
                }
            }
        }
    // adversarial: inputs within a few float ulps of every half-integer boundary (k + ½)·s, for 300
    // scales (the AVX-512 path multiplies by 1/s and corrects; the scalar body divides)
    std::mt19937_64 rng(2024);
    std::uniform_real_distribution<float> amax_dist(1e-3f, 1e3f);
    for (int trial = 0; trial < 300; ++trial)
        for (int levels : {127, 31, 7, 3, 1}) {
            const float amax = amax_dist(rng);
            const auto sc = static_cast<float>(static_cast<double>(amax) / levels);
            std::vector<float> row{amax};
            for (int k = -levels - 1; k <= levels; ++k) {
                const auto b = static_cast<float>((k + 0.5) * static_cast<double>(sc));
                float lo = b, hi = b;
                row.push_back(std::clamp(b, -amax, amax)); // max|x| stays amax, so s stays sc
                for (int u = 0; u < 2; ++u) {
                    lo = std::nextafter(lo, -1e30f);
                    hi = std::nextafter(hi, 1e30f);
                    row.push_back(std::clamp(lo, -amax, amax));
                    row.push_back(std::clamp(hi, -amax, amax));
                }
            }
            const auto n = static_cast<Eigen::Index>(row.size());
            std::vector<std::int8_t> q1(row.size()), q2(row.size());
            float s1 = 0, s2 = 0;
            double m1 = 0, m2 = 0;
            std::int32_t c1 = 0, c2 = 0;
            REQUIRE(lowbit::detail::quantize_row(row.data(), n, levels, q1.data(), s1, m1, c1));
            REQUIRE(lowbit::detail::quantize_row_avx512(row.data(), n, levels, q2.data(), s2, m2, c2));
            REQUIRE(s1 == sc);
            CHECK(q1 == q2);
            CHECK(c1 == c2);
#if LOWBIT_HAVE_X86_KERNELS
            // both code kernels directly (quantize_row_avx512 picks the float one for every scale
            // activation_scale can give; the double one serves scales outside float_codes_exact)
            std::vector<std::int8_t> q3(row.size()), q4(row.size());
            CHECK(lowbit::detail::avx512_kernels::activation_codes_f64(row.data(), n, sc, levels, q3.data()) == c1);
            CHECK(lowbit::detail::avx512_kernels::activation_codes_f32(row.data(), n, sc, static_cast<float>(levels), q4.data()) == c1);
            CHECK(q3 == q1);
            CHECK(q4 == q1);
#endif
        }
    // NaN / ±Inf anywhere (a full 16-lane step or the masked tail) is refused by both paths
    for (const Eigen::Index n : {Eigen::Index{5}, Eigen::Index{16}, Eigen::Index{37}})
        for (Eigen::Index at = 0; at < n; at += 3)
            for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()}) {
                std::vector<float> row(static_cast<std::size_t>(n), 0.25f);
                row[static_cast<std::size_t>(at)] = bad;
                std::vector<std::int8_t> q(static_cast<std::size_t>(n));
                float sc = 0;
                double sm = 0;
                std::int32_t c = 0;
                CHECK(!lowbit::detail::quantize_row(row.data(), n, 127, q.data(), sc, sm, c));
                CHECK(!lowbit::detail::quantize_row_avx512(row.data(), n, 127, q.data(), sc, sm, c));
            }
    // the scale floor (1e-5): tiny inputs give zero codes on both paths
    lowbit::matrix_f tiny = lowbit::matrix_f::Constant(1, 20, 1e-9f);
    tiny(0, 3) = -1e-9f;
    std::vector<std::int8_t> q1(20), q2(20);
    float s1 = 0, s2 = 0;
    double m1 = 0, m2 = 0;
    std::int32_t c1 = 0, c2 = 0;
    REQUIRE(lowbit::detail::quantize_row(tiny.data(), 20, 7, q1.data(), s1, m1, c1));
    REQUIRE(lowbit::detail::quantize_row_avx512(tiny.data(), 20, 7, q2.data(), s2, m2, c2));
    CHECK(q1 == q2);
    CHECK(c1 == c2);
    lowbit::matrix_f big = lowbit::matrix_f::Constant(1, 20, 3e5f); // s = 1e4 ceiling: 3e5/1e4 = 30 > 7
    REQUIRE(lowbit::detail::quantize_row(big.data(), 20, 7, q1.data(), s1, m1, c1));
    REQUIRE(lowbit::detail::quantize_row_avx512(big.data(), 20, 7, q2.data(), s2, m2, c2));
    CHECK(q1 == q2);
    CHECK(int(q2[5]) == 7);
    CHECK(c1 == c2);
}

TEST_CASE_TEMPLATE("gemm/gemv float epilogue within the stated bound, with and without offsets", F, lowbit::ternary2,
                   lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    const Eigen::Index rows = 9, cols = 4544, tokens = 3;
    const lowbit::matrix_i8 c = random_codes<F>(rows, cols, 5);
    lowbit::vector_f s(rows), mu(rows);
    for (Eigen::Index i = 0; i < rows; ++i) {
        s(i) = 0.01f * static_cast<float>(i + 1);
        mu(i) = 0.003f * static_cast<float>(i) - 0.01f;
    }
    const lowbit::matrix_f x = random_x(tokens, cols, 6);
    for (bool with_mu : {false, true}) {
        const auto w = with_mu ? lowbit::pack<F>(c, s, mu) : lowbit::pack<F>(c, s);
        const auto a = lowbit::quantize_activations(x, 8);
        for (kernel_isa isa : all_isas) {
            if (!lowbit::isa_available(isa)) continue;
            CAPTURE(lowbit::isa_name(isa));
            const lowbit::matrix_f y = lowbit::gemm(w, x, lowbit::act_int{8}, isa);
            for (Eigen::Index k = 0; k < tokens; ++k) {
                const lowbit::vector_f yk = lowbit::gemv(w, x.row(k).transpose(), lowbit::act_int{8}, isa);
                CHECK(yk == y.row(k).transpose());
                for (Eigen::Index i = 0; i < rows; ++i) {
                    double d = 0, sx = 0;
                    for (Eigen::Index j = 0; j < cols; ++j) {
                        d += double(c(i, j)) * a.q(k, j);
                        sx += x(k, j);
                    }
                    const double m = with_mu ? double(mu(i)) : 0.0;
                    const double ref = double(s(i)) * double(a.scale(k)) * d + m * sx;
                    const double bound = 3 * u32 * (std::fabs(double(s(i)) * a.scale(k) * d) + std::fabs(m * sx)) +
                                         u32 * std::fabs(m * sx) + 1e-30;
                    CHECK(std::fabs(double(y(k, i)) - ref) <= bound);
                }
            }
        }
        // the interleaved layout gives the same floats (same exact d, same epilogue) on every path
        for (kernel_isa isa : all_isas)
            if (lowbit::isa_available(isa)) {
                CAPTURE(lowbit::isa_name(isa));
                CHECK(lowbit::gemm(lowbit::interleave(w), x, lowbit::act_int{8}, isa) == lowbit::gemm(w, x, lowbit::act_int{8}, isa));
                CHECK(lowbit::gemv(lowbit::interleave(w), x.row(1).transpose(), lowbit::act_fp32{}, isa) ==
                      lowbit::gemv(w, x.row(1).transpose(), lowbit::act_fp32{}, isa));
            }
        // against the float product: each |x_j − s·q_j| ≤ s/2, so |y − x·Wᵀ| ≤ α_i·(s/2)·Σ_j |t_ij| (+ rounding)
        const lowbit::matrix_f yf = x * w.dequantize().transpose();
        const lowbit::matrix_f y = lowbit::gemm(w, x);
        for (Eigen::Index k = 0; k < tokens; ++k)
            for (Eigen::Index i = 0; i < rows; ++i) {
                const double l1 = c.row(i).cast<double>().cwiseAbs().sum();
                CHECK(std::fabs(double(y(k, i)) - double(yf(k, i))) <= double(s(i)) * a.scale(k) * 0.5 * l1 * 1.001 + 1e-3);
            }
    }
}

TEST_CASE_TEMPLATE("fp32 activations within the stated bound on every path", F, lowbit::ternary2, lowbit::ternary_base3,
                   lowbit::binary1, lowbit::int2, lowbit::int4) {
    // 1-5 tokens: the per-token kernels (AVX-512: groups of up to 4 tokens share each decoded weight
    // vector, 5 = a group of 4 + 1; one token: four rows at a time, 70 = 17 groups + 2); 9 and 17
    // tokens: per-token on AVX-512, 64-row blocks decoded once and multiplied with all tokens
    // elsewhere; 33 tokens: the batched path everywhere but scalar (70 rows cross a block boundary).
    // Widths whose last block holds 1, 2, 3 or all of its 64-column planes (the AVX-512 kernels skip
    // the padded ones). Same double-precision oracle and bound for all.
    const Eigen::Index rows = 70;
    for (Eigen::Index cols : {1000, 64, 172, 129}) {
        CAPTURE(cols);
        const lowbit::matrix_i8 c = random_codes<F>(rows, cols, 9);
        lowbit::vector_f s = lowbit::vector_f::Constant(rows, 0.05f), mu = lowbit::vector_f::Constant(rows, 0.02f);
        const auto w = lowbit::pack<F>(c, s, mu);
        const Eigen::Index n = w.padded_cols();
        for (Eigen::Index tokens : {1, 2, 3, 4, 5, 9, 17, 33})
        for (kernel_isa isa : all_isas) {
            const lowbit::matrix_f x = random_x(tokens, cols, 10);
            if (!lowbit::isa_available(isa)) continue;
            CAPTURE(lowbit::isa_name(isa));
            const lowbit::matrix_f y = lowbit::gemm(w, x, lowbit::act_fp32{}, isa);
            for (Eigen::Index k = 0; k < x.rows(); ++k)
                for (Eigen::Index i = 0; i < rows; ++i) {
                    double ref = 0, mag = 0, sx = 0, sabs = 0;
                    for (Eigen::Index j = 0; j < cols; ++j) {
                        ref += double(s(i)) * c(i, j) * x(k, j) + double(mu(i)) * x(k, j);
                        mag += std::fabs(double(s(i)) * c(i, j) * x(k, j));
                        sx += x(k, j);
                        sabs += std::fabs(x(k, j));
                    }
                    // binary1 on the AVX-512 per-token kernel: 2·Σ_{t=+1} x − Σx, bound (2n + 4)·u·(α + |μ|)·Σ|x|
                    const bool two_p = std::is_same_v<F, lowbit::binary1> && lowbit::detail::host_cpu_features().avx512 &&
                                       (isa == kernel_isa::avx512 || isa == kernel_isa::amx || isa == kernel_isa::automatic) &&
                                       tokens < lowbit::detail::fp32_batched_min_tokens_avx512;
                    const double bound = two_p ? double(2 * n + 4) * u32 * (double(s(i)) + std::fabs(double(mu(i)))) * sabs
                                               : double(n + 2) * u32 * (mag + std::fabs(double(mu(i))) * sabs);
                    CHECK(std::fabs(double(y(k, i)) - ref) <= bound);
                }
        }
    }
}

TEST_CASE("binary x binary XNOR-popcount is exact on every path") {
    for (Eigen::Index cols : {1, 172, 256, 300, 4544, 13696}) {
        const Eigen::Index rows = 5;
        const lowbit::matrix_i8 c = random_codes<lowbit::binary1>(rows, cols, static_cast<std::uint64_t>(cols));
        lowbit::vector_f s(rows);
        s << 1.0f, 0.5f, 2.0f, 0.25f, 4.0f;
        const auto w = lowbit::pack<lowbit::binary1>(c, s);
        const lowbit::vector_f x = random_x(1, cols, 3).row(0).transpose();
        const auto a = lowbit::binarize_activations(x);
        double beta = 0;
        for (Eigen::Index j = 0; j < cols; ++j) beta += std::fabs(double(x(j)));
        beta /= double(cols);
        CHECK(a.beta == static_cast<float>(beta));
        for (kernel_isa isa : all_isas) {
            if (!lowbit::isa_available(isa)) continue;
            CAPTURE(lowbit::isa_name(isa));
            CAPTURE(cols);
            std::vector<std::int32_t> d(rows), di(rows), dp(rows - 2);
            lowbit::xnor_dot_rows(w, a, 0, rows, d.data(), isa);
            const auto wi = lowbit::interleave(w);
            lowbit::xnor_dot_rows(wi, a, 0, rows, di.data(), isa);
            CHECK(di == d);
            lowbit::xnor_dot_rows(wi, a, 1, rows - 1, dp.data(), isa); // cuts both 4-row tiles
            CHECK(std::equal(dp.begin(), dp.end(), d.begin() + 1));
            CHECK(lowbit::xnor_gemv(wi, x, isa) == lowbit::xnor_gemv(w, x, isa));
            const lowbit::vector_f y = lowbit::xnor_gemv(w, x, isa);
            for (Eigen::Index i = 0; i < rows; ++i) {
                std::int64_t want = 0;
                for (Eigen::Index j = 0; j < cols; ++j) want += c(i, j) * (x(j) >= 0.0f ? 1 : -1);
                CHECK(d[static_cast<std::size_t>(i)] == want);
                const double ref = double(s(i)) * double(a.beta) * double(want);
                CHECK(std::fabs(y(i) - ref) <= 3 * u32 * std::fabs(ref));
            }
        }
    }
}

TEST_CASE("gemm_parallel equals gemm bit for bit") {
    const lowbit::matrix_i8 c = random_codes<lowbit::ternary2>(200, 700, 1);
    const auto w = lowbit::pack<lowbit::ternary2>(c, lowbit::vector_f::Constant(200, 0.1f));
    const lowbit::matrix_f x = random_x(4, 700, 2);
    CHECK(lowbit::gemm_parallel(w, x) == lowbit::gemm(w, x));
}

TEST_CASE("kernels reject bad input with lowbit errors") {
    const auto w = lowbit::pack<lowbit::ternary2>(random_codes<lowbit::ternary2>(4, 300, 1), lowbit::vector_f::Ones(4));
    const lowbit::matrix_f x = random_x(2, 300, 2);
    CHECK_THROWS_AS((void)lowbit::gemm(w, random_x(2, 299, 1)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, random_x(2, 299, 1), lowbit::act_fp32{}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemv(w, lowbit::vector_f::Ones(301)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, lowbit::matrix_f(0, 300)), lowbit::shape_error);
    lowbit::matrix_f bad = x;
    bad(1, 5) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::gemm(w, bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, bad, lowbit::act_fp32{}), lowbit::numeric_error);
    CHECK_THROWS_WITH_AS((void)lowbit::gemm(w, x, lowbit::act_int{1}),
                         "lowbit: quantize_activations: activation bits must lie in 2..8, got 1", lowbit::invalid_argument);
    CHECK_THROWS_WITH_AS((void)lowbit::gemm(w, x, lowbit::act_int{9}),
                         "lowbit: quantize_activations: activation bits must lie in 2..8, got 9", lowbit::invalid_argument);
    const auto a = lowbit::quantize_activations(x);
    std::vector<std::int32_t> out(16);
    CHECK_THROWS_AS(lowbit::dot_rows(w, a, 2, 5, out.data(), 3), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_rows(w, a, 3, 2, out.data(), 3), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_rows(w, a, 0, 4, out.data(), 2), lowbit::shape_error); // ldo < rows for 2 tokens
    CHECK_THROWS_AS(lowbit::dot_rows(w, a, 0, 4, nullptr, 4), lowbit::invalid_argument);
    auto a_short = a;
    a_short.q = a.q.leftCols(256);
    CHECK_THROWS_AS(lowbit::dot_rows(w, a_short, 0, 4, out.data(), 4), lowbit::shape_error);
    lowbit::matrix_f y_bad(2, 3);
    CHECK_THROWS_AS(lowbit::gemm_rows(w, a, 0, 4, y_bad), lowbit::shape_error);
    // the interleaved layout goes through the same checks
    const auto wi = lowbit::interleave(w);
    CHECK_THROWS_AS((void)lowbit::gemm(wi, random_x(2, 299, 1)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemv(wi, lowbit::vector_f::Ones(301), lowbit::act_fp32{}), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_rows(wi, a, 2, 5, out.data(), 3), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_rows(wi, a, 0, 4, out.data(), 2), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_rows(wi, a, 0, 4, nullptr, 4), lowbit::invalid_argument);
    CHECK_THROWS_AS(lowbit::dot_rows(wi, a_short, 0, 4, out.data(), 4), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemm_rows(wi, a, 0, 4, y_bad), lowbit::shape_error);
    for (kernel_isa isa : all_isas)
        if (!lowbit::isa_available(isa)) CHECK_THROWS_AS((void)lowbit::gemm(w, x, lowbit::act_int{8}, isa), lowbit::invalid_argument);
    // binary × binary: length mismatch
    const auto wb = lowbit::pack<lowbit::binary1>(lowbit::matrix_i8::Ones(2, 300), lowbit::vector_f::Ones(2));
    CHECK_THROWS_AS((void)lowbit::xnor_gemv(wb, lowbit::vector_f::Ones(299)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::binarize_activations(lowbit::vector_f()), lowbit::shape_error);
    auto ab = lowbit::binarize_activations(lowbit::vector_f::Ones(300));
    ab.bits.resize(32);
    std::vector<std::int32_t> d(2);
    CHECK_THROWS_AS(lowbit::xnor_dot_rows(wb, ab, 0, 2, d.data()), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::xnor_dot_rows(lowbit::interleave(wb), ab, 0, 2, d.data()), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::xnor_gemv(lowbit::interleave(wb), lowbit::vector_f::Ones(299)), lowbit::shape_error);
}

TEST_CASE_TEMPLATE("MXFP4 x int8: both layouts, every path, within the stated bound", L, lowbit::mxfp4_rowmajor, lowbit::mxfp4_ggml) {
    static constexpr int doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12}; // OCP E2M1 × 2
    // AVX-512 runs 4 blocks per step and the rest scalar: 1, 2, 4, 6 (4 + 2), 16 and 142 blocks
    for (Eigen::Index cols : {32, 33, 128, 172, 512, 4544}) {
        const Eigen::Index rows = 6, nb = (cols + 31) / 32;
        std::mt19937_64 rng(static_cast<std::uint64_t>(cols));
        std::uniform_int_distribution<int> dc(0, 15), de(110, 140);
        lowbit::detail::u8_matrix c(rows, cols), e(rows, nb);
        for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = static_cast<std::uint8_t>(dc(rng));
        for (Eigen::Index i = 0; i < e.size(); ++i) e.data()[i] = static_cast<std::uint8_t>(de(rng));
        if (cols == 512) { // E8M0 codes 0 (2^-127, a float subnormal) and 1 inside a 4-block step
            e(0, 3) = 0;
            e(1, 5) = 1;
        }
        const auto w = lowbit::pack_mxfp4<L>(c, e);
        CHECK(w.codes() == c);
        CHECK(w.scales() == e);
        const lowbit::matrix_f x = random_x(5, cols, 4);
        const auto a = lowbit::quantize_activations(x);
        for (kernel_isa isa : all_isas) {
            if (!lowbit::isa_available(isa)) continue;
            CAPTURE(lowbit::isa_name(isa));
            CAPTURE(cols);
            const lowbit::matrix_f y = lowbit::gemm(w, x, lowbit::act_int{8}, isa);
            for (Eigen::Index k = 0; k < x.rows(); ++k)
                for (Eigen::Index i = 0; i < rows; ++i) {
                    double ref = 0, mag = 0;
                    for (Eigen::Index j = 0; j < cols; ++j) {
                        const double t = std::ldexp(double(doubled[c(i, j)]) * a.q(k, j), int(e(i, j / 32)) - 127);
                        ref += t;
                        mag += std::fabs(t);
                    }
                    ref *= 0.5 * a.scale(k);
                    mag *= 0.5 * a.scale(k);
                    CHECK(std::fabs(double(y(k, i)) - ref) <= double(nb + 8) * u32 * mag + 1e-37);
                }
        }
    }
    // ggml block layout, hand-worked: element 0 in the low nibble of byte 1, element 16 in its high nibble
    lowbit::detail::u8_matrix c = lowbit::detail::u8_matrix::Zero(1, 32), e = lowbit::detail::u8_matrix::Constant(1, 1, 127);
    c(0, 0) = 7;   // +6
    c(0, 1) = 9;   // -0.5
    c(0, 16) = 10; // -1
    const auto w = lowbit::pack_mxfp4<L>(c, e);
    if constexpr (std::is_same_v<L, lowbit::mxfp4_ggml>) {
        CHECK(int(w.row_data(0)[1]) == (7 | 10 << 4));
        CHECK(int(w.row_data(0)[2]) == 9);
    } else {
        CHECK(int(w.row_data(0)[1]) == (7 | 9 << 4));
        CHECK(int(w.row_data(0)[9]) == 10);
    }
    CHECK(w.dequantize()(0, 0) == 6.0f);
    CHECK(w.dequantize()(0, 1) == -0.5f);
    CHECK(w.bits_per_weight() == doctest::Approx(4.25));
    // bad input
    CHECK_THROWS_AS((void)lowbit::pack_mxfp4<L>(c, lowbit::detail::u8_matrix::Constant(1, 2, 127)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pack_mxfp4<L>(c, lowbit::detail::u8_matrix::Constant(1, 1, 255)), lowbit::numeric_error);
    c(0, 3) = 16;
    CHECK_THROWS_AS((void)lowbit::pack_mxfp4<L>(c, e), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::gemv(w, lowbit::vector_f::Ones(31)), lowbit::shape_error);
    using P = lowbit::packed_mxfp4<L>;
    CHECK_THROWS_AS(P(1, 32, typename P::buffer(16)), lowbit::shape_error);
}

TEST_CASE("quantize_activations into reused storage: same codes, pads zeroed when the width shrinks") {
    lowbit::quantized_activations a;
    const lowbit::matrix_f wide = random_x(3, 300, 21) * 50.0f; // 300 and 260 columns share a 512 padded width
    lowbit::quantize_activations(wide, 8, a);
    for (Eigen::Index cols : {260, 300, 64, 1})
        for (int bits : {8, 4}) {
            const lowbit::matrix_f x = random_x(cols == 1 ? 1 : 2, cols, static_cast<std::uint64_t>(cols));
            lowbit::quantize_activations(x, bits, a);
            const lowbit::quantized_activations fresh = lowbit::quantize_activations(x, bits);
            CAPTURE(cols);
            CHECK(a.q == fresh.q); // includes every pad column (zero in a fresh quantization)
            CHECK(a.scale == fresh.scale);
            CHECK(a.sum == fresh.sum);
            CHECK(a.qsum == fresh.qsum);
            CHECK(a.cols == cols);
            CHECK(a.bits == bits);
        }
    lowbit::matrix_f bad = random_x(2, 40, 3);
    bad(1, 39) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(lowbit::quantize_activations(bad, 8, a), lowbit::numeric_error);
    bad(1, 39) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(lowbit::quantize_activations(bad, 8, a), lowbit::numeric_error);
    bad(1, 39) = std::numeric_limits<float>::max(); // finite: accepted
    CHECK_NOTHROW(lowbit::quantize_activations(bad, 8, a));
}

TEST_CASE_TEMPLATE("gemm_into with one reused workspace equals gemm for every shape sequence", F, lowbit::ternary2,
                   lowbit::ternary_base3, lowbit::binary1, lowbit::int4) {
    lowbit::gemm_workspace ws;
    // big, then small, then the same shape again: the workspace's history must not leak into results
    const std::pair<Eigen::Index, Eigen::Index> shapes[] = {{70, 700}, {64, 64}, {172, 64}, {64, 172}, {70, 700}, {5, 1}};
    std::uint64_t seed = 1;
    for (auto [rows, cols] : shapes)
        for (Eigen::Index tokens : {1, 5, 40}) {
            const auto w = lowbit::pack<F>(random_codes<F>(rows, cols, seed), lowbit::vector_f::Constant(rows, 0.03f),
                                           lowbit::vector_f::Constant(rows, 0.01f));
            const lowbit::matrix_f x = random_x(tokens, cols, ++seed);
            CAPTURE(rows);
            CAPTURE(cols);
            CAPTURE(tokens);
            lowbit::matrix_f y(tokens, rows);
            lowbit::gemm_into(w, x, lowbit::act_int{6}, y, ws);
            CHECK(y == lowbit::gemm(w, x, lowbit::act_int{6}));
            lowbit::gemm_into(w, x, lowbit::act_fp32{}, y, ws);
            CHECK(y == lowbit::gemm(w, x, lowbit::act_fp32{}));
            lowbit::gemm_into(w, x, lowbit::act_fp32{}, y, ws, kernel_isa::scalar);
            CHECK(y == lowbit::gemm(w, x, lowbit::act_fp32{}, kernel_isa::scalar));
        }
    const auto w = lowbit::pack<F>(random_codes<F>(8, 40, 2), lowbit::vector_f::Constant(8, 0.03f));
    const lowbit::matrix_f x = random_x(2, 40, 9);
    lowbit::matrix_f wrong(2, 9), wrong_tokens(3, 8);
    CHECK_THROWS_AS(lowbit::gemm_into(w, x, lowbit::act_int{8}, wrong, ws), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemm_into(w, x, lowbit::act_fp32{}, wrong, ws), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemm_into(w, x, lowbit::act_fp32{}, wrong_tokens, ws), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemm_into(w, x, lowbit::act_int{8}, wrong_tokens, ws), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemm_into(w, random_x(2, 41, 9), lowbit::act_int{8}, wrong, ws), lowbit::shape_error);
}

TEST_CASE_TEMPLATE("gemv_into (stack buffers, one token) equals gemm bit for bit on every ISA path", F, lowbit::ternary2,
                   lowbit::ternary_base3, lowbit::binary1, lowbit::int2, lowbit::int4) {
    // the stories260K shapes, row tails (not a multiple of 4), rows beyond one stack chunk
    // (detail::gemv_stack_rows) and a row wider than detail::gemv_stack_cols (the workspace fallback)
    const std::pair<Eigen::Index, Eigen::Index> shapes[] = {{64, 64}, {172, 64}, {64, 172}, {7, 300}, {1030, 64}, {6, 4500}};
    std::uint64_t seed = 11;
    for (auto [rows, cols] : shapes)
        for (bool offset : {false, true}) {
            const lowbit::vector_f mu = offset ? lowbit::vector_f::Constant(rows, 0.01f) : lowbit::vector_f();
            const auto w = lowbit::pack<F>(random_codes<F>(rows, cols, seed), lowbit::vector_f::Constant(rows, 0.03f), mu);
            const lowbit::matrix_f x = random_x(1, cols, ++seed);
            const lowbit::vector_f xv = x.row(0).transpose();
            for (kernel_isa isa : all_isas) {
                if (!lowbit::isa_available(isa)) continue;
                CAPTURE(rows);
                CAPTURE(cols);
                CAPTURE(offset);
                CAPTURE(lowbit::isa_name(isa));
                lowbit::vector_f y(rows);
                for (int bits : {8, 6, 2}) {
                    lowbit::gemv_into(w, xv, lowbit::act_int{bits}, y, isa);
                    CHECK(y.transpose() == lowbit::gemm(w, x, lowbit::act_int{bits}, isa));
                }
                lowbit::gemv_into(w, xv, lowbit::act_fp32{}, y, isa);
                CHECK(y.transpose() == lowbit::gemm(w, x, lowbit::act_fp32{}, isa));
                lowbit::gemv_into(lowbit::interleave(w), xv, lowbit::act_int{8}, y, isa);
                CHECK(y.transpose() == lowbit::gemm(w, x, lowbit::act_int{8}, isa));
            }
        }
    const auto w = lowbit::pack<F>(random_codes<F>(8, 40, 2), lowbit::vector_f::Constant(8, 0.03f));
    lowbit::vector_f x = random_x(1, 40, 9).row(0).transpose(), y(8), wrong(9);
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_int{8}, wrong), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_fp32{}, wrong), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, lowbit::vector_f(random_x(1, 41, 9).row(0).transpose()), lowbit::act_int{8}, y),
                    lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_int{9}, y), lowbit::invalid_argument);
    x(3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_int{8}, y), lowbit::numeric_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_fp32{}, y), lowbit::numeric_error);
    x(3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(lowbit::gemv_into(w, x, lowbit::act_fp32{}, y), lowbit::numeric_error);
}

// ---------------------------------------------------------------------------------------------
// Grouped int4 (per-group scale and offset)
// ---------------------------------------------------------------------------------------------

namespace {
// fp16-exact scales / offsets [rows x groups] with varied magnitudes and signs.
lowbit::matrix_f fp16_params(Eigen::Index rows, Eigen::Index groups, float base, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    lowbit::matrix_f m(rows, groups);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(Eigen::half(base * (1.5f + u(rng))));
    return m;
}
} // namespace

TEST_CASE("grouped int4: per-group integer sums bit-exact on every ISA path (int64 brute force)") {
    for (Eigen::Index gc : {128, 256})
        for (Eigen::Index cols : {128, 300, 1287, 4544})
            for (Eigen::Index rows : {1, 5, 17})
                for (bool extreme : {false, true}) {
                    const Eigen::Index tokens = rows == 5 ? 3 : 1;
                    CAPTURE(gc);
                    CAPTURE(cols);
                    CAPTURE(rows);
                    CAPTURE(extreme);
                    const lowbit::matrix_i8 c = random_codes<lowbit::int4>(rows, cols, static_cast<std::uint64_t>(rows * 13 + cols), extreme);
                    const Eigen::Index ng = (cols + gc - 1) / gc;
                    const auto w = lowbit::pack_grouped_int4(c, gc, fp16_params(rows, ng, 0.01f, 1), fp16_params(rows, ng, 0.003f, 2));
                    CHECK(w.groups() == ng);
                    lowbit::matrix_f x = random_x(tokens, cols, static_cast<std::uint64_t>(cols + 7));
                    if (extreme)
                        for (Eigen::Index j = 0; j < cols; ++j) x(0, j) = (j % 3 == 0) ? -1.0f : 1.0f;
                    const auto a = lowbit::quantize_activations(x, 8);
                    std::vector<std::int32_t> gq(static_cast<std::size_t>(tokens * ng), 0);
                    std::vector<std::int64_t> want(static_cast<std::size_t>(tokens * rows * ng), 0);
                    for (Eigen::Index k = 0; k < tokens; ++k)
                        for (Eigen::Index j = 0; j < cols; ++j) {
                            gq[static_cast<std::size_t>(k * ng + j / gc)] += a.q(k, j);
                            for (Eigen::Index i = 0; i < rows; ++i)
                                want[static_cast<std::size_t>((k * rows + i) * ng + j / gc)] += std::int64_t(c(i, j)) * a.q(k, j);
                        }
                    for (kernel_isa isa : all_isas) {
                        if (!lowbit::isa_available(isa)) continue;
                        CAPTURE(lowbit::isa_name(isa));
                        std::vector<std::int32_t> got(want.size(), -12345);
                        lowbit::dot_groups(w, a, gq, 0, rows, got.data(), isa);
                        bool same = true;
                        for (std::size_t t = 0; t < got.size(); ++t) same = same && std::int64_t(got[t]) == want[t];
                        CHECK(same);
                        if (rows >= 3) { // a sub-range writes only its rows
                            std::vector<std::int32_t> part(static_cast<std::size_t>(tokens * (rows - 2) * ng));
                            lowbit::dot_groups(w, a, gq, 1, rows - 1, part.data(), isa);
                            bool same_part = true;
                            for (Eigen::Index k = 0; k < tokens; ++k)
                                for (Eigen::Index i = 1; i < rows - 1; ++i)
                                    for (Eigen::Index g = 0; g < ng; ++g)
                                        same_part = same_part &&
                                                    std::int64_t(part[static_cast<std::size_t>((k * (rows - 2) + i - 1) * ng + g)]) ==
                                                        want[static_cast<std::size_t>((k * rows + i) * ng + g)];
                            CHECK(same_part);
                        }
                    }
                }
}

TEST_CASE("grouped int4: gemm/gemv within the stated bounds of a double reference, identical on every path") {
    // 1408 = 11 groups of 128 (the last block's high nibble half holds no column), 5.5 groups of 256;
    // 3 tokens run the per-token paths, 40 the batched (decoded-rows) path of every non-scalar ISA
    const Eigen::Index rows = 9, cols = 1408, np = 1536;
    for (Eigen::Index tokens : {3, 40})
        for (Eigen::Index gc : {128, 256}) {
            CAPTURE(tokens);
            CAPTURE(gc);
            const lowbit::matrix_i8 c = random_codes<lowbit::int4>(rows, cols, 21);
            const Eigen::Index ng = (cols + gc - 1) / gc;
            const lowbit::matrix_f al = fp16_params(rows, ng, 0.01f, 3), mu = fp16_params(rows, ng, -0.004f, 4);
            const auto w = lowbit::pack_grouped_int4(c, gc, al, mu);
            const lowbit::matrix_f x = random_x(tokens, cols, 22);
            const auto a = lowbit::quantize_activations(x, 8);
            const lowbit::matrix_f y_ref_path = lowbit::gemm(w, x, lowbit::act_int{8}, kernel_isa::scalar);
            for (kernel_isa isa : all_isas) {
                if (!lowbit::isa_available(isa)) continue;
                CAPTURE(lowbit::isa_name(isa));
                const lowbit::matrix_f y = lowbit::gemm(w, x, lowbit::act_int{8}, isa);
                const lowbit::matrix_f yf = lowbit::gemm(w, x, lowbit::act_fp32{}, isa);
                CHECK(y == y_ref_path);
                for (Eigen::Index k = 0; k < tokens; ++k) {
                    CHECK(lowbit::gemv(w, x.row(k).transpose(), lowbit::act_int{8}, isa) == y.row(k).transpose());
                    if (tokens < 4) { // one token = the per-token path of gemm, bit for bit
                        CHECK(lowbit::gemv(w, x.row(k).transpose(), lowbit::act_fp32{}, isa) == yf.row(k).transpose());
                        lowbit::vector_f yv = lowbit::vector_f::Constant(rows, -7.0f);
                        lowbit::gemv_into(w, x.row(k).transpose(), lowbit::act_fp32{}, yv, isa);
                        CHECK(yv == yf.row(k).transpose());
                    }
                    for (Eigen::Index i = 0; i < rows; ++i) {
                        long double ref = 0, reff = 0, mag = 0, magf = 0, magx = 0;
                        for (Eigen::Index g = 0; g < ng; ++g) {
                            long double d = 0, sx = 0, sax = 0, tx = 0, atx = 0;
                            for (Eigen::Index j = g * gc; j < std::min(cols, (g + 1) * gc); ++j) {
                                d += static_cast<long double>(c(i, j)) * a.q(k, j);
                                sx += x(k, j);
                                sax += std::fabs(x(k, j));
                                tx += static_cast<long double>(c(i, j)) * x(k, j);
                                atx += std::fabs(static_cast<long double>(c(i, j)) * x(k, j));
                            }
                            const long double term = static_cast<long double>(al(i, g)) * a.scale(k) * d;
                            ref += term + static_cast<long double>(mu(i, g)) * sx;
                            reff += static_cast<long double>(al(i, g)) * tx + static_cast<long double>(mu(i, g)) * sx;
                            mag += std::fabs(term) + std::fabs(static_cast<long double>(mu(i, g))) * sax;
                            magf += std::fabs(static_cast<long double>(al(i, g))) * atx;
                            magx += std::fabs(static_cast<long double>(mu(i, g))) * sax;
                        }
                        const double bound = u32 * std::fabs(double(ref)) + (ng + 128) * std::ldexp(1.0, -52) * double(mag) + 1e-30;
                        CHECK(std::fabs(double(y(k, i)) - double(ref)) <= bound);
                        // gemm_into(grouped, act_fp32): (n + 2·groups + 8)·u·Σ_g(|α|Σ|t x| + |μ|Σ|x|) + u·|exact|
                        const double boundf = double(np + 2 * ng + 8) * u32 * double(magf + magx) + u32 * std::fabs(double(reff)) + 1e-30;
                        CHECK(std::fabs(double(yf(k, i)) - double(reff)) <= boundf);
                    }
                }
            }
        }
}

TEST_CASE("grouped int4: gemv_into on rows wider than its stack buffers equals gemm's per-token path") {
    const Eigen::Index rows = 3, cols = 4400; // padded 4608 > detail::gemv_stack_cols: the gemm_into route
    const lowbit::matrix_i8 c = random_codes<lowbit::int4>(rows, cols, 31);
    const auto w = lowbit::pack_grouped_int4(c, 128, fp16_params(rows, 35, 0.01f, 5), fp16_params(rows, 35, 0.002f, 6));
    REQUIRE(w.codes().padded_cols() > lowbit::detail::gemv_stack_cols);
    const lowbit::matrix_f x = random_x(1, cols, 32);
    for (kernel_isa isa : all_isas) {
        if (!lowbit::isa_available(isa)) continue;
        CAPTURE(lowbit::isa_name(isa));
        lowbit::vector_f y(rows);
        lowbit::gemv_into(w, x.row(0).transpose(), lowbit::act_fp32{}, y, isa);
        CHECK(y == lowbit::gemm(w, x, lowbit::act_fp32{}, isa).row(0).transpose());
    }
}

TEST_CASE("grouped int4: bad input") {
    const lowbit::matrix_i8 c = random_codes<lowbit::int4>(3, 256, 1);
    const auto w = lowbit::pack_grouped_int4(c, 128, fp16_params(3, 2, 0.01f, 1), fp16_params(3, 2, 0.01f, 2));
    CHECK_THROWS_AS((void)lowbit::gemm(w, lowbit::matrix_f::Ones(2, 255)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, lowbit::matrix_f::Ones(2, 255), lowbit::act_fp32{}), lowbit::shape_error);
    lowbit::matrix_f nan = lowbit::matrix_f::Ones(1, 256);
    nan(0, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::gemm(w, nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, nan, lowbit::act_fp32{}), lowbit::numeric_error);
    lowbit::vector_f yv(3), y_short(2);
    CHECK_THROWS_AS(lowbit::gemv_into(w, nan.row(0).transpose(), lowbit::act_fp32{}, yv), lowbit::numeric_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, lowbit::vector_f::Ones(256), lowbit::act_fp32{}, y_short), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::gemv_into(w, lowbit::vector_f::Ones(255), lowbit::act_fp32{}, yv), lowbit::shape_error);
    lowbit::gemm_workspace ws;
    lowbit::matrix_f y_wrong(2, 4);
    CHECK_THROWS_AS(lowbit::gemm_into(w, lowbit::matrix_f::Ones(2, 256), lowbit::act_fp32{}, y_wrong, ws), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gemm(w, lowbit::matrix_f::Ones(1, 256), lowbit::act_int{9}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::gemm(w, lowbit::matrix_f::Ones(1, 256), lowbit::act_int{1}), lowbit::invalid_argument);
    const auto a = lowbit::quantize_activations(lowbit::matrix_f::Ones(1, 256));
    std::vector<std::int32_t> gq(2, 0), out(6);
    CHECK_THROWS_AS(lowbit::dot_groups(w, a, gq, 0, 4, out.data()), lowbit::shape_error);
    std::vector<std::int32_t> short_gq(1, 0);
    CHECK_THROWS_AS(lowbit::dot_groups(w, a, short_gq, 0, 3, out.data()), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::dot_groups(w, a, gq, 0, 3, nullptr), lowbit::invalid_argument);
}
