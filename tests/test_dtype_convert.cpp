// Tests for lowbit/io/dtype_convert.hpp. Oracles, all independent of the code under test:
//  - bf16 → float: the format's definition `bit_cast<float>(u << 16)`, all 65,536 patterns;
//  - f16 → float: all 65,536 patterns against Eigen::half's software conversion (this test is built
//    without -mf16c, so Eigen 3.4 takes its bit-manipulation path, Half.h `half_to_float`) and, when
//    the CPU has F16C (checked at run time), against the hardware instruction `_cvtsh_ss`;
//  - float → f16: hardware `_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)` (F16C) and Eigen's software
//    `float_to_half_rtne` on a structured sweep of float patterns, and a nearest-by-definition
//    oracle in double; float → bf16: the nearest-by-definition oracle;
//  - hand-computed values for ±0, smallest/largest subnormal, largest normal, ±Inf, quiet and
//    signalling NaN, and the rounding ties.
#include <lowbit/io/dtype_convert.hpp>

#include <doctest/doctest.h>

#include <Eigen/Core>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define LOWBIT_TEST_F16C 1
#else
#define LOWBIT_TEST_F16C 0
#endif

namespace {

using namespace lowbit::io;

std::uint32_t bits(float f) { return std::bit_cast<std::uint32_t>(f); }
float from_bits(std::uint32_t u) { return std::bit_cast<float>(u); }

#if LOWBIT_TEST_F16C
// cpuid leaf 1: ECX bit 29 F16C, bit 28 AVX, bit 27 OSXSAVE; XCR0 bits 1-2: the OS saves XMM/YMM
// state (F16C is VEX-encoded).
bool cpu_has_f16c() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    if (!((c >> 29) & 1u) || !((c >> 28) & 1u) || !((c >> 27) & 1u)) return false;
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0x6u) == 0x6u;
}
__attribute__((target("f16c"))) float hw_f16_to_float(std::uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) std::uint16_t hw_float_to_f16(float f) {
    return static_cast<std::uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
#else
bool cpu_has_f16c() { return false; }
float hw_f16_to_float(std::uint16_t) { return 0; }
std::uint16_t hw_float_to_f16(float) { return 0; }
#endif

float eigen_f16_to_float(std::uint16_t h) {
    return Eigen::half_impl::half_to_float(Eigen::half_impl::raw_uint16_to_half(h));
}
std::uint16_t eigen_float_to_f16(float f) { return Eigen::half_impl::float_to_half_rtne(f).x; }

bool f16_is_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }
bool bf16_is_nan(std::uint16_t h) { return (h & 0x7F80u) == 0x7F80u && (h & 0x7Fu) != 0; }

// Nearest-by-definition encoders: the two neighbours of |f| in the target format, decoded by the
// definition of the format (value computed with ldexp in double), the nearer one, ties to the even
// code. `decode(code)` gives the magnitude of a non-negative code; codes are monotone in value.
template <class Decode>
std::uint16_t nearest_code(float f, std::uint16_t max_finite, Decode decode) {
    const auto sign = static_cast<std::uint16_t>(std::signbit(f) ? 0x8000 : 0);
    const double a = std::fabs(static_cast<double>(f)); // exact; differences below are exact too
    if (a >= decode(max_finite)) return static_cast<std::uint16_t>(sign | max_finite); // caller did overflow
    std::uint32_t lo = 0, hi = max_finite; // largest code with value <= a
    while (lo < hi) {
        const std::uint32_t mid = (lo + hi + 1) / 2;
        if (decode(static_cast<std::uint16_t>(mid)) <= a) lo = mid;
        else hi = mid - 1;
    }
    const double dl = a - decode(static_cast<std::uint16_t>(lo)), du = decode(static_cast<std::uint16_t>(lo + 1)) - a;
    const std::uint32_t c = dl < du ? lo : du < dl ? lo + 1 : ((lo & 1u) ? lo + 1 : lo);
    return static_cast<std::uint16_t>(sign | c);
}

double f16_value(std::uint16_t c) {
    const int e = (c >> 10) & 0x1F, m = c & 0x3FF;
    return e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
}
double bf16_value(std::uint16_t c) {
    const int e = (c >> 7) & 0xFF, m = c & 0x7F;
    return e == 0 ? std::ldexp(m, -133) : std::ldexp(128 + m, e - 134);
}

