// Tests for lowbit/mxfp.hpp. Oracles: the OCP MX v1.0 tables worked by hand (E2M1 values, E8M0
// codes, format maxima and subnormals, scale cases); a brute-force nearest-value search over every
// finite code (ties resolved by code parity / magnitude) for element rounding; an independent
// double-precision block quantizer (frexp exponent + brute-force nearest) for whole tensors; and
// the stories260K README rule scale = 2^(floor(log2 amax) − 2) on the real checkpoint.
#include <lowbit/io/llama2c.hpp>
#include <lowbit/mxfp.hpp>

#include <doctest/doctest.h>

#include "models.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

using lowbit::element_rounding;

template <class F>
std::vector<int> finite_codes() {
    std::vector<int> out;
    for (int c = 0; c < (1 << F::bits); ++c)
        if (F::is_finite_code(static_cast<std::uint8_t>(c))) out.push_back(c);
    return out;
}

// Brute force: the code whose value is nearest to v (in double), among all finite codes; magnitude
// saturates because the largest code is the nearest for anything beyond it. Ties: even code for
// nearest_even (the codes of two neighbouring magnitudes differ by one, so "even code" = even
// mantissa), the smaller magnitude for nearest_toward_zero. Sign: the sign of v.
template <class F>
int brute_nearest(double v, element_rounding r) {
    int best = -1;
    double best_err = std::numeric_limits<double>::infinity();
    for (int c : finite_codes<F>()) {
        const double x = F::decode(static_cast<std::uint8_t>(c));
        if (std::signbit(x) != std::signbit(v)) continue;
        const double err = std::fabs(x - v);
        if (err < best_err) {
            best = c;
            best_err = err;
        } else if (err == best_err) {
            const bool take = r == element_rounding::nearest_even ? (c % 2 == 0 && best % 2 != 0)
                                                                  : std::fabs(x) < std::fabs(F::decode(static_cast<std::uint8_t>(best)));
            if (take) best = c;
        }
    }
    return best;
}

template <class F>
void check_format_exhaustive(element_rounding r) {
    // Every finite code survives decode → encode.
    for (int c : finite_codes<F>()) {
        const float v = F::decode(static_cast<std::uint8_t>(c));
        CHECK(F::encode(v, r) == c);
    }
    // Midpoints between neighbours, points a quarter step off, and random values: brute force.
    std::vector<double> mags;
    for (int c : finite_codes<F>()) {
        const double x = F::decode(static_cast<std::uint8_t>(c));
        if (!std::signbit(x)) mags.push_back(x);
    }
    std::sort(mags.begin(), mags.end());
    std::vector<double> probes;
    for (std::size_t i = 0; i + 1 < mags.size(); ++i) {
        const double a = mags[i], b = mags[i + 1];
        for (double t : {0.25, 0.5, 0.75}) probes.push_back(a + t * (b - a));
    }
    const double mx = mags.back();
    probes.push_back(static_cast<float>(mx * 1.01));
    probes.push_back(mx * 4);
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> u(0.0, mx * 1.2);
    for (int k = 0; k < 500; ++k) probes.push_back(static_cast<float>(u(rng)));
    for (double p : probes) {
        for (double s : {1.0, -1.0}) {
            const float v = static_cast<float>(s * p);
            REQUIRE(static_cast<double>(v) == s * p); // probes are exactly representable
            CHECK_MESSAGE(F::encode(v, r) == brute_nearest<F>(v, r), "v = " << v);
        }
    }
}

// Independent MX reference for one row: E from frexp in double, elements by brute force.
template <class F>
std::vector<double> mx_reference_row(const float* w, int n, int emax) {
    std::vector<double> out(static_cast<std::size_t>(n));
    for (int b = 0; b < n; b += 32) {
        const int e1 = std::min(n, b + 32);
        double amax = 0;
        for (int j = b; j < e1; ++j) amax = std::max(amax, std::fabs(static_cast<double>(w[j])));
        int E = -127;
        if (amax > 0) {
            int ex;
            std::frexp(amax, &ex); // amax = f·2^ex, f ∈ [0.5, 1) → floor(log2 amax) = ex − 1
            E = std::max(-127, ex - 1 - emax);
        }
        const double X = std::ldexp(1.0, E);
        for (int j = b; j < e1; ++j) {
            const int c = brute_nearest<F>(static_cast<double>(w[j]) / X, element_rounding::nearest_even);
            out[static_cast<std::size_t>(j)] = F::decode(static_cast<std::uint8_t>(c)) * X;
        }
    }
    return out;
}

