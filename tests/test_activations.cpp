// Tests for lowbit/activations.hpp. Oracles: std:: functions in double (exp, tanh, erf, sqrt) and the
// published constants (SiLU(1) = 0.7310585786, GELU(1) = 0.8413447461 / 0.8411919906); a double-precision
// softmax; exact range-reduction identities (rsqrt(4x) = rsqrt(x) / 2, exp doubling at integer t);
// the scalar evaluator for the xsimd paths (bit equality, -ffp-contract=off); the uniform-cutpoint baseline.
#include <lowbit/activations.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

using bf = xsimd::batch<float>;
constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float qnan = std::numeric_limits<float>::quiet_NaN();

bool same(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    std::uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    return ua == ub;
}

template <class Fn>
double max_rel_error(const lowbit::pwl_table& t, double lo, double hi, int n) {
    double worst = 0;
    for (int i = 0; i <= n; ++i) {
        const float x = static_cast<float>(lo + (hi - lo) * i / n);
        const double f = Fn::value(x);
        worst = std::max(worst, std::abs(t(x) - f) / std::max(std::abs(f), Fn::relative_floor));
    }
    return worst;
}

} // namespace

TEST_CASE("reference values of the function policies match published constants") {
    CHECK(lowbit::silu_function::value(1.0) == doctest::Approx(0.7310585786300049).epsilon(1e-12));
    CHECK(lowbit::gelu_erf_function::value(1.0) == doctest::Approx(0.8413447460685429).epsilon(1e-12));
    CHECK(lowbit::gelu_tanh_function::value(1.0) == doctest::Approx(0.8411919906082768).epsilon(1e-12));
    CHECK(lowbit::sigmoid_function::value(0.0) == 0.5);
    CHECK(lowbit::tanh_function::value(0.5) == doctest::Approx(0.46211715726000974).epsilon(1e-12));
    CHECK(lowbit::exp2_fraction_function::value(0.5) == doctest::Approx(std::sqrt(2.0)).epsilon(1e-15));
    CHECK(lowbit::rsqrt_mantissa_function::value(4.0) == 0.5);
}

TEST_CASE("presets: documented error bounds against std:: in double") {
    using namespace lowbit;
    CHECK(max_rel_error<silu_function>(preset_table<silu_function>(), -8, 8, 10000) < 0.035);
    CHECK(max_rel_error<gelu_tanh_function>(preset_table<gelu_tanh_function>(), -6, 6, 10000) < 0.05);
    CHECK(max_rel_error<gelu_erf_function>(preset_table<gelu_erf_function>(), -6, 6, 10000) < 0.05);
    CHECK(max_rel_error<sigmoid_function>(preset_table<sigmoid_function>(), -12, 12, 10000) < 0.01);
    CHECK(max_rel_error<tanh_function>(preset_table<tanh_function>(), -8, 8, 10000) < 0.01);
    // Asymptotes outside the domain.
    CHECK(preset_table<silu_function>()(-20.0f) == 0.0f);
    CHECK(preset_table<silu_function>()(20.0f) == 20.0f);
    CHECK(preset_table<tanh_function>()(-inf) == -1.0f);
    CHECK(preset_table<sigmoid_function>()(30.0f) == 1.0f);

    const auto& e = preset_table<exp2_fraction_function>();
    double worst = 0;
    for (float x = -87.0f; x < 88.5f; x += 0.0137f) {
        const double want = std::exp(double(x));
        worst = std::max(worst, std::abs(exp_pwl(e, x) - want) / want);
    }
    CHECK(worst < 3e-4); // M = 16, documented 2.4e-4

    const auto& r = preset_table<rsqrt_mantissa_function>();
    worst = 0;
    for (float x = 1e-44f; x < 3e38f; x = std::max(x * 1.003f, std::nextafter(x, inf))) {
        const double want = 1.0 / std::sqrt(double(x));
        worst = std::max(worst, std::abs(rsqrt_pwl(r, x) - want) / want);
    }
    CHECK(worst < 4e-4); // M = 32

    worst = 0;
    for (float x = -87.0f; x < 100.0f; x += 0.00731f) {
        const double want = x / (1.0 + std::exp(-double(x)));
        if (want == 0.0) continue;
        worst = std::max(worst, std::abs(silu_exp_pwl(e, x) - want) / std::abs(want));
    }
    CHECK(worst < 3e-4);
}

