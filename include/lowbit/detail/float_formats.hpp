#pragma once
/// \file detail/float_formats.hpp
/// Bit-level codecs of the small floating-point formats used by microscaling (OCP MX v1.0) and
/// NVFP4: sign–magnitude minifloats E2M1, E2M3, E3M2, E4M3, E5M2, and the E8M0 scale.
///
/// A minifloat with E exponent bits, M mantissa bits and bias b stores a code
/// `s | e (E bits) | m (M bits)`; its value is (−1)^s · m · 2^(1−b−M) when e = 0 (subnormal) and
/// (−1)^s · (2^M + m) · 2^(e−b−M) otherwise. Which all-ones codes are special depends on the format
/// (`float_specials`). Encoding rounds to nearest (ties to the even code or toward zero) and
/// saturates to the largest finite magnitude; it never produces Inf or NaN.

#include <lowbit/config.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

LOWBIT_BEGIN_NAMESPACE

/// How a value exactly halfway between two representable neighbours is rounded.
enum class element_rounding {
    nearest_even,        ///< IEEE round-to-nearest, ties to the even code (OCP MX default)
    nearest_toward_zero  ///< ties to the smaller magnitude (ggml's first-wins nearest-value search)
};

namespace detail {

/// 2^k as a float for k ∈ [−126, 127] (exact, by building the exponent field).
[[nodiscard]] inline float pow2f(int k) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(k + 127) << 23);
}

/// 2^k as a double for k ∈ [−1022, 1023].
[[nodiscard]] inline double pow2d(int k) noexcept {
    return std::bit_cast<double>(static_cast<std::uint64_t>(k + 1023) << 52);
}

/// Which codes of a minifloat are not finite numbers.
enum class float_specials {
    none,         ///< every code is finite (E2M1, E2M3, E3M2)
    nan_all_ones, ///< only S.1111.111 is NaN, no Inf (OCP E4M3)
    ieee          ///< exponent all ones: Inf if mantissa 0, NaN otherwise (E5M2)
};

/// Codec of a sign–magnitude minifloat `1 + E + M` bits wide (see the file comment).
template <int E, int M, int Bias, float_specials Specials>
struct minifloat_codec {
    static_assert(E >= 1 && M >= 0 && 1 + E + M <= 8, "lowbit: minifloat codes must fit in 8 bits");
    static constexpr int exponent_bits = E;  ///< exponent field width
    static constexpr int mantissa_bits = M;  ///< mantissa field width
    static constexpr int bias = Bias;        ///< exponent bias
    static constexpr int bits = 1 + E + M;   ///< code width
    static constexpr std::uint8_t sign_mask = static_cast<std::uint8_t>(1u << (E + M)); ///< sign bit
    /// Largest finite positive code.
    static constexpr std::uint8_t max_code = static_cast<std::uint8_t>(
        Specials == float_specials::none           ? (1u << (E + M)) - 1u
        : Specials == float_specials::nan_all_ones ? (1u << (E + M)) - 2u
                                                   : ((((1u << E) - 2u) << M) | ((1u << M) - 1u)));
    /// Unbiased exponent of the largest normal (OCP's emax_elem).
    static constexpr int emax = (max_code >> M) - Bias;
    /// Unbiased exponent of the smallest normal.
    static constexpr int emin = 1 - Bias;

    /// True if `code` (low `bits` bits used) is a finite number.
    [[nodiscard]] static constexpr bool is_finite_code(std::uint8_t code) noexcept {
        const unsigned mag = code & (sign_mask - 1u);
        return mag <= max_code;
    }

    /// The value of `code` computed from the bit fields (the reference the table is built from).
    [[nodiscard]] static float decode_fields(std::uint8_t code) noexcept {
        const bool neg = (code & sign_mask) != 0;
        const unsigned mag = code & (sign_mask - 1u);
        const unsigned ef = mag >> M;
        const unsigned mf = mag & ((1u << M) - 1u);
        float v;
        if (mag > max_code) {
            v = (Specials == float_specials::ieee && mf == 0) ? std::numeric_limits<float>::infinity()
                                                              : std::numeric_limits<float>::quiet_NaN();
        } else if (ef == 0) {
            v = std::ldexp(static_cast<float>(mf), 1 - Bias - M);
        } else {
            v = std::ldexp(static_cast<float>((1u << M) + mf), static_cast<int>(ef) - Bias - M);
        }
        return neg ? -v : v;
    }