lowbit::matrix_f one_block(std::initializer_list<float> head, int n = 32) {
    lowbit::matrix_f w = lowbit::matrix_f::Zero(1, n);
    int j = 0;
    for (float v : head) w(0, j++) = v;
    return w;
}

} // namespace

TEST_CASE("E2M1 value table (OCP MX v1.0)") {
    const float want[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
    for (int c = 0; c < 16; ++c) {
        CHECK(lowbit::fp4_e2m1::decode(static_cast<std::uint8_t>(c)) == want[c]);
        CHECK(std::signbit(lowbit::fp4_e2m1::decode(static_cast<std::uint8_t>(c))) == (c >= 8));
    }
    CHECK(lowbit::fp4_e2m1::emax == 2);
    CHECK(lowbit::fp4_e2m1::max_value() == 6.0f);
}

TEST_CASE("E2M1 rounding: ties to even, ties toward zero, saturation") {
    using F = lowbit::fp4_e2m1;
    // value -> (RNE code, toward-zero code), worked by hand from the table above.
    struct row { float v; int rne; int rtz; };
    const row table[] = {
        {0.25f, 0, 0},  // tie 0 | 0.5: even code 0
        {0.75f, 2, 1},  // tie 0.5 (code 1) | 1.0 (code 2)
        {1.25f, 2, 2},  // tie 1.0 (2) | 1.5 (3)
        {1.75f, 4, 3},  // tie 1.5 (3) | 2.0 (4)
        {2.5f, 4, 4},   // tie 2 (4) | 3 (5)
        {3.5f, 6, 5},   // tie 3 (5) | 4 (6)
        {5.0f, 6, 6},   // tie 4 (6) | 6 (7)
        {5.1f, 7, 7},   {0.3f, 1, 1}, {2.4f, 4, 4},
        {7.0f, 7, 7},   {100.0f, 7, 7}, {3.0e38f, 7, 7}, // saturation to 6
        {-0.75f, 8 + 2, 8 + 1}, {-7.0f, 15, 15}, {-0.1f, 8, 8}, {0.0f, 0, 0},
    };
    for (const auto& t : table) {
        CHECK_MESSAGE(F::encode(t.v) == t.rne, "v = " << t.v);
        CHECK_MESSAGE(F::encode(t.v, element_rounding::nearest_toward_zero) == t.rtz, "v = " << t.v);
    }
}

TEST_CASE("E8M0 scale encodings") {
    CHECK(lowbit::e8m0_decode(127) == 1.0f);
    CHECK(lowbit::e8m0_decode(128) == 2.0f);
    CHECK(lowbit::e8m0_decode(126) == 0.5f);
    CHECK(lowbit::e8m0_decode(0) == std::ldexp(1.0f, -127));
    CHECK(lowbit::e8m0_decode(254) == std::ldexp(1.0f, 127));
    CHECK(std::isnan(lowbit::e8m0_decode(0xFF)));
    CHECK(lowbit::e8m0_encode(0) == 127);
    CHECK(lowbit::e8m0_encode(-127) == 0);
    CHECK(lowbit::e8m0_encode(-300) == 0);
    CHECK(lowbit::e8m0_encode(127) == 254);
    CHECK(lowbit::e8m0_encode(500) == 254); // never the NaN code
}

TEST_CASE("FP6/FP8 maxima, subnormals and specials") {
    using lowbit::fp6_e2m3, lowbit::fp6_e3m2, lowbit::fp8_e4m3, lowbit::fp8_e5m2;
    // E2M3: bias 1, subnormal step 2^(1-1-3) = 0.125, min normal 1.0, max 1.875·4 = 7.5.
    CHECK(fp6_e2m3::decode(1) == 0.125f);
    CHECK(fp6_e2m3::decode(7) == 0.875f);
    CHECK(fp6_e2m3::decode(8) == 1.0f);
    CHECK(fp6_e2m3::max_value() == 7.5f);
    CHECK(fp6_e2m3::decode(0x20 | 1) == -0.125f);
    CHECK(fp6_e2m3::emax == 2);
    // E3M2: bias 3, subnormal step 2^(1-3-2) = 0.0625, min normal 0.25, max 1.75·16 = 28.
    CHECK(fp6_e3m2::decode(1) == 0.0625f);
    CHECK(fp6_e3m2::decode(3) == 0.1875f);
    CHECK(fp6_e3m2::decode(4) == 0.25f);
    CHECK(fp6_e3m2::max_value() == 28.0f);
    CHECK(fp6_e3m2::emax == 4);
    CHECK(fp6_e3m2::encode(0.03125f) == 0);       // tie 0 | 0.0625 → even code 0
    CHECK(fp6_e3m2::encode(0.09375f) == 2);       // tie 0.0625 (1) | 0.125 (2) → 2
    CHECK(fp6_e3m2::encode(29.0f) == 0x1F);       // saturates to 28
    // E4M3: max 448 (S.1111.110), S.1111.111 NaN, min subnormal 2^-9.
    CHECK(fp8_e4m3::max_value() == 448.0f);
    CHECK(fp8_e4m3::decode(0x7E) == 448.0f);
    CHECK(std::isnan(fp8_e4m3::decode(0x7F)));
    CHECK(std::isnan(fp8_e4m3::decode(0xFF)));
    CHECK(fp8_e4m3::decode(0x78) == 256.0f);      // 1.000·2^8 (E4M3 has 1111.xxx normals)
    CHECK(fp8_e4m3::decode(1) == std::ldexp(1.0f, -9));
    CHECK(fp8_e4m3::emax == 8);
    CHECK(fp8_e4m3::encode(460.0f) == 0x7E);
    CHECK(fp8_e4m3::encode(1e6f) == 0x7E);        // never NaN
    // E5M2: max 57344, 0x7C Inf, 0x7D..0x7F NaN, min subnormal 2^-16.
    CHECK(fp8_e5m2::max_value() == 57344.0f);
    CHECK(std::isinf(fp8_e5m2::decode(0x7C)));
    CHECK(std::isnan(fp8_e5m2::decode(0x7D)));
    CHECK(fp8_e5m2::decode(1) == std::ldexp(1.0f, -16));
    CHECK(fp8_e5m2::emax == 15);
    CHECK(fp8_e5m2::encode(1e9f) == 0x7B);
    // MXINT8: k/64, symmetric saturation.
    CHECK(lowbit::int8_mx::decode(64) == 1.0f);
    CHECK(lowbit::int8_mx::decode(0x81) == -127.0f / 64);
    CHECK(lowbit::int8_mx::encode(5.0f) == 127);
    CHECK(lowbit::int8_mx::encode(-5.0f) == 0x81);
    CHECK(lowbit::int8_mx::encode(1.0f / 128) == 0);             // tie 0 | 1 → 0
    CHECK(lowbit::int8_mx::encode(3.0f / 128) == 2);             // tie 1 | 2 → 2
    CHECK(lowbit::int8_mx::encode(3.0f / 128, element_rounding::nearest_toward_zero) == 1);
}

TEST_CASE("every code round-trips and encode equals the brute-force nearest value") {
    for (auto r : {element_rounding::nearest_even, element_rounding::nearest_toward_zero}) {
        check_format_exhaustive<lowbit::fp4_e2m1>(r);
        check_format_exhaustive<lowbit::fp6_e2m3>(r);
        check_format_exhaustive<lowbit::fp6_e3m2>(r);
        check_format_exhaustive<lowbit::fp8_e4m3>(r);
        check_format_exhaustive<lowbit::fp8_e5m2>(r);
    }
    for (int c = 0; c < 256; ++c) {
        if (c == 0x80) continue; // −128 is decodable but never produced
        CHECK(lowbit::int8_mx::encode(lowbit::int8_mx::decode(static_cast<std::uint8_t>(c))) == c);
    }
}

TEST_CASE("MXFP4 scale rules on hand-worked blocks") {
    // amax → (E, dequantized amax) per rule. floor: E = floor(log2 amax) − 2.
    //  2.7: floor E=-1, 2.7/0.5=5.4 → 6 → 3.0 | ceil: 2.7/6=0.45 → E=-1 → 3.0 | even: 1.35·2 → 1.5·2 (half up at 1 bit) → E=-1
    //  5.5: E=0, 5.5 → 6 | ceil E=0 | even: 1.375·4 → 1.5·4 → E=0
    //  1.2: E=-2, 4.8 → 4 → 1.0 | ceil: 0.2 → E=-2 | even: 1.2 → 1.0 → E=-2
    //  6.0: E=0 → 6 | ceil E=0 | even: 1.5·4 → E=0
    //  7.0: floor E=0, 7 → clips to 6 | ceil: 7/6 → E=1, 3.5 → 4 (tie, even) → 8 | even: 1.75·4 → 2·4 → E=1 → 8
    struct row { float amax; int e_floor; float v_floor; int e_ceil; float v_ceil; int e_even; float v_even; };
    const row table[] = {
        {2.7f, -1, 3.0f, -1, 3.0f, -1, 3.0f},
        {5.5f, 0, 6.0f, 0, 6.0f, 0, 6.0f},
        {1.2f, -2, 1.0f, -2, 1.0f, -2, 1.0f},
        {6.0f, 0, 6.0f, 0, 6.0f, 0, 6.0f},
        {7.0f, 0, 6.0f, 1, 8.0f, 1, 8.0f},
    };
    for (const auto& t : table) {
        const auto w = one_block({t.amax, 0.4f * t.amax});
        const auto f = lowbit::quantize_mx<lowbit::mxfp4>(w);
        const auto c = lowbit::quantize_mx<lowbit::mx_format<lowbit::fp4_e2m1, lowbit::e8m0_ceil>>(w);
        const auto e = lowbit::quantize_mx<lowbit::mx_format<lowbit::fp4_e2m1, lowbit::e8m0_round_even>>(w);
        const auto g = lowbit::quantize_mx<lowbit::mx_format<lowbit::fp4_e2m1, lowbit::ggml_compatible>>(w);
        CHECK(f.scales(0, 0) == t.e_floor + 127);
        CHECK(f.dequantize()(0, 0) == t.v_floor);
        CHECK(c.scales(0, 0) == t.e_ceil + 127);
        CHECK(c.dequantize()(0, 0) == t.v_ceil);
        CHECK(e.scales(0, 0) == t.e_even + 127);
        CHECK(e.dequantize()(0, 0) == t.v_even);
        CHECK(g.scales(0, 0) == t.e_floor + 127);
    }
    // The zero block: E = −127 (code 0) and zero codes.
    const auto z = lowbit::quantize_mx<lowbit::mxfp4>(lowbit::matrix_f::Zero(2, 64));
    CHECK((z.scales.array() == 0).all());
    CHECK((z.dequantize().array() == 0).all());
    // ggml ties toward zero: block amax 4 (E=0) with an element 5 → 4 (RNE gives 4 too, code 6 even);
    // element 1.75 → 1.5 under ggml, 2.0 under OCP.
    const auto w = one_block({4.0f, 1.75f});
    CHECK(lowbit::quantize_mx<lowbit::mxfp4>(w).dequantize()(0, 1) == 2.0f);
    CHECK(lowbit::quantize_mx<lowbit::mx_format<lowbit::fp4_e2m1, lowbit::ggml_compatible>>(w).dequantize()(0, 1) == 1.5f);
}

TEST_CASE("quantize_mx equals an independent double-precision reference, every MX format") {
    std::mt19937_64 rng(17);
    std::student_t_distribution<float> heavy(3.0f);
    lowbit::matrix_f w(6, 96);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = heavy(rng) * std::ldexp(1.0f, static_cast<int>(i % 7) - 3);
    w.row(5).segment(32, 32).setZero();
    auto run = [&](auto tag, int emax) {
        using Fmt = decltype(tag);
        using F = typename Fmt::element;
        const auto q = lowbit::quantize_mx<Fmt>(w);
        const auto d = q.dequantize();
        for (Eigen::Index i = 0; i < w.rows(); ++i) {
            const auto ref = mx_reference_row<F>(w.row(i).data(), static_cast<int>(w.cols()), emax);
            for (Eigen::Index j = 0; j < w.cols(); ++j)
                CHECK(static_cast<double>(d(i, j)) == ref[static_cast<std::size_t>(j)]);
        }
    };
    run(lowbit::mxfp4{}, 2);
    run(lowbit::mxfp6_e2m3{}, 2);
    run(lowbit::mxfp6_e3m2{}, 4);
    run(lowbit::mxfp8_e4m3{}, 8);
    run(lowbit::mxfp8_e5m2{}, 15);
    // MXINT8: emax 0, k = round(64·v/X) clamped to ±127, checked by formula.
    const auto q = lowbit::quantize_mx<lowbit::mxint8>(w).dequantize();
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index b = 0; b < 3; ++b) {
            const double amax = w.row(i).segment(b * 32, 32).cwiseAbs().maxCoeff();
            const double X = amax > 0 ? std::ldexp(1.0, std::ilogb(amax)) : std::ldexp(1.0, -127);
            for (Eigen::Index j = b * 32; j < b * 32 + 32; ++j) {
                const double k = std::clamp(std::nearbyint(64.0 * w(i, j) / X), -127.0, 127.0);
                CHECK(static_cast<double>(q(i, j)) == k / 64.0 * X);
            }
        }
}

