// Tests for lowbit/version.hpp, config.hpp, error.hpp and types.hpp (the core headers).
#include <lowbit/config.hpp>
#include <lowbit/detail/xsimd_compat.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>
#include <lowbit/version.hpp>

#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <type_traits>

TEST_CASE("version macros and value agree") {
    CHECK(lowbit::version.major == LOWBIT_VERSION_MAJOR);
    CHECK(lowbit::version.minor == LOWBIT_VERSION_MINOR);
    CHECK(lowbit::version.patch == LOWBIT_VERSION_PATCH);
}

TEST_CASE("every lowbit exception derives from lowbit::error and std::runtime_error") {
    static_assert(std::is_base_of_v<lowbit::error, lowbit::shape_error>);
    static_assert(std::is_base_of_v<lowbit::error, lowbit::numeric_error>);
    static_assert(std::is_base_of_v<lowbit::error, lowbit::format_error>);
    static_assert(std::is_base_of_v<lowbit::error, lowbit::invalid_argument>);
    static_assert(std::is_base_of_v<std::runtime_error, lowbit::error>);
    CHECK_THROWS_WITH(lowbit::detail::require(false, "f", "rule broken"), "lowbit: f: rule broken");
    CHECK_NOTHROW(lowbit::detail::require(true, "f", "never"));
}

TEST_CASE("argument checks name the argument") {
    lowbit::matrix_f m = lowbit::matrix_f::Zero(2, 2);
    CHECK_NOTHROW(lowbit::detail::require_finite(m, "f", "x"));
    m(1, 0) = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(lowbit::detail::require_finite(m, "f", "x"), "lowbit: f: argument 'x' contains NaN or Inf");
    CHECK_THROWS_AS(lowbit::detail::require_dim(3, 4, "f", "x.cols()"), lowbit::shape_error);
    CHECK_THROWS_AS(lowbit::detail::require_nonempty(lowbit::matrix_f(0, 3), "f", "x"), lowbit::shape_error);
}

TEST_CASE("xsimd compat lane_sum sums all lanes") {
    using batch = xsimd::batch<float>;
    alignas(64) float v[batch::size];
    float want = 0;
    for (std::size_t i = 0; i < batch::size; ++i) want += (v[i] = static_cast<float>(i + 1));
    const batch b = batch::load_aligned(v);
    CHECK(lowbit::detail::lane_sum(b) == want);
    using namespace xsimd; // an unqualified call must not be ambiguous with xsimd::reduce_add (xsimd >= 9)
    CHECK(lowbit::detail::lane_sum(b) == want);
}

TEST_CASE("xsimd compat bitwise_cast reinterprets lanes") {
    using bf = xsimd::batch<float>;
    using bi = xsimd::batch<std::int32_t>;
    const bi one_bits = lowbit::detail::bitwise_cast<std::int32_t>(bf(1.0f));
    alignas(64) std::int32_t i[bi::size];
    one_bits.store_aligned(i);
    for (std::size_t l = 0; l < bi::size; ++l) CHECK(i[l] == 0x3f800000);
    const bf back = lowbit::detail::bitwise_cast<float>(one_bits);
    alignas(64) float f[bf::size];
    back.store_aligned(f);
    for (std::size_t l = 0; l < bf::size; ++l) CHECK(f[l] == 1.0f);
}

TEST_CASE("xsimd version is the one the build chose") {
    MESSAGE("xsimd " << XSIMD_VERSION_MAJOR << "." << XSIMD_VERSION_MINOR << "." << XSIMD_VERSION_PATCH);
#ifdef LOWBIT_EXPECT_XSIMD_MAJOR // set by scripts/test-xsimd
    CHECK(XSIMD_VERSION_MAJOR == LOWBIT_EXPECT_XSIMD_MAJOR);
#endif
}
