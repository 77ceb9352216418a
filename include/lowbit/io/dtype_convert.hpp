#pragma once
/// \file io/dtype_convert.hpp
/// The element types of safetensors files, a view of one stored tensor, and exact conversions of
/// stored elements to float (and float to BF16/F16 for writers). No Eigen: a light header.
///
/// Formats (IEEE 754 binary16 and Google brain float, little-endian in files):
///  - BF16 `s eeeeeeee mmmmmmm`: the top 16 bits of a float32. bf16 → float is `bit_cast<float>(u << 16)`
///    for every pattern (exact; NaN payloads, signalling NaNs, subnormals and ±0 kept bit for bit).
///  - F16 `s eeeee mmmmmmmmmm`, bias 15: e = 0 → subnormal m·2^−24, e = 31 → Inf (m = 0) or NaN.
///    Every f16 value is exactly a float (float has 8 more exponent and 13 more mantissa bits);
///    f16 → float is exact, NaN payloads are shifted left by 13 (a signalling NaN stays signalling).
///  - float → BF16 and float → F16 round to nearest, ties to even, as PyTorch does (c10 BFloat16
///    `round_to_nearest_even`, FP16 `fp16_ieee_from_fp32_value`): overflow gives ±Inf, values below
///    half the smallest subnormal give ±0. NaN becomes the canonical quiet NaN: 0x7FC0 for BF16
///    (sign dropped, as torch), sign | 0x7E00 for F16.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// Element types of the safetensors format (names as in the format: "F32", "BF16", ...).
enum class st_dtype {
    BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64, C64,
    F8_E4M3, F8_E5M2, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F4, F6_E2M3, F6_E3M2
};

namespace detail {
struct st_dtype_info {
    st_dtype type;
    const char* name;
    int bits;
};
inline constexpr st_dtype_info st_dtypes[] = {
    {st_dtype::BOOL, "BOOL", 8},      {st_dtype::U8, "U8", 8},           {st_dtype::I8, "I8", 8},
    {st_dtype::U16, "U16", 16},       {st_dtype::I16, "I16", 16},        {st_dtype::F16, "F16", 16},
    {st_dtype::BF16, "BF16", 16},     {st_dtype::U32, "U32", 32},        {st_dtype::I32, "I32", 32},
    {st_dtype::F32, "F32", 32},       {st_dtype::U64, "U64", 64},        {st_dtype::I64, "I64", 64},
    {st_dtype::F64, "F64", 64},       {st_dtype::C64, "C64", 64},        {st_dtype::F8_E4M3, "F8_E4M3", 8},
    {st_dtype::F8_E5M2, "F8_E5M2", 8}, {st_dtype::F8_E8M0, "F8_E8M0", 8}, {st_dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {st_dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {st_dtype::F4, "F4", 4}, {st_dtype::F6_E2M3, "F6_E2M3", 6},
    {st_dtype::F6_E3M2, "F6_E3M2", 6},
};
[[noreturn]] inline void st_fail(const std::string& what) { throw format_error("lowbit: safetensors: " + what); }
} // namespace detail

/// The format's name of a dtype ("F32", ...); "?" for a value outside the enumeration.
[[nodiscard]] inline const char* dtype_name(st_dtype t) {
    for (const auto& d : detail::st_dtypes)
        if (d.type == t) return d.name;
    return "?";
}
/// Bits per element (4 for F4, 6 for F6_*, else 8·bytes; 0 outside the enumeration).
[[nodiscard]] inline int dtype_bits(st_dtype t) {
    for (const auto& d : detail::st_dtypes)
        if (d.type == t) return d.bits;
    return 0;
}
/// The dtype named `name` (exact, case-sensitive). \throws format_error (unknown name).
[[nodiscard]] inline st_dtype dtype_from_name(std::string_view name) {
    for (const auto& d : detail::st_dtypes)
        if (name == d.name) return d.type;
    detail::st_fail("unknown dtype \"" + std::string(name) + "\"");
}

/// A stored tensor: dtype, shape (row-major, outermost first) and its little-endian bytes, a view
/// into storage owned elsewhere (a safetensors_file or a caller buffer; valid while that lives).
struct tensor_view {
    st_dtype dtype = st_dtype::F32;
    std::vector<std::uint64_t> shape;
    std::span<const std::byte> bytes;
    /// Product of the dimensions (1 for a scalar; no overflow check: readers validated it).
    [[nodiscard]] std::uint64_t numel() const {
        std::uint64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

// ---- scalar conversions -------------------------------------------------------------------------

/// The float of a bf16 bit pattern: `bit_cast<float>(u << 16)`. Exact for all 65,536 patterns.
[[nodiscard]] constexpr float bf16_to_float(std::uint16_t u) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(u) << 16);
}

/// The float of an IEEE binary16 bit pattern. Exact for all 65,536 patterns (subnormals become
/// normal floats; ±0, ±Inf kept; NaN keeps its sign and its payload shifted left by 13 bits).
[[nodiscard]] constexpr float f16_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1Fu;
    std::uint32_t mant = h & 0x3FFu;
    std::uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { // subnormal m·2^−24: normalise so that bit 10 is the implicit one
        int e = 1 - 15;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --e;
        }
        bits = sign | (static_cast<std::uint32_t>(e + 127) << 23) | ((mant & 0x3FFu) << 13);
    }
    return std::bit_cast<float>(bits);
}

