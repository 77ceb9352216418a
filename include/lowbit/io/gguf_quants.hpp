#pragma once
/// \file io/gguf_quants.hpp
/// The tensor element types of GGUF files (ggml's `ggml_type`) and their block formats: sizes of
/// every type, dequantization to float of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K,
/// Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0, MXFP4 (and the integer types I8/I16/I32, F64), and quantization
/// from float to F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, TQ1_0, TQ2_0 and MXFP4.
///
/// Bit-exactness: the quantizers reproduce, byte for byte, `gguf.quants.quantize` of the `gguf`
/// PyPI package (llama.cpp's gguf-py, which mirrors ggml's `quantize_row_*_ref`), and the
/// dequantizers reproduce `gguf.quants.dequantize` bit for bit (tests/test_gguf_quants.cpp checks
/// both against vectors the package writes). The arithmetic is float32 in the package's order;
/// build with `-ffp-contract=off` (no fused multiply-add), as lowbit's tests do.
///
/// Layout of one block (little-endian; `d`, `m` are IEEE binary16; weights x_0..x_{B−1}):
///
/// | type  | B   | bytes | layout                                                                  |
/// |-------|-----|-------|-------------------------------------------------------------------------|
/// | Q8_0  | 32  | 34    | d, int8 q[32]: x = d·q                                                  |
/// | Q4_0  | 32  | 18    | d, qs[16]: x_j = d·(u−8), u of x_j in the low nibble of qs[j], of x_{j+16} in the high |
/// | Q4_1  | 32  | 20    | d, m, qs[16]: x = d·u + m                                               |
/// | Q5_0  | 32  | 22    | d, qh (u32, bit j = 5th bit of x_j), qs[16]: x = d·(u−16)               |
/// | Q5_1  | 32  | 24    | d, m, qh, qs[16]: x = d·u + m                                           |
/// | TQ1_0 | 256 | 54    | qs[48] (5 trits per byte, base 3, scaled by 256/243), qh[4] (4 trits each), d: x = d·(t−1) |
/// | TQ2_0 | 256 | 66    | qs[64] (2 bits per trit: x_{128g+32n+j} in bits 2n of byte 32g+j), d     |
/// | MXFP4 | 32  | 17    | e (E8M0), qs[16]: x = 2^(e−128)·k[u], k = doubled E2M1 values (0,1,2,3,4,6,8,12, negatives) |
/// | Q2_K…Q6_K | 256 | 84/110/144/176/210 | ggml's super-blocks (see the dequantizers)                    |
///
/// Quantization rules (the package's): Q8_0 d = amax/127, q = roundf(x/d) (half away from zero);
/// Q4_0 d = v/−8 with v the value of largest magnitude (first on ties), u = min(15, trunc(x/d + 8.5));
/// Q4_1/Q5_1 d = (max − min)/(2^b − 1), u = trunc((x − min)/d + 0.5); Q5_0 d = v/−16;
/// TQ1_0/TQ2_0 d = amax, t = roundf(x/d) + 1; MXFP4 e = floor(log2f(amax)) − 2 + 127 (0 for an all-zero
/// block), u = the first index of the nearest kvalue.
///
/// Errors: unknown types, rows that are not a whole number of blocks, buffers of the wrong size,
/// types without a dequantizer/quantizer and non-finite input to a quantizer throw (`format_error`
/// for stored data, `invalid_argument`/`shape_error`/`numeric_error` for caller arguments).
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/io/dtype_convert.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