TEST_CASE("MX error bound: non-saturated elements are within half an element step of the scale") {
    std::mt19937_64 rng(3);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f w(8, 128);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    const auto q = lowbit::quantize_mx<lowbit::mx_format<lowbit::fp4_e2m1, lowbit::e8m0_ceil>>(w);
    const auto d = q.dequantize();
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double X = lowbit::e8m0_decode(q.scales(i, j / 32));
            // E2M1 step is at most 2 (between 4 and 6); ceil never saturates.
            CHECK(std::fabs(static_cast<double>(w(i, j)) - d(i, j)) <= X * 1.0 + 1e-12);
        }
}

TEST_CASE("tails, bad input") {
    lowbit::matrix_f w = lowbit::matrix_f::Constant(2, 33, 0.5f);
    CHECK_THROWS_AS((void)lowbit::quantize_mx<lowbit::mxfp4>(w), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_nvfp4(w), lowbit::shape_error);
    w(0, 32) = 3.0f;
    for (auto tail : {lowbit::tail_policy::smaller_last, lowbit::tail_policy::zero_pad}) {
        const auto q = lowbit::quantize_mx<lowbit::mxfp4>(w, tail);
        CHECK(q.scales.cols() == 2);
        CHECK(q.scales(0, 1) == 127 + 1 - 2); // last block holds the single 3.0: E = 1 − 2
        CHECK(q.dequantize()(0, 32) == 3.0f);
        CHECK(q.scales(0, 0) == 127 - 1 - 2);
        const auto n = lowbit::quantize_nvfp4(w, tail);
        CHECK(n.scales.cols() == 3);
    }
    CHECK_THROWS_AS((void)lowbit::quantize_mx<lowbit::mxfp4>(lowbit::matrix_f(0, 32)), lowbit::shape_error);
    lowbit::matrix_f bad = lowbit::matrix_f::Zero(1, 32);
    bad(0, 3) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_mx<lowbit::mxfp4>(bad), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::quantize_nvfp4(bad), lowbit::numeric_error);
    bad(0, 3) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::mx_fake_quantize<lowbit::mxfp4>(bad), lowbit::numeric_error);
    // A NaN scale code (never produced) dequantizes to NaN.
    auto q = lowbit::quantize_mx<lowbit::mxfp4>(lowbit::matrix_f::Ones(1, 32));
    q.scales(0, 0) = 0xFF;
    CHECK(std::isnan(q.dequantize()(0, 0)));
}