// Definition oracles with the overflow rule: ≥ the midpoint between the largest finite value and
// 2^(emax+1) rounds to Inf (the midpoint itself ties to Inf: the largest finite code is odd).
std::uint16_t oracle_f16(float f) {
    if (std::isnan(f)) return 0; // not used for NaN
    if (std::fabs(static_cast<double>(f)) >= 65520.0) return std::signbit(f) ? 0xFC00 : 0x7C00;
    return nearest_code(f, 0x7BFF, f16_value);
}
std::uint16_t oracle_bf16(float f) {
    const double lim = std::ldexp(256.0 - 0.5, 120); // (bf16 max 255·2^120 + 2^128) / 2
    if (std::fabs(static_cast<double>(f)) >= lim) return std::signbit(f) ? 0xFF80 : 0x7F80;
    return nearest_code(f, 0x7F7F, bf16_value);
}

// A structured sweep of float patterns: both signs, every exponent, mantissas around every
// rounding boundary of bf16 (bit 16) and f16 normals (bit 13), plus a strided and a random sample.
std::vector<std::uint32_t> float_sweep() {
    std::vector<std::uint32_t> v;
    const std::uint32_t lows[] = {0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x18000};
    for (std::uint32_t top = 0; top < (1u << 15); ++top) // sign, exponent and 6 high mantissa bits
        for (std::uint32_t mid : {0u, 1u, 0x3Fu, 0x40u})
            for (std::uint32_t low : lows) v.push_back((top << 17) | (mid << 11 & 0x1F800u) | low);
    for (std::uint64_t u = 0; u < (1ull << 32); u += 65537) v.push_back(static_cast<std::uint32_t>(u));
    std::mt19937 rng(12);
    for (int i = 0; i < 200000; ++i) v.push_back(rng());
    return v;
}

} // namespace

TEST_CASE("bf16 -> float: all 65,536 patterns equal bit_cast<float>(u << 16), NaN-ness preserved") {
    for (std::uint32_t u = 0; u < 65536; ++u) {
        const auto h = static_cast<std::uint16_t>(u);
        const float f = bf16_to_float(h);
        if (bits(f) != (u << 16)) {
            CAPTURE(u);
            FAIL("bf16 pattern converted wrongly");
        }
        if (std::isnan(f) != bf16_is_nan(h) || std::signbit(f) != ((u & 0x8000u) != 0)) {
            CAPTURE(u);
            FAIL("NaN-ness or sign lost");
        }
    }
    static_assert(bf16_to_float(0x3F80) == 1.0f); // constexpr
}

TEST_CASE("f16 -> float: all 65,536 patterns against Eigen::half (software) and F16C when present") {
    const bool hw = cpu_has_f16c();
    const std::string note = std::string("F16C oracle (_cvtsh_ss): ") + (hw ? "used" : "absent on this CPU, Eigen only");
    MESSAGE(note);
    int mismatches = 0;
    for (std::uint32_t u = 0; u < 65536; ++u) {
        const auto h = static_cast<std::uint16_t>(u);
        const float f = f16_to_float(h);
        const float e = eigen_f16_to_float(h);
        bool ok;
        if (f16_is_nan(h)) {
            // NaN: NaN with the same sign; the payload is the f16 mantissa shifted by 13 (exact rule)
            ok = std::isnan(f) && std::isnan(e) && std::signbit(f) == std::signbit(e) &&
                 (bits(f) & 0x7FFFFFu) == (static_cast<std::uint32_t>(h & 0x3FFu) << 13);
            if (hw) ok = ok && std::isnan(hw_f16_to_float(h)) && std::signbit(hw_f16_to_float(h)) == std::signbit(f);
        } else {
            ok = bits(f) == bits(e);
            if (hw) ok = ok && bits(f) == bits(hw_f16_to_float(h));
        }
        if (!ok && ++mismatches < 10) {
            CAPTURE(u);
            CHECK(ok);
        }
    }
    CHECK(mismatches == 0);
}

