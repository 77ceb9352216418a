// Tests for lowbit/quantized_linear.hpp. Oracles: the dense double-precision product x·Wᵀ of the
// dequantized weights (rotation folded in double), and the exact invariance (xQ)(WQ)ᵀ = xWᵀ.
#include <lowbit/hadamard.hpp>
#include <lowbit/quantized_linear.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <random>

namespace {
using lowbit_test::gaussian;
lowbit::matrix_i8 ternary_codes(Eigen::Index r, Eigen::Index c, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    lowbit::matrix_i8 t(r, c);
    for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<std::int8_t>(static_cast<int>(rng() % 3) - 1);
    return t;
}
} // namespace

TEST_CASE("dense weights with a Hadamard rotation keep y = x·Wᵀ (computational invariance)") {
    for (Eigen::Index n : {64, 172, 96}) {
        const lowbit::matrix_f w = gaussian(24, n, 1), x = gaussian(5, n, 2);
        lowbit::hadamard_options ho;
        ho.randomized = true;
        ho.seed = 9;
        const lowbit::hadamard_transform q(n, ho);
        lowbit::matrix_f wq = w;
        q.apply_rows(wq);
        const lowbit::quantized_linear<lowbit::dense_weights, lowbit::act_fp32, lowbit::hadamard_transform> op(
            lowbit::dense_weights{wq}, {}, q);
        lowbit::matrix_f y;
        op.apply(x, y);
        const lowbit::matrix_d ref = x.cast<double>() * w.cast<double>().transpose();
        CHECK((y.cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-4 * (1.0 + ref.cwiseAbs().maxCoeff()));
        CHECK(op.storage_bits() == doctest::Approx(32.0 * 24 * static_cast<double>(n)));
    }
}

TEST_CASE("packed asymmetric ternary layer equals the dense oracle, fp32 and int8 activations") {
    const Eigen::Index out = 40, in = 300; // in is not a multiple of the 256/320 blocks
    const lowbit::matrix_i8 t = ternary_codes(out, in, 3);
    const lowbit::vector_f alpha = gaussian(out, 1, 4).cwiseAbs().col(0), mu = gaussian(out, 1, 5).col(0) * 0.1f;
    const auto pw = lowbit::pack<lowbit::ternary_base3>(t, alpha, mu);
    const lowbit::matrix_f x = gaussian(3, in, 6);
    lowbit::matrix_d wd(out, in);
    for (Eigen::Index i = 0; i < out; ++i)
        for (Eigen::Index j = 0; j < in; ++j) wd(i, j) = static_cast<double>(alpha(i)) * t(i, j) + mu(i);
    const lowbit::matrix_d ref = x.cast<double>() * wd.transpose();

    const lowbit::quantized_linear<lowbit::packed_matrix<lowbit::ternary_base3>> fp(pw);
    lowbit::matrix_f y;
    fp.apply(x, y);
    CHECK((y.cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-3 * (1.0 + ref.cwiseAbs().maxCoeff()));

    // int8 activations: compare with the dense oracle applied to the int8-rounded activations.
    const lowbit::quantized_linear<lowbit::packed_matrix<lowbit::ternary_base3>, lowbit::act_int> i8(pw, {8});
    i8.apply(x, y);
    const auto qa = lowbit::quantize_activations(x, 8);
    for (Eigen::Index k = 0; k < x.rows(); ++k)
        for (Eigen::Index i = 0; i < out; ++i) {
            double d = 0, sx = 0;
            for (Eigen::Index j = 0; j < in; ++j) {
                d += static_cast<double>(t(i, j)) * qa.q(k, j);
                sx += x(k, j);
            }
            const double want = static_cast<double>(alpha(i)) * qa.scale(k) * d + mu(i) * sx;
            CHECK(std::abs(y(k, i) - want) <= 1e-4 * (1.0 + std::abs(want)));
        }
}

TEST_CASE("grouped int4 layer (per-128-column scale and offset) equals the dense oracle, fp32 and int8 activations") {
    const Eigen::Index out = 12, in = 300, gc = 128, ng = 3;
    std::mt19937_64 rng(7);
    lowbit::matrix_i8 t(out, in);
    for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<std::int8_t>(static_cast<int>(rng() % 16) - 8);
    lowbit::matrix_f al(out, ng), mu(out, ng);
    for (Eigen::Index i = 0; i < out; ++i)
        for (Eigen::Index g = 0; g < ng; ++g) {
            al(i, g) = 0.0625f * static_cast<float>(1 + (i + g) % 5);
            mu(i, g) = -0.125f * static_cast<float>((i * 3 + g) % 4);
        }
    const auto gw = lowbit::pack_grouped_int4(t, gc, al, mu);
    const lowbit::matrix_f x = gaussian(3, in, 8);
    lowbit::matrix_d wd(out, in);
    for (Eigen::Index i = 0; i < out; ++i)
        for (Eigen::Index j = 0; j < in; ++j) wd(i, j) = static_cast<double>(al(i, j / gc)) * t(i, j) + mu(i, j / gc);
    const lowbit::matrix_d ref = x.cast<double>() * wd.transpose();
    const lowbit::quantized_linear<lowbit::grouped_int4_matrix> fp(gw);
    lowbit::matrix_f y;
    fp.apply(x, y);
    CHECK((y.cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-4 * (1.0 + ref.cwiseAbs().maxCoeff()));
    CHECK(fp.storage_bits() == doctest::Approx(8.0 * out * 256 + 32.0 * out * ng));
    const lowbit::quantized_linear<lowbit::grouped_int4_matrix, lowbit::act_int> i8(gw, {8});
    i8.apply(x, y);
    const auto qa = lowbit::quantize_activations(x, 8);
    for (Eigen::Index k = 0; k < x.rows(); ++k)
        for (Eigen::Index i = 0; i < out; ++i) {
            double want = 0;
            for (Eigen::Index g = 0; g < ng; ++g) {
                double d = 0, sx = 0;
                for (Eigen::Index j = g * gc; j < std::min(in, (g + 1) * gc); ++j) {
                    d += static_cast<double>(t(i, j)) * qa.q(k, j);
                    sx += x(k, j);
                }
                want += static_cast<double>(al(i, g)) * qa.scale(k) * d + mu(i, g) * sx;
            }
            CHECK(std::abs(y(k, i) - want) <= 1e-5 * (1.0 + std::abs(want)));
        }
}

TEST_CASE("low-rank correction adds (x·Bᵀ)·Aᵀ") {
    const lowbit::matrix_f w = gaussian(16, 32, 7), x = gaussian(4, 32, 8);
    lowbit::low_rank lr;
    lr.a = gaussian(16, 2, 9);
    lr.b = gaussian(2, 32, 10);
    const lowbit::quantized_linear<lowbit::dense_weights> op(lowbit::dense_weights{w}, {}, {}, lr);
    lowbit::matrix_f y;
    op.apply(x, y);
    const lowbit::matrix_d ref = x.cast<double>() * (w.cast<double>() + lr.a.cast<double>() * lr.b.cast<double>()).transpose();
    CHECK((y.cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-4 * (1.0 + ref.cwiseAbs().maxCoeff()));
    CHECK(op.storage_bits() == doctest::Approx(32.0 * (16 * 32 + 16 * 2 + 2 * 32)));
}

TEST_CASE("bad shapes are refused with lowbit errors") {
    const lowbit::matrix_f w = gaussian(8, 64, 1);
    CHECK_THROWS_AS((lowbit::quantized_linear<lowbit::dense_weights, lowbit::act_fp32, lowbit::hadamard_transform>(
                        lowbit::dense_weights{w}, {}, lowbit::hadamard_transform(32))),
                    lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::quantized_linear<lowbit::dense_weights>(lowbit::dense_weights{lowbit::matrix_f(0, 4)}),
                    lowbit::shape_error);
    lowbit::low_rank bad;
    bad.a = gaussian(8, 2, 2);
    bad.b = gaussian(3, 64, 3);
    CHECK_THROWS_AS(lowbit::quantized_linear<lowbit::dense_weights>(lowbit::dense_weights{w}, {}, {}, bad),
                    lowbit::shape_error);
    const lowbit::quantized_linear<lowbit::dense_weights> op(lowbit::dense_weights{w});
    lowbit::matrix_f y;
    CHECK_THROWS_AS(op.apply(gaussian(2, 63, 4), y), lowbit::shape_error);
    lowbit::matrix_f nan = gaussian(2, 64, 5);
    nan(1, 3) = std::numeric_limits<float>::quiet_NaN();
    const lowbit::quantized_linear<lowbit::dense_weights, lowbit::act_int> q8(lowbit::dense_weights{w}, {8});
    CHECK_THROWS_AS(q8.apply(nan, y), lowbit::numeric_error);
}