LOWBIT_BEGIN_NAMESPACE
namespace io {

/// ggml's tensor element types (the numeric values are the GGUF file's).
enum class ggml_type : std::uint32_t {
    f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9,
    q2_k = 10, q3_k = 11, q4_k = 12, q5_k = 13, q6_k = 14, q8_k = 15,
    iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23,
    i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30, tq1_0 = 34, tq2_0 = 35,
    mxfp4 = 39,
};

/// Constants of one ggml type.
struct ggml_type_traits {
    ggml_type type;          ///< the type
    const char* name;        ///< ggml's name ("Q4_0", "TQ2_0", ...)
    int block_size;          ///< weights per block (1 for plain types)
    int type_size;           ///< bytes per block
    bool dequantize;         ///< `dequantize_row` supports it
    bool quantize;           ///< `quantize_row` supports it
};

namespace detail {
inline constexpr ggml_type_traits ggml_types[] = {
    {ggml_type::f32, "F32", 1, 4, true, true},         {ggml_type::f16, "F16", 1, 2, true, true},
    {ggml_type::q4_0, "Q4_0", 32, 18, true, true},     {ggml_type::q4_1, "Q4_1", 32, 20, true, true},
    {ggml_type::q5_0, "Q5_0", 32, 22, true, true},     {ggml_type::q5_1, "Q5_1", 32, 24, true, true},
    {ggml_type::q8_0, "Q8_0", 32, 34, true, true},     {ggml_type::q8_1, "Q8_1", 32, 40, false, false},
    {ggml_type::q2_k, "Q2_K", 256, 84, true, false},   {ggml_type::q3_k, "Q3_K", 256, 110, true, false},
    {ggml_type::q4_k, "Q4_K", 256, 144, true, false},  {ggml_type::q5_k, "Q5_K", 256, 176, true, false},
    {ggml_type::q6_k, "Q6_K", 256, 210, true, false},  {ggml_type::q8_k, "Q8_K", 256, 292, false, false},
    {ggml_type::iq2_xxs, "IQ2_XXS", 256, 66, false, false}, {ggml_type::iq2_xs, "IQ2_XS", 256, 74, false, false},
    {ggml_type::iq3_xxs, "IQ3_XXS", 256, 98, false, false}, {ggml_type::iq1_s, "IQ1_S", 256, 50, false, false},
    {ggml_type::iq4_nl, "IQ4_NL", 32, 18, false, false},    {ggml_type::iq3_s, "IQ3_S", 256, 110, false, false},
    {ggml_type::iq2_s, "IQ2_S", 256, 82, false, false},     {ggml_type::iq4_xs, "IQ4_XS", 256, 136, false, false},
    {ggml_type::i8, "I8", 1, 1, true, false},          {ggml_type::i16, "I16", 1, 2, true, false},
    {ggml_type::i32, "I32", 1, 4, true, false},        {ggml_type::i64, "I64", 1, 8, false, false},
    {ggml_type::f64, "F64", 1, 8, true, false},        {ggml_type::iq1_m, "IQ1_M", 256, 56, false, false},
    {ggml_type::bf16, "BF16", 1, 2, true, true},       {ggml_type::tq1_0, "TQ1_0", 256, 54, true, true},
    {ggml_type::tq2_0, "TQ2_0", 256, 66, true, true},  {ggml_type::mxfp4, "MXFP4", 32, 17, true, true},
};
} // namespace detail

/// The traits of type value `t` (as read from a file), or nullptr if lowbit does not know it. O(1).
[[nodiscard]] inline const ggml_type_traits* find_ggml_type(std::uint32_t t) noexcept {
    for (const auto& e : detail::ggml_types)
        if (static_cast<std::uint32_t>(e.type) == t) return &e;
    return nullptr;
}

/// The traits of `t`. \throws invalid_argument (a value outside the enumeration).
[[nodiscard]] inline const ggml_type_traits& ggml_traits(ggml_type t) {
    const auto* e = find_ggml_type(static_cast<std::uint32_t>(t));
    if (!e) throw invalid_argument("lowbit: gguf: unknown ggml type " + std::to_string(static_cast<std::uint32_t>(t)));
    return *e;
}

/// ggml's name of `t` ("Q4_0"); "?" for an unknown value.
[[nodiscard]] inline const char* ggml_type_name(ggml_type t) noexcept {
    const auto* e = find_ggml_type(static_cast<std::uint32_t>(t));
    return e ? e->name : "?";
}

/// The type called `name` (ggml's spelling, case-insensitive: "q4_0", "TQ2_0").
/// \throws invalid_argument naming the known types.
[[nodiscard]] inline ggml_type ggml_type_from_name(std::string_view name) {
    std::string all;
    for (const auto& e : detail::ggml_types) {
        const std::string_view n = e.name;
        bool eq = n.size() == name.size();
        for (std::size_t i = 0; eq && i < n.size(); ++i) {
            char c = name[i];
            if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
            eq = c == n[i];
        }
        if (eq) return e.type;
        all += all.empty() ? "" : ", ";
        all += e.name;
    }
    throw invalid_argument("lowbit: gguf: unknown ggml type '" + std::string(name) + "' (known: " + all + ")");
}

/// Bytes of a row of `n` weights of type `t`. \throws invalid_argument (unknown type), shape_error
/// (n not a multiple of the block size).
[[nodiscard]] inline std::uint64_t ggml_row_bytes(ggml_type t, std::uint64_t n) {
    const auto& tr = ggml_traits(t);
    if (n % static_cast<std::uint64_t>(tr.block_size) != 0)
        throw shape_error("lowbit: gguf: a row of " + std::to_string(n) + " weights is not a whole number of " +
                          tr.name + " blocks (" + std::to_string(tr.block_size) + ")");
    return n / static_cast<std::uint64_t>(tr.block_size) * static_cast<std::uint64_t>(tr.type_size);
}

namespace detail {

inline float ld_f16(const std::byte* p) noexcept { return f16_to_float(load_le<std::uint16_t>(p)); }
inline std::uint8_t u8(const std::byte* p) noexcept { return static_cast<std::uint8_t>(*p); }

/// gguf.quants.np_roundf: round half away from zero, in float32: sign(n)·(floor|n| + floor(2(|n| − floor|n|))).
inline float np_roundf(float n) noexcept {
    const float a = std::fabs(n);
    const float fl = std::floor(a);
    const float b = fl + std::floor(2.0f * (a - fl));
    return n > 0.0f ? b : (n < 0.0f ? -b : 0.0f);
}

/// numpy float32 → float16 (round to nearest even), as the package's `astype(np.float16)`.
inline void st_f16(std::byte* p, float f) noexcept { store_le<std::uint16_t>(p, float_to_f16(f)); }

/// 1/d, or 0 for d == 0 (the package's `np.where(d == 0, 0, 1 / d)`).
inline float inv_or_zero(float d) noexcept { return d == 0.0f ? 0.0f : 1.0f / d; }

/// ggml_e8m0_to_fp32_half: 2^(e − 128) as a float (e < 2 gives the subnormal 2^(e−128)).
inline float e8m0_half(std::uint8_t e) noexcept {
    const std::uint32_t bits = e < 2 ? (0x00200000u << e) : (static_cast<std::uint32_t>(e - 1) << 23);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline constexpr std::int8_t mxfp4_kvalues[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// ---- dequantizers of one block ------------------------------------------------------------------

inline void dq_q8_0(const std::byte* b, float* y) {
    const float d = ld_f16(b);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(u8(b + 2 + j))) * d;
}
inline void dq_q4_0(const std::byte* b, float* y) {
    const float d = ld_f16(b);
    for (int j = 0; j < 16; ++j) {
        const int q = u8(b + 2 + j);
        y[j] = d * static_cast<float>((q & 15) - 8);
        y[j + 16] = d * static_cast<float>((q >> 4) - 8);
    }
}
inline void dq_q4_1(const std::byte* b, float* y) {
    const float d = ld_f16(b), m = ld_f16(b + 2);
    for (int j = 0; j < 16; ++j) {
        const int q = u8(b + 4 + j);
        y[j] = d * static_cast<float>(q & 15) + m;
        y[j + 16] = d * static_cast<float>(q >> 4) + m;
    }
}
inline void dq_q5_0(const std::byte* b, float* y) {
    const float d = ld_f16(b);
    const std::uint32_t qh = load_le<std::uint32_t>(b + 2);
    for (int j = 0; j < 16; ++j) {
        const int q = u8(b + 6 + j);
        const int lo = (q & 15) | static_cast<int>(((qh >> j) & 1u) << 4);
        const int hi = (q >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * static_cast<float>(lo - 16);
        y[j + 16] = d * static_cast<float>(hi - 16);
    }
}
inline void dq_q5_1(const std::byte* b, float* y) {
    const float d = ld_f16(b), m = ld_f16(b + 2);
    const std::uint32_t qh = load_le<std::uint32_t>(b + 4);
    for (int j = 0; j < 16; ++j) {
        const int q = u8(b + 8 + j);
        const int lo = (q & 15) | static_cast<int>(((qh >> j) & 1u) << 4);
        const int hi = (q >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * static_cast<float>(lo) + m;
        y[j + 16] = d * static_cast<float>(hi) + m;
    }
}
inline void dq_q2_k(const std::byte* b, float* y) {
    const std::byte* sc = b;        // 16
    const std::byte* qs = b + 16;   // 64
    const float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, s = (i % 128) / 32, l = i % 32;
        const int q = (u8(qs + h * 32 + l) >> (2 * s)) & 3;
        const int sb = u8(sc + i / 16);
        const float dl = d * static_cast<float>(sb & 15);
        const float ml = dmin * static_cast<float>(sb >> 4);
        y[i] = dl * static_cast<float>(q) - ml;
    }
}
inline void dq_q3_k(const std::byte* b, float* y) {
    const std::byte* hmask = b;     // 32
    const std::byte* qs = b + 32;   // 64
    const std::byte* sc = b + 96;   // 12
    const float d = ld_f16(b + 108);
    float dl[16];
    for (int i = 0; i < 16; ++i) {
        const int a = i / 8, c = i % 8;
        const int lo = (u8(sc + c) >> (4 * a)) & 15;
        const int a2 = i / 4, c2 = i % 4;
        const int hi = (u8(sc + 8 + c2) >> (2 * a2)) & 3;
        dl[i] = d * static_cast<float>(static_cast<std::int8_t>(static_cast<std::uint8_t>(lo | (hi << 4))) - 32);
    }
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, s = (i % 128) / 32, l = i % 32;
        const int ql = (u8(qs + h * 32 + l) >> (2 * s)) & 3;
        const int qh = ((u8(hmask + l) >> (i / 32)) & 1) ^ 1;
        y[i] = dl[i / 16] * static_cast<float>(ql - (qh << 2));
    }
}
inline void k_scale_min(const std::byte* s, int j, int& sc, int& m) {
    if (j < 4) {
        sc = u8(s + j) & 63;
        m = u8(s + 4 + j) & 63;
    } else {
        sc = (u8(s + 4 + j) & 15) | ((u8(s + j - 4) >> 2) & 0x30);
        m = (u8(s + 4 + j) >> 4) | ((u8(s + j) >> 2) & 0x30);
    }
}
inline void dq_q4_k(const std::byte* b, float* y) {
    const float d = ld_f16(b), dmin = ld_f16(b + 2);
    const std::byte* scales = b + 4; // 12
    const std::byte* qs = b + 16;    // 128
    for (int sb = 0; sb < 8; ++sb) {
        int sc = 0, m = 0;
        k_scale_min(scales, sb, sc, m);
        const float dd = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
        for (int l = 0; l < 32; ++l) {
            const int c = sb / 2, s = sb % 2;
            const int q = (u8(qs + c * 32 + l) >> (4 * s)) & 15;
            y[sb * 32 + l] = dd * static_cast<float>(q) - dm;
        }
    }
}
inline void dq_q5_k(const std::byte* b, float* y) {
    const float d = ld_f16(b), dmin = ld_f16(b + 2);
    const std::byte* scales = b + 4; // 12
    const std::byte* qh = b + 16;    // 32
    const std::byte* qs = b + 48;    // 128
    for (int sb = 0; sb < 8; ++sb) {
        int sc = 0, m = 0;
        k_scale_min(scales, sb, sc, m);
        const float dd = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
        for (int l = 0; l < 32; ++l) {
            const int c = sb / 2, s = sb % 2;
            const int ql = (u8(qs + c * 32 + l) >> (4 * s)) & 15;
            const int h = (u8(qh + l) >> sb) & 1;
            y[sb * 32 + l] = dd * static_cast<float>(ql | (h << 4)) - dm;
        }
    }
}
inline void dq_q6_k(const std::byte* b, float* y) {
    const std::byte* ql = b;        // 128
    const std::byte* qh = b + 128;  // 64
    const std::byte* sc = b + 192;  // 16 int8
    const float d = ld_f16(b + 208);
    for (int i = 0; i < 256; ++i) {
        const int h = i / 128, r = i % 128;
        const int s = r / 64, l = r % 64;
        const int lo = (u8(ql + h * 64 + l) >> (4 * s)) & 15;
        const int s2 = r / 32, l2 = r % 32;
        const int hi = (u8(qh + h * 32 + l2) >> (2 * s2)) & 3;
        const int q = (lo | (hi << 4)) - 32;
        const float dd = d * static_cast<float>(static_cast<std::int8_t>(u8(sc + i / 16)));
        y[i] = dd * static_cast<float>(q);
    }
}
inline void dq_tq1_0(const std::byte* b, float* y) {
    const std::byte* qs = b;       // 48
    const std::byte* qh = b + 48;  // 4
    const float d = ld_f16(b + 52);
    static constexpr std::uint8_t pw[5] = {1, 3, 9, 27, 81};
    auto trit = [](std::uint8_t v, std::uint8_t p) {
        const auto s = static_cast<std::uint8_t>(v * p); // uint8 product wraps
        return static_cast<int>((static_cast<std::uint16_t>(s) * 3u) >> 8) - 1;
    };
    for (int n = 0; n < 5; ++n)
        for (int j = 0; j < 32; ++j) y[n * 32 + j] = d * static_cast<float>(trit(u8(qs + j), pw[n]));
    for (int n = 0; n < 5; ++n)
        for (int j = 0; j < 16; ++j) y[160 + n * 16 + j] = d * static_cast<float>(trit(u8(qs + 32 + j), pw[n]));
    for (int n = 0; n < 4; ++n)
        for (int j = 0; j < 4; ++j) y[240 + n * 4 + j] = d * static_cast<float>(trit(u8(qh + j), pw[n]));
}
inline void dq_tq2_0(const std::byte* b, float* y) {
    const float d = ld_f16(b + 64);
    for (int g = 0; g < 2; ++g)
        for (int n = 0; n < 4; ++n)
            for (int j = 0; j < 32; ++j) {
                const int q = ((u8(b + g * 32 + j) >> (2 * n)) & 3) - 1;
                y[g * 128 + n * 32 + j] = d * static_cast<float>(q);
            }
}
inline void dq_mxfp4(const std::byte* b, float* y) {
    const float d = e8m0_half(u8(b));
    for (int j = 0; j < 16; ++j) {
        const int q = u8(b + 1 + j);
        y[j] = d * static_cast<float>(mxfp4_kvalues[q & 15]);
        y[j + 16] = d * static_cast<float>(mxfp4_kvalues[q >> 4]);
    }
}

// ---- quantizers of one block --------------------------------------------------------------------

inline void q_q8_0(const float* x, std::byte* out) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = inv_or_zero(d);
    st_f16(out, d);
    for (int j = 0; j < 32; ++j)
        out[2 + j] = static_cast<std::byte>(static_cast<std::uint8_t>(static_cast<std::int8_t>(np_roundf(x[j] * id))));
}
/// Value of the first element of largest magnitude (numpy argmax of |x|).
inline float signed_absmax(const float* x, int n) {
    int im = 0;
    float am = std::fabs(x[0]);
    for (int j = 1; j < n; ++j)
        if (std::fabs(x[j]) > am) {
            am = std::fabs(x[j]);
            im = j;
        }
    return x[im];
}
inline std::uint8_t trunc_clip(float v, int hi) {
    const float t = std::trunc(v);
    const int q = t <= 0.0f ? 0 : (t >= static_cast<float>(hi) ? hi : static_cast<int>(t));
    return static_cast<std::uint8_t>(q);
}
inline void q_q4_0(const float* x, std::byte* out) {
    const float d = signed_absmax(x, 32) / -8.0f;
    const float id = inv_or_zero(d);
    st_f16(out, d);
    for (int j = 0; j < 16; ++j) {
        const std::uint8_t a = trunc_clip(x[j] * id + 8.5f, 15), b = trunc_clip(x[j + 16] * id + 8.5f, 15);
        out[2 + j] = static_cast<std::byte>(a | (b << 4));
    }
}
inline void minmax(const float* x, int n, float& mn, float& mx) {
    mn = mx = x[0];
    for (int j = 1; j < n; ++j) {
        mn = std::min(mn, x[j]);
        mx = std::max(mx, x[j]);
    }
}
inline void q_q4_1(const float* x, std::byte* out) {
    float mn, mx;
    minmax(x, 32, mn, mx);
    const float d = (mx - mn) / 15.0f;
    const float id = inv_or_zero(d);
    st_f16(out, d);
    st_f16(out + 2, mn);
    for (int j = 0; j < 16; ++j) {
        const std::uint8_t a = trunc_clip((x[j] - mn) * id + 0.5f, 15), b = trunc_clip((x[j + 16] - mn) * id + 0.5f, 15);
        out[4 + j] = static_cast<std::byte>(a | (b << 4));
    }
}
inline void put_q5(const std::uint8_t* q, std::byte* qh_out, std::byte* qs_out) {
    std::uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= static_cast<std::uint32_t>((q[j] >> 4) & 1) << j;
    store_le<std::uint32_t>(qh_out, qh);
    for (int j = 0; j < 16; ++j) qs_out[j] = static_cast<std::byte>((q[j] & 15) | ((q[j + 16] & 15) << 4));
}
inline void q_q5_0(const float* x, std::byte* out) {
    const float d = signed_absmax(x, 32) / -16.0f;
    const float id = inv_or_zero(d);
    st_f16(out, d);
    std::uint8_t q[32];
    for (int j = 0; j < 32; ++j) q[j] = trunc_clip(x[j] * id + 16.5f, 31);
    put_q5(q, out + 2, out + 6);
}
inline void q_q5_1(const float* x, std::byte* out) {
    float mn, mx;
    minmax(x, 32, mn, mx);
    const float d = (mx - mn) / 31.0f;
    const float id = inv_or_zero(d);
    st_f16(out, d);
    st_f16(out + 2, mn);
    std::uint8_t q[32];
    for (int j = 0; j < 32; ++j) q[j] = trunc_clip((x[j] - mn) * id + 0.5f, 31);
    put_q5(q, out + 4, out + 8);
}
inline void ternary_digits(const float* x, std::uint8_t* u, float& d) {
    float amax = 0.0f;
    for (int j = 0; j < 256; ++j) amax = std::max(amax, std::fabs(x[j]));
    d = amax;
    const float id = inv_or_zero(d);
    for (int j = 0; j < 256; ++j) u[j] = static_cast<std::uint8_t>(static_cast<int>(np_roundf(x[j] * id)) + 1);
}
inline std::uint8_t tq1_pack(unsigned v) { return static_cast<std::uint8_t>((v * 256u + 242u) / 243u); }
inline void q_tq1_0(const float* x, std::byte* out) {
    std::uint8_t u[256];
    float d = 0.0f;
    ternary_digits(x, u, d);
    static constexpr unsigned pw[5] = {81, 27, 9, 3, 1};
    for (int j = 0; j < 32; ++j) {
        unsigned v = 0;
        for (int n = 0; n < 5; ++n) v += u[n * 32 + j] * pw[n];
        out[j] = static_cast<std::byte>(tq1_pack(v));
    }
    for (int j = 0; j < 16; ++j) {
        unsigned v = 0;
        for (int n = 0; n < 5; ++n) v += u[160 + n * 16 + j] * pw[n];
        out[32 + j] = static_cast<std::byte>(tq1_pack(v));
    }
    for (int j = 0; j < 4; ++j) {
        unsigned v = 0;
        for (int n = 0; n < 4; ++n) v += u[240 + n * 4 + j] * pw[n];
        out[48 + j] = static_cast<std::byte>(tq1_pack(v));
    }
    st_f16(out + 52, d);
}
inline void q_tq2_0(const float* x, std::byte* out) {
    std::uint8_t u[256];
    float d = 0.0f;
    ternary_digits(x, u, d);
    for (int g = 0; g < 2; ++g)
        for (int j = 0; j < 32; ++j) {
            unsigned v = 0;
            for (int n = 0; n < 4; ++n) v |= static_cast<unsigned>(u[g * 128 + n * 32 + j]) << (2 * n);
            out[g * 32 + j] = static_cast<std::byte>(v);
        }
    st_f16(out + 64, d);
}
inline void q_mxfp4(const float* x, std::byte* out) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    // numpy: (floor(log2(d)) - 2 + 127).astype(uint8) (values outside 0..255 wrap as the cast does on x86)
    const std::uint8_t e = amax > 0.0f ? static_cast<std::uint8_t>(static_cast<int>(std::floor(std::log2f(amax)) - 2.0f + 127.0f) & 255) : 0;
    const float d = e8m0_half(e);
    std::uint8_t q[32];
    for (int j = 0; j < 32; ++j) {
        int best = 0;
        float be = std::fabs(d * static_cast<float>(mxfp4_kvalues[0]) - x[j]);
        for (int k = 1; k < 16; ++k) {
            const float err = std::fabs(d * static_cast<float>(mxfp4_kvalues[k]) - x[j]);
            if (err < be) {
                be = err;
                best = k;
            }
        }
        q[j] = static_cast<std::uint8_t>(best);
    }
    out[0] = static_cast<std::byte>(e);
    for (int j = 0; j < 16; ++j) out[1 + j] = static_cast<std::byte>(q[j] | (q[j + 16] << 4));
}
/// gguf.quants.BF16: NaN forced quiet, then round to nearest even on the top 16 bits.
inline std::uint16_t bf16_ggml(float f) noexcept {
    std::uint32_t n;
    std::memcpy(&n, &f, 4);
    if ((n & 0x7fffffffu) > 0x7f800000u) n = (n & 0xffff0000u) | (64u << 16);
    return static_cast<std::uint16_t>((static_cast<std::uint64_t>(n) + (0x7fffu + ((n >> 16) & 1u))) >> 16);
}

} // namespace detail