/// The bf16 pattern nearest to `f`, ties to even (PyTorch's rule); NaN → 0x7FC0; overflow → ±Inf.
[[nodiscard]] constexpr std::uint16_t float_to_bf16(float f) noexcept {
    const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
    const std::uint32_t bias = ((u >> 16) & 1u) + 0x7FFFu;
    return static_cast<std::uint16_t>((u + bias) >> 16);
}

/// The binary16 pattern nearest to `f`, ties to even (PyTorch's rule): |f| ≥ 65520 → ±Inf;
/// |f| ≤ 2^−25 → ±0; subnormal results rounded at 2^−24; NaN → sign | 0x7E00.
[[nodiscard]] constexpr std::uint16_t float_to_f16(float f) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);  // NaN
    if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u); // ≥ 65520 (incl. Inf)
    if (a >= 0x38800000u) {                                                 // ≥ 2^−14: normal
        const std::uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);                 // round at bit 13
        return static_cast<std::uint16_t>(sign | ((r - 0x38000000u) >> 13));  // rebias 127 → 15
    }
    const std::uint32_t e = a >> 23;
    if (e < 102) return sign; // < 2^−25 (float subnormals included)
    // value = mant·2^(e−150), in units of 2^−24: mant >> (126 − e), shift in [14, 24]
    const std::uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126 - e;
    std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q; // q = 0x400 is the smallest normal: right code
    return static_cast<std::uint16_t>(sign | q);
}

// ---- bulk conversions ---------------------------------------------------------------------------

namespace detail {
/// Little-endian load of a T from unaligned bytes.
template <class T>
[[nodiscard]] inline T load_le(const std::byte* p) noexcept {
    T v;
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(&v, p, sizeof(T));
    } else {
        unsigned char b[sizeof(T)];
        for (std::size_t k = 0; k < sizeof(T); ++k) b[k] = static_cast<unsigned char>(p[sizeof(T) - 1 - k]);
        std::memcpy(&v, b, sizeof(T));
    }
    return v;
}
/// Little-endian store of a T to unaligned bytes.
template <class T>
inline void store_le(std::byte* p, T v) noexcept {
    if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(p, &v, sizeof(T));
    } else {
        unsigned char b[sizeof(T)];
        std::memcpy(b, &v, sizeof(T));
        for (std::size_t k = 0; k < sizeof(T); ++k) p[k] = static_cast<std::byte>(b[sizeof(T) - 1 - k]);
    }
}
} // namespace detail

/// True if `to_float` converts `t`: BF16, F16, F32, F64, I8, U8.
[[nodiscard]] constexpr bool converts_to_float(st_dtype t) noexcept {
    return t == st_dtype::BF16 || t == st_dtype::F16 || t == st_dtype::F32 || t == st_dtype::F64 ||
           t == st_dtype::I8 || t == st_dtype::U8;
}