TEST_CASE("range reduction identities hold exactly") {
    using namespace lowbit;
    const auto& r = preset_table<rsqrt_mantissa_function>();
    const auto& e = preset_table<exp2_fraction_function>();
    std::mt19937_64 rng(9);
    std::uniform_real_distribution<float> u(0.1f, 10.0f);
    for (int i = 0; i < 1000; ++i) {
        const float x = u(rng);
        CHECK(rsqrt_pwl(r, 4.0f * x) == rsqrt_pwl(r, x) * 0.5f);
        CHECK(rsqrt_pwl(r, x * 0x1p-100f) == rsqrt_pwl(r, x) * 0x1p50f);
    }
    // exp at x with t = x log2 e an integer k: 2^k exactly (g(0) = 2^0 = 1 is a table node).
    for (int k = -20; k <= 20; ++k) {
        const float x = static_cast<float>(k) / 1.44269504088896341f;
        const float t = x * 1.44269504088896341f;
        if (t == std::floor(t)) CHECK(exp_pwl(e, x) == std::ldexp(1.0f, static_cast<int>(t)));
    }
    CHECK(exp_pwl(e, 0.0f) == 1.0f);
}

TEST_CASE("special values are documented and consistent between scalar and xsimd") {
    using namespace lowbit;
    const auto& e = preset_table<exp2_fraction_function>();
    const auto& r = preset_table<rsqrt_mantissa_function>();
    CHECK(std::isnan(exp_pwl(e, qnan)));
    CHECK(exp_pwl(e, inf) == inf);
    CHECK(exp_pwl(e, 89.0f) == inf);
    CHECK(exp_pwl(e, -inf) == 0.0f);
    CHECK(exp_pwl(e, -88.0f) == 0.0f); // subnormal result flushed
    CHECK(std::isnan(rsqrt_pwl(r, qnan)));
    CHECK(std::isnan(rsqrt_pwl(r, -1.0f)));
    CHECK(std::isnan(rsqrt_pwl(r, -inf)));
    CHECK(rsqrt_pwl(r, 0.0f) == inf);
    CHECK(rsqrt_pwl(r, -0.0f) == -inf);
    CHECK(rsqrt_pwl(r, inf) == 0.0f);
    CHECK(rsqrt_pwl(r, 1.0f) == 1.0f);
    CHECK(rsqrt_pwl(r, 4.0f) == 0.5f);
    CHECK(std::isnan(silu_exp_pwl(e, qnan)));
    CHECK(silu_exp_pwl(e, inf) == inf);
    CHECK(silu_exp_pwl(e, -inf) == 0.0f);
    CHECK(silu_exp_pwl(e, -100.0f) == 0.0f); // documented: -0 below x = -88.7

    std::mt19937_64 rng(10);
    std::uniform_real_distribution<float> wide(-120.0f, 120.0f);
    std::vector<float> in(2001);
    for (auto& x : in) x = wide(rng);
    const float specials[] = {qnan, inf, -inf, 0.0f, -0.0f, 1e-40f, -1e-40f, 88.7f, -87.3f, 127.9f,
                              std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
    for (std::size_t k = 0; k < std::size(specials); ++k) in[5 * k + 1] = specials[k];
    std::vector<float> pos(in.size());
    for (std::size_t i = 0; i < in.size(); ++i) pos[i] = std::isnan(in[i]) ? in[i] : std::ldexp(std::abs(in[i]), static_cast<int>(in[i]) % 60);
    std::vector<float> out(in.size());
    exp_pwl(e, in, out);
    for (std::size_t i = 0; i < in.size(); ++i) CHECK(same(out[i], exp_pwl(e, in[i])));
    silu_exp_pwl(e, in, out);
    for (std::size_t i = 0; i < in.size(); ++i) CHECK(same(out[i], silu_exp_pwl(e, in[i])));
    rsqrt_pwl(r, in, out); // negative inputs included: NaN
    for (std::size_t i = 0; i < in.size(); ++i) CHECK(same(out[i], rsqrt_pwl(r, in[i])));
    rsqrt_pwl(r, pos, out);
    for (std::size_t i = 0; i < pos.size(); ++i) CHECK(same(out[i], rsqrt_pwl(r, pos[i])));
    // Direct tables too.
    preset_table<gelu_erf_function>().evaluate(in, out);
    for (std::size_t i = 0; i < in.size(); ++i) CHECK(same(out[i], preset_table<gelu_erf_function>()(in[i])));
}

TEST_CASE("softmax_pwl: close to double softmax, rows sum to 1, documented NaN rows") {
    using namespace lowbit;
    const auto& e = preset_table<exp2_fraction_function>();
    std::mt19937_64 rng(11);
    std::normal_distribution<float> g(0.0f, 4.0f);
    matrix_f x(6, 37);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = g(rng);
    x(1, 3) = -inf; // contributes 0
    const matrix_f y = softmax_pwl(e, x);
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
        double m = -INFINITY, sum = 0;
        for (Eigen::Index c = 0; c < x.cols(); ++c) m = std::max(m, double(x(r, c)));
        for (Eigen::Index c = 0; c < x.cols(); ++c) sum += std::exp(double(x(r, c)) - m);
        double rowsum = 0;
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            const double want = std::exp(double(x(r, c)) - m) / sum;
            rowsum += y(r, c);
            if (want > 1e-30) CHECK(std::abs(y(r, c) - want) / want < 6e-4);
        }
        CHECK(rowsum == doctest::Approx(1.0).epsilon(1e-5));
    }
    CHECK(y(1, 3) == 0.0f);
    matrix_f bad = x;
    bad(2, 5) = qnan;
    bad(3, 0) = inf;
    bad.row(4).setConstant(-inf);
    const matrix_f yb = softmax_pwl(e, bad);
    for (int r : {2, 3, 4})
        for (Eigen::Index c = 0; c < x.cols(); ++c) CHECK(std::isnan(yb(r, c)));
    CHECK(yb.row(0) == y.row(0));
    CHECK_THROWS_AS(softmax_pwl(e, matrix_f(0, 4)), shape_error);
    CHECK_THROWS_AS(softmax_pwl(e, matrix_f(3, 0)), shape_error);
    CHECK_THROWS_AS(softmax_pwl(preset_table<silu_function>(), x), invalid_argument);
}