    /// The value of `code` (only the low `bits` bits are read). NaN/Inf for special codes.
    /// A 2^bits-entry table built once (function-local static, immutable).
    [[nodiscard]] static float decode(std::uint8_t code) noexcept {
        static const std::array<float, (1u << (1 + E + M))> table = [] {
            std::array<float, (1u << (1 + E + M))> t{};
            for (unsigned c = 0; c < t.size(); ++c) t[c] = decode_fields(static_cast<std::uint8_t>(c));
            return t;
        }();
        return table[code & ((1u << (1 + E + M)) - 1u)];
    }

    /// Largest finite magnitude.
    [[nodiscard]] static constexpr float max_value() noexcept {
        double v = static_cast<double>((1u << M) + (max_code & ((1u << M) - 1u)));
        for (int k = (max_code >> M) - Bias - M; k > 0; --k) v *= 2.0;
        for (int k = (max_code >> M) - Bias - M; k < 0; ++k) v /= 2.0;
        return static_cast<float>(v);
    }

    /// Nearest code to the finite value `v`, saturating to ±max_value (never Inf/NaN). Negative
    /// values (including −0 and values rounding to zero) keep the sign bit. Precondition: `v` finite.
    [[nodiscard]] static std::uint8_t encode(float v, element_rounding r = element_rounding::nearest_even) noexcept {
        const std::uint8_t sign = std::signbit(v) ? sign_mask : std::uint8_t{0};
        const float a = std::fabs(v);
        if (!(a < max_value())) return static_cast<std::uint8_t>(sign | max_code);
        // Scale so that one unit in the last place becomes 1: q is exact (power-of-two product).
        // a ≥ 2^emin is a normal float, so its exponent is the biased field minus 127.
        const bool subnormal = a < pow2f(emin);
        const int e = subnormal ? emin : static_cast<int>(std::bit_cast<std::uint32_t>(a) >> 23) - 127;
        const float q = a * pow2f(M - e);
        float rq;
        if (r == element_rounding::nearest_even) {
            rq = std::nearbyint(q); // default FE_TONEAREST: ties to even
        } else {
            rq = std::floor(q);
            if (q - rq > 0.5f) rq += 1.0f;
        }
        // Subnormal range: the code is the mantissa (a carry to 2^M lands on the smallest normal).
        // Normal range: (e + bias) << M plus the mantissa; a carry to 2^(M+1) moves to the next
        // exponent with mantissa 0, which is again just the sum.
        const unsigned iq = static_cast<unsigned>(rq);
        unsigned mag = subnormal ? iq : (static_cast<unsigned>(e + Bias - 1) << M) + iq;
        if (mag > max_code) mag = max_code;
        return static_cast<std::uint8_t>(sign | mag);
    }
};

} // namespace detail

/// Value of an E8M0 scale code (OCP MX): 2^(code − 127); 0xFF is NaN. Range 2^−127 … 2^127.
[[nodiscard]] inline float e8m0_decode(std::uint8_t code) noexcept {
    if (code == 0xFF) return std::numeric_limits<float>::quiet_NaN();
    if (code == 0) return std::bit_cast<float>(std::uint32_t{0x00400000}); // 2^-127, subnormal
    return std::bit_cast<float>(static_cast<std::uint32_t>(code) << 23);
}

/// E8M0 code of the power of two 2^`exponent`; `exponent` is clamped to [−127, 127] (code 0…254).
[[nodiscard]] inline std::uint8_t e8m0_encode(int exponent) noexcept {
    if (exponent < -127) exponent = -127;
    if (exponent > 127) exponent = 127;
    return static_cast<std::uint8_t>(exponent + 127);
}

LOWBIT_END_NAMESPACE