/// Decodes `out.size()` weights of type `t` from `in` (exactly `ggml_row_bytes(t, out.size())`
/// bytes, any alignment) into float, bit-exact with `gguf.quants.dequantize`. O(n).
/// \throws invalid_argument (a type without a dequantizer: IQ*, Q8_1, Q8_K, I64), shape_error
/// (out.size() not a multiple of the block size, in.size() not the row's bytes).
inline void dequantize_row(ggml_type t, std::span<const std::byte> in, std::span<float> out) {
    const auto& tr = ggml_traits(t);
    if (!tr.dequantize) throw invalid_argument(std::string("lowbit: gguf: no dequantizer for type ") + tr.name);
    const std::uint64_t need = ggml_row_bytes(t, out.size());
    if (in.size() != need)
        throw shape_error("lowbit: gguf: dequantize_row: " + std::to_string(in.size()) + " bytes for " +
                          std::to_string(out.size()) + " " + tr.name + " weights (needs " + std::to_string(need) + ")");
    const std::byte* p = in.data();
    float* y = out.data();
    const std::size_t n = out.size();
    using namespace detail;
    switch (t) {
    case ggml_type::f32: for (std::size_t i = 0; i < n; ++i) y[i] = load_le<float>(p + 4 * i); return;
    case ggml_type::f16: for (std::size_t i = 0; i < n; ++i) y[i] = ld_f16(p + 2 * i); return;
    case ggml_type::bf16: for (std::size_t i = 0; i < n; ++i) y[i] = bf16_to_float(load_le<std::uint16_t>(p + 2 * i)); return;
    case ggml_type::f64: for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(load_le<double>(p + 8 * i)); return;
    case ggml_type::i8: for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(static_cast<std::int8_t>(u8(p + i))); return;
    case ggml_type::i16: for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(load_le<std::int16_t>(p + 2 * i)); return;
    case ggml_type::i32: for (std::size_t i = 0; i < n; ++i) y[i] = static_cast<float>(load_le<std::int32_t>(p + 4 * i)); return;
    default: break;
    }
    void (*fn)(const std::byte*, float*) = nullptr;
    switch (t) {
    case ggml_type::q8_0: fn = dq_q8_0; break;
    case ggml_type::q4_0: fn = dq_q4_0; break;
    case ggml_type::q4_1: fn = dq_q4_1; break;
    case ggml_type::q5_0: fn = dq_q5_0; break;
    case ggml_type::q5_1: fn = dq_q5_1; break;
    case ggml_type::q2_k: fn = dq_q2_k; break;
    case ggml_type::q3_k: fn = dq_q3_k; break;
    case ggml_type::q4_k: fn = dq_q4_k; break;
    case ggml_type::q5_k: fn = dq_q5_k; break;
    case ggml_type::q6_k: fn = dq_q6_k; break;
    case ggml_type::tq1_0: fn = dq_tq1_0; break;
    case ggml_type::tq2_0: fn = dq_tq2_0; break;
    case ggml_type::mxfp4: fn = dq_mxfp4; break;
    default: throw invalid_argument(std::string("lowbit: gguf: no dequantizer for type ") + tr.name);
    }
    const std::size_t nb = n / static_cast<std::size_t>(tr.block_size);
    for (std::size_t b = 0; b < nb; ++b)
        fn(p + b * static_cast<std::size_t>(tr.type_size), y + b * static_cast<std::size_t>(tr.block_size));
}