TEST_CASE("mx_group_quantizer models GroupQuantizer and matches quantize_mx") {
    using Q = lowbit::mx_group_quantizer<lowbit::mxfp4>;
    static_assert(lowbit::GroupQuantizer<Q>);
    static_assert(lowbit::GroupQuantizer<lowbit::mx_group_quantizer<lowbit::mxfp8_e4m3>>);
    std::mt19937_64 rng(9);
    std::normal_distribution<float> g(0.0f, 2.0f);
    lowbit::matrix_f w(5, 64);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = g(rng);
    const auto ref = lowbit::mx_fake_quantize<lowbit::mxfp4>(w);
    const Q q;
    for (Eigen::Index b = 0; b < 2; ++b) {
        const lowbit::matrix_f blk = w.middleCols(b * 32, 32);
        const auto p = q.fit(blk);
        lowbit::vector_f out(w.rows());
        for (Eigen::Index j = 0; j < 32; ++j) {
            const lowbit::vector_f col = blk.col(j);
            q.round_column(p, col, out);
            CHECK((out - ref.col(b * 32 + j)).cwiseAbs().maxCoeff() == 0.0f);
        }
    }
}

TEST_CASE("NVFP4: two-level scales worked by hand") {
    // amax = 6·448·g → g = 1 for a tensor whose amax is 2688.
    lowbit::matrix_f w = lowbit::matrix_f::Zero(1, 32);
    w(0, 0) = 2688.0f; // block 0: s = 448 → elements /448: 2688 → 6
    w(0, 1) = 448.0f;  //                              → 1
    w(0, 2) = 700.0f;  // 1.5625 → 1.5 → 672
    w(0, 16) = 3.0f;   // block 1: amax 3 → s = 0.5 (E4M3 exact), 3/0.5 = 6
    w(0, 17) = -0.6f;  // −1.2 → −1 → −0.5
    const auto q = lowbit::quantize_nvfp4(w);
    CHECK(q.tensor_scale == 1.0f);
    CHECK(lowbit::fp8_e4m3::decode(q.scales(0, 0)) == 448.0f);
    CHECK(lowbit::fp8_e4m3::decode(q.scales(0, 1)) == 0.5f);
    const auto d = q.dequantize();
    CHECK(d(0, 0) == 2688.0f);
    CHECK(d(0, 1) == 448.0f);
    CHECK(d(0, 2) == 672.0f);
    CHECK(d(0, 16) == 3.0f);
    CHECK(d(0, 17) == -0.5f);
    CHECK(d(0, 5) == 0.0f);
    // All-zero tensor: g = 1, zero codes.
    const auto z = lowbit::quantize_nvfp4(lowbit::matrix_f::Zero(2, 16));
    CHECK(z.tensor_scale == 1.0f);
    CHECK((z.dequantize().array() == 0).all());
    // Random data: error below half the largest E2M1 step (2) of each block's effective scale,
    // and the block scale never exceeds 448.
    std::mt19937_64 rng(1);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f r(4, 64);
    for (Eigen::Index i = 0; i < r.size(); ++i) r.data()[i] = g(rng);
    const auto qr = lowbit::quantize_nvfp4(r);
    const auto dr = qr.dequantize();
    for (Eigen::Index i = 0; i < r.rows(); ++i)
        for (Eigen::Index j = 0; j < r.cols(); ++j) {
            const double s = lowbit::fp8_e4m3::decode(qr.scales(i, j / 16)) * static_cast<double>(qr.tensor_scale);
            const double amax = r.row(i).segment((j / 16) * 16, 16).cwiseAbs().maxCoeff();
            CHECK(std::fabs(static_cast<double>(r(i, j)) - dr(i, j)) <= s * 1.0 + 0.07 * amax); // E4M3 rounding of s: ≤ 1/16 relative
        }
}