/// Converts `out.size()` little-endian elements of `dtype` from `bytes` (any alignment) to float:
/// BF16 and F16 exactly (see above), F32 bit for bit, F64 rounded to nearest (overflow → ±Inf), I8
/// and U8 to their integer values. O(n).
/// \throws invalid_argument (dtype not one of those six; the message names it), shape_error
/// (`bytes.size()` ≠ `out.size()` × element size).
inline void to_float(st_dtype dtype, std::span<const std::byte> bytes, std::span<float> out) {
    constexpr const char* where = "io::to_float";
    lowbit::detail::require(converts_to_float(dtype), where,
                            std::string("dtype ") + dtype_name(dtype) + " has no float conversion (BF16, F16, F32, F64, I8, U8)");
    const std::size_t size = static_cast<std::size_t>(dtype_bits(dtype) / 8);
    lowbit::detail::require<shape_error>(bytes.size() / size == out.size() && bytes.size() % size == 0, where,
                                         std::to_string(bytes.size()) + " bytes of " + dtype_name(dtype) + " for " +
                                             std::to_string(out.size()) + " floats");
    const std::byte* p = bytes.data();
    const std::size_t n = out.size();
    switch (dtype) {
    case st_dtype::BF16:
        for (std::size_t i = 0; i < n; ++i) out[i] = bf16_to_float(detail::load_le<std::uint16_t>(p + 2 * i));
        break;
    case st_dtype::F16:
        for (std::size_t i = 0; i < n; ++i) out[i] = f16_to_float(detail::load_le<std::uint16_t>(p + 2 * i));
        break;
    case st_dtype::F32:
        for (std::size_t i = 0; i < n; ++i) out[i] = detail::load_le<float>(p + 4 * i);
        break;
    case st_dtype::F64:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(detail::load_le<double>(p + 8 * i));
        break;
    case st_dtype::I8:
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<std::int8_t>(p[i]));
        break;
    default: // U8
        for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(static_cast<std::uint8_t>(p[i]));
        break;
    }
}

/// Converts a whole tensor's elements (row-major order, any rank) into `out`. O(numel).
/// \throws as the span overload; shape_error also if `out.size()` ≠ numel.
inline void to_float(const tensor_view& t, std::span<float> out) {
    lowbit::detail::require<shape_error>(t.numel() == out.size(), "io::to_float",
                                         "tensor has " + std::to_string(t.numel()) + " elements, output " +
                                             std::to_string(out.size()));
    to_float(t.dtype, t.bytes, out);
}

/// Encodes floats as little-endian `dtype` elements into `out` (for writers): BF16 / F16 rounded to
/// nearest even (float_to_bf16 / float_to_f16), F32 bit for bit. O(n).
/// \throws invalid_argument (other dtypes), shape_error (`out.size()` ≠ `in.size()` × element size).
inline void from_float(std::span<const float> in, st_dtype dtype, std::span<std::byte> out) {
    constexpr const char* where = "io::from_float";
    lowbit::detail::require(dtype == st_dtype::BF16 || dtype == st_dtype::F16 || dtype == st_dtype::F32, where,
                            std::string("cannot encode floats as ") + dtype_name(dtype) + " (BF16, F16, F32)");
    const std::size_t size = dtype == st_dtype::F32 ? 4 : 2;
    lowbit::detail::require<shape_error>(out.size() / size == in.size() && out.size() % size == 0, where,
                                         std::to_string(out.size()) + " bytes of " + dtype_name(dtype) + " for " +
                                             std::to_string(in.size()) + " floats");
    std::byte* p = out.data();
    for (std::size_t i = 0; i < in.size(); ++i) {
        if (dtype == st_dtype::BF16) detail::store_le(p + 2 * i, float_to_bf16(in[i]));
        else if (dtype == st_dtype::F16) detail::store_le(p + 2 * i, float_to_f16(in[i]));
        else detail::store_le(p + 4 * i, in[i]);
    }
}

/// `from_float` into a new buffer of `in.size()` × element size bytes. \throws as from_float.
[[nodiscard]] inline std::vector<std::byte> from_float(std::span<const float> in, st_dtype dtype) {
    std::vector<std::byte> out(in.size() * (dtype == st_dtype::F32 ? 4 : 2));
    from_float(in, dtype, out);
    return out;
}

} // namespace io
LOWBIT_END_NAMESPACE