/// Encodes `in` (finite floats, a whole number of blocks) as type `t` into `out` (exactly
/// `ggml_row_bytes(t, in.size())` bytes), byte-exact with `gguf.quants.quantize`. O(n) (MXFP4: 16
/// candidates per weight). \throws invalid_argument (a type without a quantizer: K/IQ types, integer
/// types), shape_error (sizes), numeric_error (NaN or Inf in `in`).
inline void quantize_row(ggml_type t, std::span<const float> in, std::span<std::byte> out) {
    const auto& tr = ggml_traits(t);
    if (!tr.quantize) throw invalid_argument(std::string("lowbit: gguf: no quantizer for type ") + tr.name);
    const std::uint64_t need = ggml_row_bytes(t, in.size());
    if (out.size() != need)
        throw shape_error("lowbit: gguf: quantize_row: " + std::to_string(out.size()) + " bytes for " +
                          std::to_string(in.size()) + " " + tr.name + " weights (needs " + std::to_string(need) + ")");
    for (float v : in)
        if (!std::isfinite(v)) throw numeric_error(std::string("lowbit: gguf: quantize_row: NaN or Inf in the input (") + tr.name + ")");
    const float* x = in.data();
    std::byte* p = out.data();
    const std::size_t n = in.size();
    using namespace detail;
    switch (t) {
    case ggml_type::f32: for (std::size_t i = 0; i < n; ++i) store_le<float>(p + 4 * i, x[i]); return;
    case ggml_type::f16: for (std::size_t i = 0; i < n; ++i) st_f16(p + 2 * i, x[i]); return;
    case ggml_type::bf16: for (std::size_t i = 0; i < n; ++i) store_le<std::uint16_t>(p + 2 * i, bf16_ggml(x[i])); return;
    default: break;
    }
    void (*fn)(const float*, std::byte*) = nullptr;
    switch (t) {
    case ggml_type::q8_0: fn = q_q8_0; break;
    case ggml_type::q4_0: fn = q_q4_0; break;
    case ggml_type::q4_1: fn = q_q4_1; break;
    case ggml_type::q5_0: fn = q_q5_0; break;
    case ggml_type::q5_1: fn = q_q5_1; break;
    case ggml_type::tq1_0: fn = q_tq1_0; break;
    case ggml_type::tq2_0: fn = q_tq2_0; break;
    case ggml_type::mxfp4: fn = q_mxfp4; break;
    default: throw invalid_argument(std::string("lowbit: gguf: no quantizer for type ") + tr.name);
    }
    const std::size_t nb = n / static_cast<std::size_t>(tr.block_size);
    for (std::size_t b = 0; b < nb; ++b)
        fn(x + b * static_cast<std::size_t>(tr.block_size), p + b * static_cast<std::size_t>(tr.type_size));
}

/// `quantize_row` into a new buffer. \throws as quantize_row.
[[nodiscard]] inline std::vector<std::byte> quantize(ggml_type t, std::span<const float> in) {
    std::vector<std::byte> out(static_cast<std::size_t>(ggml_row_bytes(t, in.size())));
    quantize_row(t, in, out);
    return out;
}

/// `dequantize_row` of `n` weights into a new buffer. \throws as dequantize_row.
[[nodiscard]] inline std::vector<float> dequantize(ggml_type t, std::span<const std::byte> in, std::size_t n) {
    std::vector<float> out(n);
    dequantize_row(t, in, out);
    return out;
}

} // namespace io
LOWBIT_END_NAMESPACE