TEST_CASE("explicit special values of f16 and bf16") {
    // f16
    CHECK(bits(f16_to_float(0x0000)) == 0x00000000u);            // +0
    CHECK(bits(f16_to_float(0x8000)) == 0x80000000u);            // −0
    CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));        // smallest subnormal 2^−24
    CHECK(f16_to_float(0x8001) == -std::ldexp(1.0f, -24));
    CHECK(f16_to_float(0x03FF) == std::ldexp(1023.0f, -24));     // largest subnormal
    CHECK(f16_to_float(0x0400) == std::ldexp(1.0f, -14));        // smallest normal
    CHECK(f16_to_float(0x7BFF) == 65504.0f);                     // largest normal
    CHECK(f16_to_float(0xFBFF) == -65504.0f);
    CHECK(f16_to_float(0x3C00) == 1.0f);
    CHECK(f16_to_float(0x3555) == 0.333251953125f);
    CHECK(f16_to_float(0x7C00) == std::numeric_limits<float>::infinity());
    CHECK(f16_to_float(0xFC00) == -std::numeric_limits<float>::infinity());
    CHECK(bits(f16_to_float(0x7E00)) == 0x7FC00000u);            // quiet NaN
    CHECK(bits(f16_to_float(0xFE00)) == 0xFFC00000u);
    CHECK(bits(f16_to_float(0x7C01)) == 0x7F802000u);            // signalling NaN stays signalling
    CHECK(std::isnan(f16_to_float(0x7C01)));
    CHECK(bits(f16_to_float(0x7D00)) == 0x7FA00000u);            // payload kept
    // bf16
    CHECK(bits(bf16_to_float(0x8000)) == 0x80000000u);
    CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));      // smallest subnormal
    CHECK(bf16_to_float(0x007F) == std::ldexp(127.0f, -133));    // largest subnormal
    CHECK(bf16_to_float(0x0080) == std::ldexp(1.0f, -126));      // smallest normal
    CHECK(bf16_to_float(0x7F7F) == std::ldexp(255.0f, 120));     // largest normal ≈ 3.3895e38
    CHECK(bf16_to_float(0xFF80) == -std::numeric_limits<float>::infinity());
    CHECK(bits(bf16_to_float(0x7FC0)) == 0x7FC00000u);            // quiet NaN
    CHECK(bits(bf16_to_float(0x7F81)) == 0x7F810000u);            // signalling NaN
    CHECK(std::isnan(bf16_to_float(0x7F81)));
}

TEST_CASE("float -> bf16: round to nearest even, hand-computed ties, specials") {
    CHECK(float_to_bf16(1.0f) == 0x3F80);
    CHECK(float_to_bf16(from_bits(0x3F808000)) == 0x3F80); // 1 + 2^-8: tie, even stays
    CHECK(float_to_bf16(from_bits(0x3F818000)) == 0x3F82); // 1 + 3·2^-8: tie, odd rounds up
    CHECK(float_to_bf16(from_bits(0x3F808001)) == 0x3F81); // just above the tie
    CHECK(float_to_bf16(from_bits(0x3F807FFF)) == 0x3F80); // just below
    CHECK(float_to_bf16(from_bits(0xBF808000)) == 0xBF80); // negative tie
    CHECK(float_to_bf16(from_bits(0xBF818000)) == 0xBF82);
    CHECK(float_to_bf16(from_bits(0x00008000)) == 0x0000); // subnormal tie to 0
    CHECK(float_to_bf16(from_bits(0x00018000)) == 0x0002); // subnormal tie to even 2
    CHECK(float_to_bf16(from_bits(0x007F8000)) == 0x0080); // largest subnormal region carries to a normal
    CHECK(float_to_bf16(from_bits(0x7F7F7FFF)) == 0x7F7F); // below the overflow tie
    CHECK(float_to_bf16(from_bits(0x7F7F8000)) == 0x7F80); // overflow tie: odd → Inf
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);
    CHECK(float_to_bf16(-std::numeric_limits<float>::infinity()) == 0xFF80);
    CHECK(float_to_bf16(-0.0f) == 0x8000);
    CHECK(float_to_bf16(std::numeric_limits<float>::quiet_NaN()) == 0x7FC0);
    CHECK(float_to_bf16(-std::numeric_limits<float>::quiet_NaN()) == 0x7FC0); // torch drops the sign
    CHECK(float_to_bf16(std::numeric_limits<float>::signaling_NaN()) == 0x7FC0);
    CHECK(float_to_bf16(from_bits(0x7F800001)) == 0x7FC0); // a NaN whose truncation would be Inf
    // round trip of every non-NaN pattern
    for (std::uint32_t u = 0; u < 65536; ++u)
        if (!bf16_is_nan(static_cast<std::uint16_t>(u)) && float_to_bf16(bf16_to_float(static_cast<std::uint16_t>(u))) != u) {
            CAPTURE(u);
            FAIL("bf16 round trip");
        }
    // the nearest-by-definition oracle on the sweep
    int bad = 0;
    for (std::uint32_t u : float_sweep()) {
        const float f = from_bits(u);
        if (std::isnan(f)) continue;
        if (float_to_bf16(f) != oracle_bf16(f) && ++bad < 10) {
            CAPTURE(u);
            CHECK(float_to_bf16(f) == oracle_bf16(f));
        }
    }
    CHECK(bad == 0);
}

