// Tests for lowbit/rwkv_proxy.hpp. Oracles: hand-worked values of both proxies on tiny inputs
// (worked in the comments), the zero of an equally spaced grid, and the paper's claim that a
// uniform-like matrix scores lower than a bell-shaped one.
#include <lowbit/rwkv_proxy.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>

TEST_CASE("RWKV proxy: hand-worked values") {
    // Values {3, 0, 1, 1}: sorted 0 1 1 3, gaps 1 0 2 → non-zero distinct {1, 2}, p = {1/3, 2/3}, n = 2.
    lowbit::matrix_f w(2, 2);
    w << 3, 0, 1, 1;
    const auto p = lowbit::rwkv_uniformity_proxy(w);
    CHECK(p.gaps == 2);
    // coarse = log 2 + (1/3) log(1/3) + (2/3) log(2/3) = 0.6931472 − 0.6365142 = 0.0566330
    CHECK(p.coarse == doctest::Approx(0.0566330).epsilon(1e-5));
    // d = ±1/6: mean d² = 1/36, mean d³ = 0, mean d⁴ = 1/1296 → 2/36 + 16/12/1296 = 0.0565844
    CHECK(p.fine == doctest::Approx(0.0565844).epsilon(1e-5));
}

TEST_CASE("RWKV proxy: an equally spaced grid scores zero and picks scalar quantization") {
    lowbit::matrix_f w(4, 16);
    for (int i = 0; i < 64; ++i) w(i / 16, i % 16) = static_cast<float>((i * 37) % 64) * 0.25f - 8.0f; // exact in float
    const auto p = lowbit::rwkv_uniformity_proxy(w);
    CHECK(p.gaps == 1);
    CHECK(p.coarse == 0.0);
    CHECK(p.fine == 0.0);
    CHECK(lowbit::choose_quantization_family(p, 1e-3, 1e-3) == lowbit::quantization_family::scalar);
    const lowbit::matrix_f c = lowbit::matrix_f::Constant(3, 3, 1.5f);
    CHECK(lowbit::rwkv_uniformity_proxy(c).gaps == 0);
}

TEST_CASE("RWKV proxy: uniform weights score lower than Gaussian weights") {
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::normal_distribution<float> g(0.0f, 0.5f);
    lowbit::matrix_f wu(64, 64), wg(64, 64);
    for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 64; ++j) {
            wu(i, j) = u(rng);
            wg(i, j) = g(rng);
        }
    const auto pu = lowbit::rwkv_uniformity_proxy(wu), pg = lowbit::rwkv_uniformity_proxy(wg);
    CHECK(pu.coarse < pg.coarse);
    CHECK(pu.fine < pg.fine);
    const double tc = 0.5 * (pu.coarse + pg.coarse), tf = 0.5 * (pu.fine + pg.fine);
    CHECK(lowbit::choose_quantization_family(pu, tc, tf) == lowbit::quantization_family::scalar);
    CHECK(lowbit::choose_quantization_family(pg, tc, tf) == lowbit::quantization_family::vector);
}

TEST_CASE("RWKV proxy bad input") {
    CHECK_THROWS_AS((void)lowbit::rwkv_uniformity_proxy(lowbit::matrix_f(0, 3)), lowbit::shape_error);
    lowbit::matrix_f w = lowbit::matrix_f::Ones(2, 2);
    w(0, 1) = std::nanf("");
    CHECK_THROWS_AS((void)lowbit::rwkv_uniformity_proxy(w), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::choose_quantization_family({}, -1.0, 1.0), lowbit::invalid_argument);
}