TEST_CASE("stories260K: MXFP4 (OCP floor) reproduces the README rule 2^(floor(log2 amax) - 2)") {
    const auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    std::size_t checked = 0;
    for (const auto& L : ck.layers) {
        for (const lowbit::matrix_f* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w3}) { // in = 64 (w2 has 172 = 5·32 + 12)
            const auto q = lowbit::quantize_mx<lowbit::mxfp4>(*m);
            const auto d = q.dequantize();
            for (Eigen::Index i = 0; i < m->rows(); ++i) {
                const auto ref = mx_reference_row<lowbit::fp4_e2m1>(m->row(i).data(), static_cast<int>(m->cols()), 2);
                for (Eigen::Index j = 0; j < m->cols(); ++j) {
                    REQUIRE(static_cast<double>(d(i, j)) == ref[static_cast<std::size_t>(j)]);
                    ++checked;
                }
            }
        }
        CHECK_THROWS_AS((void)lowbit::quantize_mx<lowbit::mxfp4>(L.w2), lowbit::shape_error);
        const auto q2 = lowbit::quantize_mx<lowbit::mxfp4>(L.w2, lowbit::tail_policy::smaller_last);
        CHECK(q2.scales.cols() == 6);
    }
    CHECK(checked > 100000);
}

TEST_CASE("decode table equals the bit-field formula; E8M0 bit construction equals 2^(code-127)") {
    auto check = [](auto f) {
        using F = decltype(f);
        for (int c = 0; c < (1 << F::bits); ++c) {
            const float a = F::decode(static_cast<std::uint8_t>(c)), b = F::decode_fields(static_cast<std::uint8_t>(c));
            CHECK(((a == b && std::signbit(a) == std::signbit(b)) || (std::isnan(a) && std::isnan(b))));
        }
        CHECK(F::max_value() == F::decode_fields(F::max_code));
    };
    check(lowbit::fp4_e2m1{});
    check(lowbit::fp6_e2m3{});
    check(lowbit::fp6_e3m2{});
    check(lowbit::fp8_e4m3{});
    check(lowbit::fp8_e5m2{});
    for (int c = 0; c < 255; ++c) CHECK(lowbit::e8m0_decode(static_cast<std::uint8_t>(c)) == std::ldexp(1.0f, c - 127));
}