TEST_CASE("fit_nli: DP beats uniform cutpoints for every function, error falls with M") {
    using namespace lowbit;
    const auto check = [](auto tag) {
        using Fn = decltype(tag);
        const auto grid = uniform_grid(Fn::lo, Fn::hi, 65);
        const auto eval = uniform_grid(Fn::lo, Fn::hi, 257);
        const auto f = [](double x) { return Fn::value(x); };
        double prev = INFINITY;
        for (std::size_t m : {4u, 8u, 16u, 32u}) {
            const auto r = fit_nli<Fn>(m, 65);
            const double uni = pwl_objective(f, grid, eval, uniform_cut_indices(65, m), relative_error{Fn::relative_floor});
            CHECK(r.objective <= uni * (1 + 1e-12));
            CHECK(r.objective <= prev * (1 + 1e-12));
            prev = r.objective;
        }
    };
    check(silu_function{});
    check(gelu_tanh_function{});
    check(gelu_erf_function{});
    check(sigmoid_function{});
    check(tanh_function{});
    check(exp2_fraction_function{});
    check(rsqrt_mantissa_function{});
}

TEST_CASE("bad input: segments, grid size, table kind, sizes") {
    using namespace lowbit;
    CHECK_THROWS_AS(fit_nli<silu_function>(0, 257), invalid_argument);
    CHECK_THROWS_AS(fit_nli<silu_function>(16, 16), invalid_argument);
    const auto& s = preset_table<silu_function>();
    const auto& e = preset_table<exp2_fraction_function>();
    std::vector<float> in(8), out(7);
    CHECK_THROWS_AS(exp_pwl(s, in, in), invalid_argument);
    CHECK_THROWS_AS(rsqrt_pwl(e, in, in), invalid_argument);
    CHECK_THROWS_AS(silu_exp_pwl(s, in, in), invalid_argument);
    CHECK_THROWS_AS(exp_pwl(e, in, out), shape_error);
    CHECK_THROWS_AS(rsqrt_pwl(preset_table<rsqrt_mantissa_function>(), in, out), shape_error);
    CHECK_THROWS_AS(silu_exp_pwl(e, in, out), shape_error);
}