TEST_CASE("float -> f16: round to nearest even, hand-computed ties, specials, F16C/Eigen agreement") {
    CHECK(float_to_f16(1.0f) == 0x3C00);
    CHECK(float_to_f16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);     // tie, even stays
    CHECK(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02); // tie, odd rounds up
    CHECK(float_to_f16(from_bits(0x3F801001)) == 0x3C01);            // just above the tie
    CHECK(float_to_f16(-1.0f - std::ldexp(1.0f, -11)) == 0xBC00);
    CHECK(float_to_f16(65504.0f) == 0x7BFF);
    CHECK(float_to_f16(65519.996f) == 0x7BFF);                      // below the overflow tie
    CHECK(float_to_f16(65520.0f) == 0x7C00);                        // overflow tie: odd → Inf
    CHECK(float_to_f16(-1e6f) == 0xFC00);
    CHECK(float_to_f16(std::numeric_limits<float>::infinity()) == 0x7C00);
    CHECK(float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);           // smallest subnormal
    CHECK(float_to_f16(std::ldexp(1.0f, -25)) == 0x0000);           // tie between 0 and 2^-24 → 0
    CHECK(float_to_f16(from_bits(bits(std::ldexp(1.0f, -25)) + 1)) == 0x0001);
    CHECK(float_to_f16(3 * std::ldexp(1.0f, -25)) == 0x0002);       // tie between 1 and 2 → 2
    CHECK(float_to_f16(5 * std::ldexp(1.0f, -25)) == 0x0002);       // tie between 2 and 3 → 2
    CHECK(float_to_f16(std::ldexp(1023.0f, -24)) == 0x03FF);        // largest subnormal
    CHECK(float_to_f16(std::ldexp(2047.0f, -25)) == 0x0400);        // tie 1023.5 → smallest normal
    CHECK(float_to_f16(1e-10f) == 0x0000);
    CHECK(float_to_f16(-1e-10f) == 0x8000);
    CHECK(float_to_f16(std::numeric_limits<float>::denorm_min()) == 0x0000);
    CHECK(float_to_f16(-0.0f) == 0x8000);
    CHECK(float_to_f16(std::numeric_limits<float>::quiet_NaN()) == 0x7E00);
    CHECK(float_to_f16(-std::numeric_limits<float>::quiet_NaN()) == 0xFE00);
    CHECK(float_to_f16(from_bits(0x7F800001)) == 0x7E00);
    for (std::uint32_t u = 0; u < 65536; ++u)
        if (!f16_is_nan(static_cast<std::uint16_t>(u)) && float_to_f16(f16_to_float(static_cast<std::uint16_t>(u))) != u) {
            CAPTURE(u);
            FAIL("f16 round trip");
        }
    const bool hw = cpu_has_f16c();
    int bad = 0;
    std::size_t n = 0;
    for (std::uint32_t u : float_sweep()) {
        const float f = from_bits(u);
        if (std::isnan(f)) {
            if (!f16_is_nan(float_to_f16(f)) && ++bad < 10) FAIL_CHECK("NaN not kept: " << u);
            continue;
        }
        ++n;
        const std::uint16_t c = float_to_f16(f);
        const bool ok = c == oracle_f16(f) && c == eigen_float_to_f16(f) && (!hw || c == hw_float_to_f16(f));
        if (!ok && ++bad < 10) {
            CAPTURE(u);
            CHECK(c == oracle_f16(f));
            CHECK(c == eigen_float_to_f16(f));
            if (hw) CHECK(c == hw_float_to_f16(f));
        }
    }
    const std::string note = std::to_string(n) + " floats checked against the definition, Eigen" + (hw ? " and F16C" : "");
    MESSAGE(note);
    CHECK(bad == 0);
}

TEST_CASE("bulk to_float for BF16, F16, F32, F64, I8, U8 from unaligned bytes; refusals") {
    auto le = [](std::vector<std::byte>& out, const void* p, std::size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n); // the test host is little-endian (x86/ARM)
    };
    std::vector<float> got(3);
    {
        std::vector<std::byte> b{std::byte{0}}; // misalign by one byte
        const std::uint16_t v[] = {0x3F80, 0xC040, 0x7F80};
        le(b, v, sizeof v);
        to_float(st_dtype::BF16, std::span(b).subspan(1), got);
        CHECK(got == std::vector<float>{1.0f, -3.0f, std::numeric_limits<float>::infinity()});
    }
    {
        std::vector<std::byte> b{std::byte{0}};
        const std::uint16_t v[] = {0x3C00, 0x0001, 0xC500};
        le(b, v, sizeof v);
        to_float(st_dtype::F16, std::span(b).subspan(1), got);
        CHECK(got == std::vector<float>{1.0f, std::ldexp(1.0f, -24), -5.0f});
    }
    {
        std::vector<std::byte> b{std::byte{0}};
        const float v[] = {1.5f, -0.0f, 3e38f};
        le(b, v, sizeof v);
        to_float(st_dtype::F32, std::span(b).subspan(1), got);
        CHECK(bits(got[0]) == bits(1.5f));
        CHECK(bits(got[1]) == bits(-0.0f));
        CHECK(got[2] == 3e38f);
    }
    {
        std::vector<std::byte> b{std::byte{0}};
        const double v[] = {0.1, 1e300, -2.5};
        le(b, v, sizeof v);
        to_float(st_dtype::F64, std::span(b).subspan(1), got);
        CHECK(got == std::vector<float>{0.1f, std::numeric_limits<float>::infinity(), -2.5f});
    }
    {
        const std::vector<std::byte> b{std::byte{0x80}, std::byte{0xFF}, std::byte{0x7F}};
        to_float(st_dtype::I8, b, got);
        CHECK(got == std::vector<float>{-128.0f, -1.0f, 127.0f});
        to_float(st_dtype::U8, b, got);
        CHECK(got == std::vector<float>{128.0f, 255.0f, 127.0f});
        tensor_view t{st_dtype::U8, {1, 3}, b};
        std::vector<float> g2(3);
        to_float(t, g2);
        CHECK(g2 == got);
        std::vector<float> wrong(2);
        CHECK_THROWS_AS(to_float(t, wrong), lowbit::shape_error);
    }
    // size mismatch
    const std::vector<std::byte> five(5);
    CHECK_THROWS_AS(to_float(st_dtype::BF16, five, std::span(got).first(2)), lowbit::shape_error);
    CHECK_THROWS_AS(to_float(st_dtype::F32, five, std::span(got).first(1)), lowbit::shape_error);
    // unsupported dtypes name themselves
    for (st_dtype t : {st_dtype::BOOL, st_dtype::I16, st_dtype::U16, st_dtype::I32, st_dtype::U32, st_dtype::I64,
                       st_dtype::U64, st_dtype::C64, st_dtype::F8_E4M3, st_dtype::F8_E5M2, st_dtype::F8_E8M0,
                       st_dtype::F4, st_dtype::F6_E2M3}) {
        CAPTURE(dtype_name(t));
        CHECK(!converts_to_float(t));
        try {
            to_float(t, five, std::span(got).first(0));
            FAIL("no throw");
        } catch (const lowbit::invalid_argument& e) {
            CHECK(std::string(e.what()).find(std::string("dtype ") + dtype_name(t) + " ") != std::string::npos);
        }
    }
}

TEST_CASE("from_float encodes BF16, F16, F32 for writers and round-trips through to_float") {
    const std::vector<float> x{1.0f, -2.5f, 1.0f + std::ldexp(1.0f, -8), 65504.0f, 1e-7f};
    const auto bf = from_float(x, st_dtype::BF16);
    REQUIRE(bf.size() == 10);
    CHECK(static_cast<int>(bf[0]) == 0x80);
    CHECK(static_cast<int>(bf[1]) == 0x3F); // little-endian 0x3F80
    std::vector<float> back(x.size());
    to_float(st_dtype::BF16, bf, back);
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(back[i] == bf16_to_float(float_to_bf16(x[i])));
    const auto h = from_float(x, st_dtype::F16);
    to_float(st_dtype::F16, h, back);
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(back[i] == f16_to_float(float_to_f16(x[i])));
    const auto f = from_float(x, st_dtype::F32);
    to_float(st_dtype::F32, f, back);
    CHECK(back == x);
    CHECK_THROWS_AS((void)from_float(x, st_dtype::F64), lowbit::invalid_argument);
    std::vector<std::byte> small(3);
    CHECK_THROWS_AS(from_float(x, st_dtype::F16, small), lowbit::shape_error);
    // names and sizes of the moved dtype table
    CHECK(dtype_from_name("BF16") == st_dtype::BF16);
    CHECK(dtype_bits(st_dtype::F16) == 16);
    CHECK_THROWS_AS((void)dtype_from_name("bf16"), lowbit::format_error);
}
