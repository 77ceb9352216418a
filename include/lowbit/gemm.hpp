#pragma once
/// \file gemm.hpp
/// GEMV y = W·x and GEMM Y = X·Wᵀ for bit-packed weights (pack.hpp) × activations that are
/// {int8 per token quantized dynamically inside, int2..int7 held in int8, fp32}, plus binary ×
/// binary XNOR-popcount.
///
/// Shapes: W is `packed_matrix<F>` or its 4-row interleaved form `interleaved_matrix<F>` (same
/// results bit for bit; faster GEMV on AVX-512) `[out x in]` (w_ij = α_i·t_ij + μ_i); X is `[tokens x in]`;
/// Y is `[tokens x out]`; a GEMV takes x of length in and returns y of length out.
///
/// Integer activations (act_int{bits}, bits ∈ 2..8): per token, s = max|x|/L with L = 2^(bits−1) − 1
/// (127, 63, 31, 15, 7, 3, 1; the codes are held in int8 whatever the width, so every kernel serves every width)
/// rounded to float and clamped to [1e-5, 1e4], q_j = clamp(round_half_even(x_j/s), −L, L) — the
/// symmetric grid of rtn.hpp's quantize_per_token. The kernel forms the exact int32
/// d_i = Σ_j t_ij·q_j and returns
///     y_i = (α_i·s)·d_i + μ_i·Σ_j x_j               (float; Σ x_j of the unquantized x, in double)
/// Error bound with respect to that formula in exact arithmetic: |Δy_i| ≤ 3u·(|α_i s d_i| + |μ_i Σx|)
/// + u·|μ_i Σx| (u = 2^-24), identical on every ISA path (d_i is bit-exact).
///
/// fp32 activations (act_fp32): y_i = α_i·Σ_j t_ij x_j + μ_i·Σ_j x_j with float accumulation;
/// |y_i − exact| ≤ (n + 2)·u·(α_i·Σ_j |t_ij x_j| + |μ_i|·Σ_j|x_j|) on every path (n = padded cols),
/// except binary1 on the AVX-512 per-token kernel (Σ t·x formed as 2·Σ_{t=+1} x − Σx):
/// ≤ (2n + 4)·u·(α_i + |μ_i|)·Σ_j|x_j|.
///
/// Grouped int4 (`grouped_int4_matrix`, per-group α_ig, μ_ig over G = 128 or 256 columns): the kernels
/// form exact int32 digit sums per nibble half of each block (`int4_half_dots` of every arch/ path:
/// scalar, generic, avx2, avx512 — also run for an amx request —, neon baseline ASIMD), combined
/// into d_ig = Σ_{j∈g} t_ij·q_j and y_i = Σ_g (α_ig·s)·d_ig + μ_ig·Σ_{j∈g} x_j in double (`gemm`,
/// `gemm_into`, `gemv`, `dot_groups`; bounds at each). With fp32 activations (weight-only): an AVX-512
/// kernel decoding the nibbles in registers and scaling each group's lane sums by α_ig (avx512 and
/// amx requests; an AVX2 one for avx2), a portable loop elsewhere, Eigen GEMM on rows decoded to float from 4 (AVX-512: 32)
/// tokens; bound at `gemm_into(grouped_int4_matrix, …, act_fp32, …)`.
///
/// ISA: `kernel_isa::automatic` picks, once per call, the best of avx512 (F/BW/VL/VNNI/VPOPCNTDQ/VBMI),
/// avx2, neon (aarch64; `sdot` / `smmla` when the CPU has them), generic (xsimd in the caller's
/// default architecture) available on the running CPU; scalar is the reference. For the integer
/// GEMM of packed_matrix / interleaved_matrix with at least detail::amx_min_tokens tokens
/// (prefill), `automatic` uses amx (AMX-INT8 tiles) when the CPU and OS provide it; an explicit
/// `amx` request uses it for any token count. Explicitly requesting an ISA the CPU lacks throws
/// invalid_argument. fp32 activations: avx512 (and an amx request) and avx2 run their own kernels
/// (arch/avx512_fp32.hpp, arch/avx2_fp32.hpp); neon and generic requests run the generic (xsimd)
/// path (grouped int4: see above). MXFP4 and
/// XNOR run their avx512 kernels for an amx request.
///
/// Threads: none are created. `gemm_rows` / `dot_rows` compute a row range so callers can split
/// work; `gemm_parallel` splits rows with OpenMP when the consumer compiles with it (`_OPENMP`),
/// otherwise runs serially.

#include <lowbit/arch/amx.hpp>
#include <lowbit/arch/avx2.hpp>
#include <lowbit/arch/avx2_fp32.hpp>
#include <lowbit/arch/avx512.hpp>
#include <lowbit/arch/avx512_fp32.hpp>
#include <lowbit/arch/generic.hpp>
#include <lowbit/arch/neon.hpp>
#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/error.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Instruction-set path of the kernels.
enum class kernel_isa {
    automatic, ///< best available on this CPU (chosen once per call)
    scalar,    ///< the scalar reference
    generic,   ///< xsimd with the translation unit's default architecture
    neon,      ///< ARM NEON (ASIMD; `sdot`, `smmla` when present), aarch64 only; integer kernels
    avx2,      ///< AVX2 (maddubs), x86 only
    avx512,    ///< AVX-512 VNNI / VPOPCNTDQ, x86 only
    amx,       ///< AMX-INT8 tiles for the integer GEMM (other kernels: avx512), x86-64 only
};

/// True if `isa` can run on this CPU (scalar, generic, automatic always can).
[[nodiscard]] inline bool isa_available(kernel_isa isa) noexcept {
    switch (isa) {
    case kernel_isa::avx2: return detail::host_cpu_features().avx2;
    case kernel_isa::avx512: return detail::host_cpu_features().avx512;
    case kernel_isa::amx: return detail::host_cpu_features().amx;
    case kernel_isa::neon: return LOWBIT_HAVE_NEON_KERNELS != 0;
    default: return true;
    }
}

/// The ISA `automatic` resolves to on this CPU (integer GEMM with ≥ detail::amx_min_tokens tokens:
/// amx instead, when available).
[[nodiscard]] inline kernel_isa best_isa() noexcept {
    if (isa_available(kernel_isa::avx512)) return kernel_isa::avx512;
    if (isa_available(kernel_isa::avx2)) return kernel_isa::avx2;
    if (isa_available(kernel_isa::neon)) return kernel_isa::neon;
    return kernel_isa::generic;
}

/// Name of an ISA ("scalar", "generic", "avx2", "avx512", "amx", "neon", "automatic").
[[nodiscard]] inline const char* isa_name(kernel_isa isa) noexcept {
    switch (isa) {
    case kernel_isa::scalar: return "scalar";
    case kernel_isa::generic: return "generic";
    case kernel_isa::avx2: return "avx2";
    case kernel_isa::avx512: return "avx512";
    case kernel_isa::amx: return "amx";
    case kernel_isa::neon: return "neon";
    default: return "automatic";
    }
}

/// Activation policy: dynamic symmetric per-token integers with `bits` ∈ 2..8 held in int8 (2 bits:
/// codes {−1, 0, 1}; 3 bits: −3..3).
struct act_int {
    int bits = 8;
};
/// Activation policy: fp32 activations (weights decoded to float inside the kernel).
struct act_fp32 {};

/// Activations quantized per token, zero-padded to `padded_cols()` = max(⌈cols/256⌉·256,
/// ⌈cols/320⌉·320), so that one quantization serves every packed format of `cols` columns.
struct quantized_activations {
    int bits = 8;                   ///< 2..8
    Eigen::Index cols = 0;          ///< unpadded columns
    matrix_i8 q;                    ///< [tokens x padded] codes in [−L, L]
    vector_f scale;                 ///< s per token
    std::vector<std::int32_t> qsum; ///< Σ_j q_j per token
    vector_f sum;                   ///< Σ_j x_j per token (unquantized, for the μ term)
    [[nodiscard]] Eigen::Index tokens() const noexcept { return q.rows(); }     ///< tokens
    [[nodiscard]] Eigen::Index padded_cols() const noexcept { return q.cols(); } ///< padded columns
};

namespace detail {

/// Padded width of quantized activations of n columns: max(⌈n/256⌉·256, ⌈n/320⌉·320), at least the
/// padded width of every packed format of n columns (blocks of 256 and 320 weights; MXFP4's 32
/// divides 256). O(1).
[[nodiscard]] constexpr Eigen::Index padded_activation_cols(Eigen::Index n) noexcept {
    return std::max((n + 255) / 256 * 256, (n + 319) / 320 * 320);
}
/// Largest accepted row length: keeps |Σ t·q| ≤ 8·127·cols < 2^31.
inline constexpr Eigen::Index max_kernel_cols = Eigen::Index(1) << 21;

inline kernel_isa resolve_isa(kernel_isa isa, const char* where) {
    if (isa == kernel_isa::automatic) return best_isa();
    require(isa_available(isa), where, [&] { return std::string("argument 'isa' = ") + isa_name(isa) + " is not supported by this CPU"; });
    return isa;
}

/// From this many tokens on, `automatic` runs the integer GEMM of packed_matrix / interleaved_matrix
/// on AMX (when available) instead of AVX-512: below it the per-call weight unpacking into tiles
/// and the padding of token groups to 16 cost more than the tile products save.
/// Measured (4096², 1 thread, ternary2 / int4): see docs/kernels.md "AMX-INT8 prefill".
inline constexpr Eigen::Index amx_min_tokens = 16;

/// resolve_isa for the integer GEMM of `tokens` tokens: `automatic` becomes amx from amx_min_tokens
/// tokens on when the CPU has it.
inline kernel_isa resolve_gemm_isa(kernel_isa isa, Eigen::Index tokens, const char* where) {
    if (isa == kernel_isa::automatic && tokens >= amx_min_tokens && isa_available(kernel_isa::amx)) return kernel_isa::amx;
    return resolve_isa(isa, where);
}

inline void require_levels(int bits, const char* where) {
    require(bits >= 2 && bits <= 8, where, [&] { return "activation bits must lie in 2..8, got " + std::to_string(bits); });
}

template <PackedWeights M>
inline void require_kernel_shape(const M& w, Eigen::Index in_cols, const char* where, const char* what) {
    require<shape_error>(w.rows() > 0, where, "argument 'w' is empty");
    require<shape_error>(w.cols() <= max_kernel_cols, where, "w.cols() exceeds 2^21 (int32 accumulator bound)");
    require_dim(in_cols, w.cols(), where, what);
}

/// Integer kernels of one ISA for rows [r0, r1) on raw activation codes: `nt` tokens of `ldx`
/// int8 codes each (zero-padded to at least w.padded_cols()), `qsum` their Σq (dispatch point;
/// `isa` already resolved).
template <PackedWeights M>
inline void dot_rows_isa(kernel_isa isa, const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x,
                         Eigen::Index ldx, const std::int32_t* qsum, Eigen::Index nt, std::int32_t* out, Eigen::Index ldo) {
    switch (isa) {
#if LOWBIT_HAVE_AMX_KERNELS
    case kernel_isa::amx: amx_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
#endif
#if LOWBIT_HAVE_X86_KERNELS
    case kernel_isa::avx512: avx512_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
    case kernel_isa::avx2: avx2_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
#endif
#if LOWBIT_HAVE_NEON_KERNELS
    case kernel_isa::neon: neon_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
#endif
    case kernel_isa::generic: generic_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
    default: scalar_kernels::dot_rows(w, r0, r1, x, ldx, qsum, nt, out, ldo); return;
    }
}

/// Integer kernels of one ISA for rows [r0, r1) and the tokens of `a` (`isa` already resolved).
template <PackedWeights M>
inline void dot_rows_isa(kernel_isa isa, const M& w, Eigen::Index r0, Eigen::Index r1,
                         const quantized_activations& a, std::int32_t* out, Eigen::Index ldo) {
    dot_rows_isa(isa, w, r0, r1, a.q.data(), a.q.cols(), a.qsum.data(), a.q.rows(), out, ldo);
}

/// The scale of a token whose max|x| is `amax`: clamp(amax/L, 1e-5, 1e4) in double, rounded to float.
inline float activation_scale(float amax, int levels) {
    return static_cast<float>(std::clamp(static_cast<double>(amax) / levels, 1e-5, 1e4));
}

/// The per-token statistics of quantize_activations: s = clamp(max|x|/L, 1e-5, 1e4) as float, Σx in
/// double over 8 lane-interleaved partial sums (fixed order). The codes (quantize_row_body) are
/// q_j = clamp(round_half_even(x_j / s), −L, L) in double (IEEE-exact, so every compilation and
/// the AVX-512 `activation_codes_f64` give the same codes). Returns false if x has NaN/Inf. O(n).
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
inline bool quantize_row_stats(const float* x, Eigen::Index n, int levels, float& scale, double& sum) {
    // max|x| and the finiteness check over 16 independent lanes (vectorizable; a single running
    // max is one dependent chain of n maxss). Max is exact, so the lane split changes nothing.
    float m[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    int bad = 0;
    Eigen::Index j16 = 0;
    for (; j16 + 16 <= n; j16 += 16)
        for (int l = 0; l < 16; ++l) {
            const float v = std::fabs(x[j16 + l]);
            bad |= !(v <= std::numeric_limits<float>::max()); // NaN or Inf
            m[l] = m[l] < v ? v : m[l];
        }
    for (Eigen::Index j = j16; j < n; ++j) {
        const float v = std::fabs(x[j]);
        bad |= !(v <= std::numeric_limits<float>::max());
        m[j - j16] = m[j - j16] < v ? v : m[j - j16];
    }
    if (bad) return false;
    float amax = 0.0f;
    for (float v : m) amax = amax < v ? v : amax;
    // Σx in double over 8 interleaved partial sums (lane j mod 8), combined pairwise: the same order
    // in every compilation (so identical on every path) and vectorizable, unlike one serial chain
    // of n dependent adds (≈ 4 µs for n = 4096).
    double p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Eigen::Index j8 = 0;
    for (; j8 + 8 <= n; j8 += 8)
        for (int l = 0; l < 8; ++l) p[l] += static_cast<double>(x[j8 + l]);
    for (Eigen::Index j = j8; j < n; ++j) p[j - j8] += static_cast<double>(x[j]);
    sum = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
    scale = activation_scale(amax, levels);
    return true;
}

/// One token of quantize_activations (see quantize_row_stats for the rule); false on NaN/Inf. O(n).
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
inline bool quantize_row_body(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                              std::int32_t& qsum) {
    if (!quantize_row_stats(x, n, levels, scale, sum)) return false;
    const double den = static_cast<double>(scale), lim = static_cast<double>(levels);
    std::int32_t qs = 0;
    for (Eigen::Index j = 0; j < n; ++j) {
        const double r = std::clamp(std::nearbyint(static_cast<double>(x[j]) / den), -lim, lim);
        q[j] = static_cast<std::int8_t>(r);
        qs += q[j];
    }
    qsum = qs;
    return true;
}

/// quantize_row_body compiled for the caller's default architecture.
inline bool quantize_row(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                         std::int32_t& qsum) {
    return quantize_row_body(x, n, levels, q, scale, sum, qsum);
}

/// quantize_row_body compiled for AVX2 (auto-vectorized division/rounding); identical results.
#if LOWBIT_HAVE_X86_KERNELS
LOWBIT_TARGET("avx2,fma") inline bool quantize_row_avx2(const float* x, Eigen::Index n, int levels, std::int8_t* q,
                                                         float& scale, double& sum, std::int32_t& qsum) {
    return quantize_row_body(x, n, levels, q, scale, sum, qsum);
}
/// quantize_row_body for AVX-512: the statistics 16 lanes at a time (`avx512_kernels::activation_stats`),
/// the codes without a division (`activation_codes_f32`: reciprocal, then an exact FMA boundary test;
/// `activation_codes_f64` for a scale outside float_codes_exact's range); identical results.
LOWBIT_TARGET("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
inline bool quantize_row_avx512(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                                std::int32_t& qsum) {
    float amax = 0.0f;
    if (!avx512_kernels::activation_stats(x, n, amax, sum)) return false;
    scale = activation_scale(amax, levels);
    qsum = avx512_kernels::float_codes_exact(scale)
               ? avx512_kernels::activation_codes_f32(x, n, scale, static_cast<float>(levels), q)
               : avx512_kernels::activation_codes_f64(x, n, static_cast<double>(scale), static_cast<double>(levels), q);
    return true;
}
#else
inline bool quantize_row_avx2(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                              std::int32_t& qsum) {
    return quantize_row_body(x, n, levels, q, scale, sum, qsum);
}
inline bool quantize_row_avx512(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                                std::int32_t& qsum) {
    return quantize_row_body(x, n, levels, q, scale, sum, qsum);
}
#endif

/// quantize_row_body through the widest of its builds the host runs (AVX-512, AVX2, default):
/// identical results on every path, so the choice is a speed choice only.
inline bool quantize_row_isa(const float* x, Eigen::Index n, int levels, std::int8_t* q, float& scale, double& sum,
                             std::int32_t& qsum) {
    const cpu_features& f = host_cpu_features();
    return f.avx512 ? quantize_row_avx512(x, n, levels, q, scale, sum, qsum)
           : f.avx2 ? quantize_row_avx2(x, n, levels, q, scale, sum, qsum)
                    : quantize_row(x, n, levels, q, scale, sum, qsum);
}

} // namespace detail

/// Quantizes each row (token) of `x` `[tokens x in]` to `bits`-bit symmetric integers (see the file
/// comment for the rule) into `a`, zero-padded to max(⌈in/256⌉·256, ⌈in/320⌉·320) columns (every
/// packed format's padded width). Reuses a's storage: no allocation when `a` already has this shape
/// (decode loops, `gemm_workspace`). O(tokens·padded).
/// \throws shape_error (empty x), numeric_error (NaN/Inf), invalid_argument (bits ∉ 2..8); on a
/// throw `a` holds no valid activations (its shape is kept, its contents are unspecified).
inline void quantize_activations(const cref_matrix_f& x, int bits, quantized_activations& a) {
    constexpr const char* where = "quantize_activations";
    detail::require_levels(bits, where);
    detail::require_nonempty(x, where, "x");
    const Eigen::Index n = x.cols(), padded = detail::padded_activation_cols(n);
    const int levels = (1 << (bits - 1)) - 1;
    a.bits = bits;
    a.cols = n;
    a.q.resize(x.rows(), padded);
    a.q.rightCols(padded - n).setZero();
    a.scale.resize(x.rows());
    a.sum.resize(x.rows());
    a.qsum.resize(static_cast<std::size_t>(x.rows()));
    for (Eigen::Index k = 0; k < x.rows(); ++k) {
        std::int32_t qs = 0;
        double sum = 0.0;
        float s = 0.0f;
        const float* xk = x.row(k).data();
        std::int8_t* qk = a.q.row(k).data();
        const bool finite = detail::quantize_row_isa(xk, n, levels, qk, s, sum, qs);
        detail::require<numeric_error>(finite, where, "argument 'x' contains NaN or Inf");
        a.scale(k) = s;
        a.sum(k) = static_cast<float>(sum);
        a.qsum[static_cast<std::size_t>(k)] = qs;
    }
}

/// As above, returning new activations. O(tokens·padded).
/// \throws shape_error (empty x), numeric_error (NaN/Inf), invalid_argument (bits ∉ 2..8).
[[nodiscard]] inline quantized_activations quantize_activations(const cref_matrix_f& x, int bits = 8) {
    quantized_activations a;
    quantize_activations(x, bits, a);
    return a;
}

/// Scratch space for repeated `gemm_into` calls (token-by-token decoding, small layers): buffers grow
/// to the largest shape seen and are reused, so a call of a shape seen before allocates nothing.
/// Results never depend on what the workspace held before. One per thread: not thread-safe.
struct gemm_workspace {
    quantized_activations act;          ///< int activations of the last `act_int` call
    std::vector<std::int32_t> dots;     ///< exact int dot products of one call
    std::vector<float> fdots;           ///< fp32 dot products (weight-only path)
    matrix_f x_padded;                  ///< fp32 activations zero-padded to the packed width
    matrix_f decoded;                   ///< weight rows decoded to float (batched fp32 path)
    std::vector<float> row;             ///< one decoded row
    std::vector<double> sums;           ///< Σx per token in double
    std::vector<const float*> x_rows;   ///< token row pointers
    std::vector<float> x_sums;          ///< Σx per token in float
    std::vector<std::int32_t> group_q;  ///< Σq per token and column group (grouped int4)
};

/// Exact integer dot products d = Σ_j t_ij·q_kj for rows [row_begin, row_end) and every token k:
/// out[k·ldo + (i − row_begin)]. The row-range building block of every integer GEMV/GEMM.
/// \throws shape_error (cols mismatch, bad range, ldo too small), invalid_argument (ISA unsupported).
template <PackedWeights M>
inline void dot_rows(const M& w, const quantized_activations& a, Eigen::Index row_begin,
                     Eigen::Index row_end, std::int32_t* out, Eigen::Index ldo, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "dot_rows";
    detail::require_kernel_shape(w, a.cols, where, "activation columns");
    detail::require<shape_error>(a.padded_cols() >= w.padded_cols() && a.padded_cols() == detail::padded_activation_cols(a.cols), where,
                                 "activations are not padded as quantize_activations pads them");
    detail::require<shape_error>(0 <= row_begin && row_begin <= row_end && row_end <= w.rows(), where,
                                 [&] {
                                     return "row range [" + std::to_string(row_begin) + ", " + std::to_string(row_end) +
                                            ") outside [0, " + std::to_string(w.rows()) + ")";
                                 });
    detail::require<shape_error>(a.tokens() <= 1 || ldo >= row_end - row_begin, where, "ldo smaller than the row range");
    detail::require<invalid_argument>(out != nullptr || row_end == row_begin, where, "argument 'out' is null");
    detail::dot_rows_isa(detail::resolve_gemm_isa(isa, a.tokens(), where), w, row_begin, row_end, a, out, ldo);
}

namespace detail {
/// gemm_rows with the int dot products in `d` (resized as needed).
template <PackedWeights M>
inline void gemm_rows_scratch(const M& w, const quantized_activations& a, Eigen::Index row_begin, Eigen::Index row_end,
                              Eigen::Ref<matrix_f> y, kernel_isa isa, std::vector<std::int32_t>& d) {
    constexpr const char* where = "gemm_rows";
    require_dim(y.rows(), a.tokens(), where, "y.rows()");
    require_dim(y.cols(), w.rows(), where, "y.cols()");
    const Eigen::Index nr = row_end - row_begin;
    d.resize(static_cast<std::size_t>(std::max<Eigen::Index>(nr, 0) * a.tokens()) + 1);
    dot_rows(w, a, row_begin, row_end, d.data(), std::max<Eigen::Index>(nr, 1), isa);
    for (Eigen::Index k = 0; k < a.tokens(); ++k)
        for (Eigen::Index i = row_begin; i < row_end; ++i) {
            float v = (w.scale()(i) * a.scale(k)) * static_cast<float>(d[static_cast<std::size_t>(k * nr + i - row_begin)]);
            if (w.has_offset()) v += w.offset()(i) * a.sum(k);
            y(k, i) = v;
        }
}
} // namespace detail

/// Y(:, row_begin..row_end) = X·Wᵀ for quantized activations (float epilogue of the file comment).
/// `y` must be `[tokens x w.rows()]`.
/// \throws shape_error, invalid_argument as dot_rows.
template <PackedWeights M>
inline void gemm_rows(const M& w, const quantized_activations& a, Eigen::Index row_begin,
                      Eigen::Index row_end, Eigen::Ref<matrix_f> y, kernel_isa isa = kernel_isa::automatic) {
    std::vector<std::int32_t> d;
    detail::gemm_rows_scratch(w, a, row_begin, row_end, y, isa, d);
}

/// Y = X·Wᵀ into `y` `[tokens x out]` with activations quantized per token inside (`act_int{bits}`),
/// all buffers from `ws`: a call of a shape `ws` has seen allocates nothing. Same results as gemm.
/// \throws shape_error (cols mismatch, empty x, y shape), numeric_error (NaN/Inf), invalid_argument.
template <PackedWeights M>
inline void gemm_into(const M& w, const cref_matrix_f& x, act_int act, Eigen::Ref<matrix_f> y, gemm_workspace& ws,
                      kernel_isa isa = kernel_isa::automatic) {
    detail::require_kernel_shape(w, x.cols(), "gemm", "x.cols()");
    quantize_activations(x, act.bits, ws.act);
    detail::gemm_rows_scratch(w, ws.act, 0, w.rows(), y, isa, ws.dots);
}

/// Y = X·Wᵀ `[tokens x out]` with activations quantized per token inside (`act_int{bits}`).
/// \throws as gemm_into.
template <PackedWeights M>
[[nodiscard]] inline matrix_f gemm(const M& w, const cref_matrix_f& x, act_int act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    gemm_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

namespace detail {
/// From this many tokens on, `gemm(…, act_fp32)` decodes each block of 64 weight rows to float once
/// and multiplies it with all tokens (Eigen GEMM) instead of decoding the weights per token: 4 on the
/// generic path; 32 on the AVX-512 path, whose per-token kernel shares each decoded weight vector
/// among 4 tokens (measured crossover: docs/kernels.md, "fp32 activations").
inline constexpr Eigen::Index fp32_batched_min_tokens = 4;
inline constexpr Eigen::Index fp32_batched_min_tokens_avx512 = 32;

/// Float codes t of row i into out[0 .. w.padded_cols()) (AVX-512 decoder on an avx512/amx path,
/// the scalar unpack elsewhere; the same values).
template <PackedWeights M>
inline void decode_codes_row_f32(const M& w, Eigen::Index i, kernel_isa path, float* out) {
    using traits = pack_format<typename M::format>;
#if LOWBIT_HAVE_X86_KERNELS
    if (path == kernel_isa::avx512 || path == kernel_isa::amx) return avx512_kernels::decode_row_f32(w, i, out);
#endif
    (void)path;
    std::array<std::uint8_t, traits::block_weights> u{};
    for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b) {
        unpack_block<typename M::format>(w.block_data(i, b), u.data());
        for (Eigen::Index j = 0; j < traits::block_weights; ++j)
            out[b * traits::block_weights + j] = static_cast<float>(traits::digit_mul * u[static_cast<std::size_t>(j)] - traits::digit_offset);
    }
}

/// Float codes t of rows [r0, r0 + nr) times α_i plus μ_i into wf.topRows(nr) (`wf` has w.cols() columns).
template <PackedWeights M>
inline void decode_rows_f32(const M& w, Eigen::Index r0, Eigen::Index nr, kernel_isa path, matrix_f& wf,
                            std::vector<float>& buf) {
    buf.resize(static_cast<std::size_t>(w.padded_cols()));
    for (Eigen::Index i = 0; i < nr; ++i) {
        const float a = w.scale()(r0 + i), mu = w.has_offset() ? w.offset()(r0 + i) : 0.0f;
        decode_codes_row_f32(w, r0 + i, path, buf.data());
        wf.row(i) = (Eigen::Map<const Eigen::RowVectorXf>(buf.data(), w.cols()) * a).array() + mu;
    }
}

/// The start every fp32-activation `gemm_into` shares: checks x against the packed `codes` and y
/// against `rows`, resolves the ISA into `path`, and from `fp32_batched_min_tokens` (4; AVX-512: 32)
/// tokens on a non-scalar path runs the batched product — `decode(r0, nr, path, wf, buf)` writes 64-row
/// blocks of float weights into wf.topRows(nr), Eigen multiplies them with every token — and returns
/// true; false: the caller runs its per-token path. \throws as the gemm_into overloads.
template <class Codes, class Decode>
[[nodiscard]] bool fp32_gemm_start(const Codes& codes, Eigen::Index rows, const cref_matrix_f& x, Eigen::Ref<matrix_f>& y,
                                   gemm_workspace& ws, kernel_isa isa, kernel_isa& path, Decode&& decode) {
    constexpr const char* where = "gemm";
    require_kernel_shape(codes, x.cols(), where, "x.cols()");
    require_nonempty(x, where, "x");
    require_finite(x, where, "x");
    require_dim(y.rows(), x.rows(), where, "y.rows()");
    require_dim(y.cols(), rows, where, "y.cols()");
    path = resolve_isa(isa, where);
    const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    if (x.rows() < (avx512 ? fp32_batched_min_tokens_avx512 : fp32_batched_min_tokens) || path == kernel_isa::scalar) return false;
    // Batched tokens (prefill, perplexity): decode a block of weight rows to float once and multiply
    // it with every token (Eigen GEMM), instead of decoding the weights per token.
    constexpr Eigen::Index rows_per_block = 64;
    ws.decoded.resize(std::min<Eigen::Index>(rows_per_block, rows), x.cols());
    for (Eigen::Index r0 = 0; r0 < rows; r0 += rows_per_block) {
        const Eigen::Index nr = std::min(rows_per_block, rows - r0);
        decode(r0, nr, path, ws.decoded, ws.row);
        y.middleCols(r0, nr).noalias() = x * ws.decoded.topRows(nr).transpose();
    }
    return true;
}
} // namespace detail

/// Y = X·Wᵀ into `y` `[tokens x out]` with fp32 activations (weight-only quantization), buffers from `ws`
/// (a call of a shape `ws` has seen allocates nothing). Decode (few tokens): weights decoded to
/// float inside the per-token dot-product kernel — scalar, xsimd (generic and neon requests), AVX2
/// (arch/avx2_fp32.hpp) or AVX-512 (arch/avx512_fp32.hpp): codes decoded in registers, each decoded
/// vector shared by up to 4 tokens.
/// From `fp32_batched_min_tokens` (4; AVX-512: 32) tokens on a non-scalar path: 64-row blocks of
/// weights decoded to float once and multiplied with all tokens (Eigen GEMM; float results within the
/// same bound, a different summation order). O(T·rows·cols).
/// \throws shape_error (cols mismatch, empty), numeric_error (NaN/Inf in x), invalid_argument (ISA).
template <PackedWeights M>
inline void gemm_into(const M& w, const cref_matrix_f& x, act_fp32, Eigen::Ref<matrix_f> y, gemm_workspace& ws,
                      kernel_isa isa = kernel_isa::automatic) {
    kernel_isa path{};
    if (detail::fp32_gemm_start(w, w.rows(), x, y, ws, isa, path, [&](Eigen::Index r0, Eigen::Index nr, kernel_isa p, matrix_f& wf,
                                                                     std::vector<float>& buf) { detail::decode_rows_f32(w, r0, nr, p, wf, buf); }))
        return;
    [[maybe_unused]] const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    // Per token: activations zero-padded to the packed width; Σx in double for the μ term.
    const Eigen::Index tokens = x.rows(), rows = w.rows();
    ws.x_padded.resize(tokens, w.padded_cols());
    ws.x_padded.leftCols(x.cols()) = x;
    ws.x_padded.rightCols(w.padded_cols() - x.cols()).setZero();
    ws.fdots.resize(static_cast<std::size_t>(tokens * rows));
    ws.sums.assign(static_cast<std::size_t>(tokens), 0.0);
    float* d = ws.fdots.data();
    for (Eigen::Index k = 0; k < tokens; ++k)
        for (Eigen::Index j = 0; j < x.cols(); ++j) ws.sums[static_cast<std::size_t>(k)] += static_cast<double>(x(k, j));
#if LOWBIT_HAVE_X86_KERNELS
    if (avx512) {
        ws.x_rows.resize(static_cast<std::size_t>(tokens));
        ws.x_sums.resize(static_cast<std::size_t>(tokens));
        if constexpr (std::is_same_v<typename M::format, ternary_base3>) ws.row.resize(static_cast<std::size_t>(w.padded_cols()));
        for (Eigen::Index k = 0; k < tokens; ++k) {
            if constexpr (std::is_same_v<typename M::format, ternary_base3>) { // the kernel's activation order
                std::copy_n(ws.x_padded.row(k).data(), w.padded_cols(), ws.row.data());
                detail::avx512_kernels::base3_x_order(ws.row.data(), ws.x_padded.row(k).data(), w.padded_cols());
            }
            ws.x_rows[static_cast<std::size_t>(k)] = ws.x_padded.row(k).data();
            ws.x_sums[static_cast<std::size_t>(k)] = static_cast<float>(ws.sums[static_cast<std::size_t>(k)]);
        }
        detail::avx512_kernels::dot_rows_f32(w, 0, rows, ws.x_rows.data(), ws.x_sums.data(), tokens, d, rows);
    } else
#endif
#if LOWBIT_HAVE_X86_KERNELS
    if (path == kernel_isa::avx2) {
        ws.x_rows.resize(static_cast<std::size_t>(tokens));
        for (Eigen::Index k = 0; k < tokens; ++k) ws.x_rows[static_cast<std::size_t>(k)] = ws.x_padded.row(k).data();
        detail::avx2_kernels::dot_rows_f32(w, 0, rows, ws.x_rows.data(), tokens, d, rows);
    } else
#endif
    {
        for (Eigen::Index k = 0; k < tokens; ++k) {
            if (path == kernel_isa::scalar)
                detail::scalar_kernels::dot_rows_f32(w, 0, rows, ws.x_padded.row(k).data(), d + k * rows);
            else
                detail::generic_kernels::dot_rows_f32(w, 0, rows, ws.x_padded.row(k).data(), d + k * rows);
        }
    }
    for (Eigen::Index k = 0; k < tokens; ++k) {
        const double sum = ws.sums[static_cast<std::size_t>(k)];
        for (Eigen::Index i = 0; i < rows; ++i)
            y(k, i) = w.scale()(i) * d[static_cast<std::size_t>(k * rows + i)] +
                      (w.has_offset() ? w.offset()(i) * static_cast<float>(sum) : 0.0f);
    }
}

/// Y = X·Wᵀ with fp32 activations into a new matrix (gemm_into with a fresh workspace).
/// \throws as gemm_into.
template <PackedWeights M>
[[nodiscard]] inline matrix_f gemm(const M& w, const cref_matrix_f& x, act_fp32 act, kernel_isa isa = kernel_isa::automatic) {
    gemm_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

namespace detail {
/// Widest padded row `gemv_into` serves from stack buffers (int8 codes or zero-padded floats); wider
/// rows go through gemm_into with a local workspace.
inline constexpr Eigen::Index gemv_stack_cols = 4096;
/// Rows per stack chunk of `gemv_into`'s dot products (a multiple of 16: chunking keeps every kernel's
/// row grouping, so results do not depend on it).
inline constexpr Eigen::Index gemv_stack_rows = 1024;

/// `gemv_into`'s path for rows wider than `gemv_stack_cols`: the one-token `gemm_into` with a local
/// workspace (allocates). Same results as the stack path would give (both equal `gemm`). `M`: a
/// packed matrix or a grouped_int4_matrix.
template <class M, class Act>
void gemv_by_gemm(const M& w, const cref_vector_f& x, const Act& act, Eigen::Ref<vector_f> y, kernel_isa isa) {
    gemm_workspace ws;
    matrix_f yr(1, w.rows());
    gemm_into(w, Eigen::Map<const matrix_f>(x.data(), 1, x.size()), act, yr, ws, isa);
    y = yr.row(0).transpose();
}
} // namespace detail

/// y = W·x for one token into `y` (length w.rows()) with activations quantized inside
/// (`act_int{bits}`, the rule of the file comment): bit-identical to `gemm(w, x as 1×n, act, isa)`
/// (same codes, the same exact int32 d_i, the same float epilogue). The decode step of a layer: for
/// w.padded_cols() ≤ detail::gemv_stack_cols the codes and the dot products live on the stack, so
/// the call allocates nothing and resolves the ISA once (no workspace to carry); wider rows take
/// gemm_into with a local workspace. O(rows·padded cols).
/// \throws shape_error (lengths), numeric_error (NaN/Inf in x), invalid_argument (bits, ISA).
template <PackedWeights M>
inline void gemv_into(const M& w, const cref_vector_f& x, act_int act, Eigen::Ref<vector_f> y,
                      kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemv_into";
    detail::require_kernel_shape(w, x.size(), where, "x length");
    detail::require_dim(y.size(), w.rows(), where, "y length");
    detail::require_levels(act.bits, where);
    const Eigen::Index n = x.size(), padded = detail::padded_activation_cols(n);
    if (padded > detail::gemv_stack_cols) return detail::gemv_by_gemm(w, x, act, y, isa);
    const kernel_isa path = detail::resolve_gemm_isa(isa, 1, where);
    const int levels = (1 << (act.bits - 1)) - 1;
    alignas(64) std::int8_t q[detail::gemv_stack_cols];
    std::memset(q + n, 0, static_cast<std::size_t>(padded - n));
    std::int32_t qs = 0;
    double sum = 0.0;
    float s = 0.0f;
    const bool finite = detail::quantize_row_isa(x.data(), n, levels, q, s, sum, qs);
    detail::require<numeric_error>(finite, where, "argument 'x' contains NaN or Inf");
    const float xsum = static_cast<float>(sum);
    std::int32_t d[detail::gemv_stack_rows];
    for (Eigen::Index r0 = 0; r0 < w.rows(); r0 += detail::gemv_stack_rows) {
        const Eigen::Index r1 = std::min(w.rows(), r0 + detail::gemv_stack_rows);
        detail::dot_rows_isa(path, w, r0, r1, q, padded, &qs, 1, d, r1 - r0);
        // the epilogue of gemm_rows, with the offset test hoisted out of the row loop
        const float* al = w.scale().data();
        if (w.has_offset()) {
            const float* mu = w.offset().data();
            for (Eigen::Index i = r0; i < r1; ++i) y(i) = (al[i] * s) * static_cast<float>(d[i - r0]) + mu[i] * xsum;
        } else {
            for (Eigen::Index i = r0; i < r1; ++i) y(i) = (al[i] * s) * static_cast<float>(d[i - r0]);
        }
    }
}

/// y = W·x for one token into `y` (length w.rows()) with fp32 activations (weight-only): bit-identical
/// to `gemm(w, x as 1×n, act_fp32, isa)` (the per-token path of gemm_into: same kernels, same
/// summation order). For w.padded_cols() ≤ detail::gemv_stack_cols the zero-padded activations and
/// the dot products live on the stack (no allocation); wider rows take gemm_into with a local
/// workspace. O(rows·padded cols).
/// \throws shape_error (lengths), numeric_error (NaN/Inf in x), invalid_argument (ISA).
template <PackedWeights M>
inline void gemv_into(const M& w, const cref_vector_f& x, act_fp32 act, Eigen::Ref<vector_f> y,
                      kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemv_into";
    detail::require_kernel_shape(w, x.size(), where, "x length");
    detail::require_dim(y.size(), w.rows(), where, "y length");
    const Eigen::Index n = x.size(), np = w.padded_cols();
    if (np > detail::gemv_stack_cols) return detail::gemv_by_gemm(w, x, act, y, isa);
    const kernel_isa path = detail::resolve_isa(isa, where);
    [[maybe_unused]] const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    alignas(64) float xp[detail::gemv_stack_cols];
    double sum = 0.0;
    for (Eigen::Index j = 0; j < n; ++j) {
        xp[j] = x(j);
        sum += static_cast<double>(x(j));
    }
    // Σx in double is finite iff every x_j is (a float sum cannot overflow a double): the
    // finiteness check without a second pass over x
    detail::require<numeric_error>(std::isfinite(sum), where, "argument 'x' contains NaN or Inf");
    for (Eigen::Index j = n; j < np; ++j) xp[j] = 0.0f;
    const float xsum = static_cast<float>(sum);
#if LOWBIT_HAVE_X86_KERNELS
    constexpr bool base3 = std::is_same_v<typename M::format, ternary_base3>;
    alignas(64) float xo[base3 ? detail::gemv_stack_cols : 1];
    const float* x_kernel = xp;
    if constexpr (base3) {
        if (avx512) { // the AVX-512 kernel's activation order
            detail::avx512_kernels::base3_x_order(xp, xo, np);
            x_kernel = xo;
        }
    }
#endif
    float d[detail::gemv_stack_rows];
    for (Eigen::Index r0 = 0; r0 < w.rows(); r0 += detail::gemv_stack_rows) {
        const Eigen::Index r1 = std::min(w.rows(), r0 + detail::gemv_stack_rows);
#if LOWBIT_HAVE_X86_KERNELS
        if (avx512) {
            const float* rows[1] = {x_kernel};
            detail::avx512_kernels::dot_rows_f32(w, r0, r1, rows, &xsum, 1, d, r1 - r0);
        } else if (path == kernel_isa::avx2) {
            const float* rows[1] = {xp};
            detail::avx2_kernels::dot_rows_f32(w, r0, r1, rows, 1, d, r1 - r0);
        } else
#endif
        if (path == kernel_isa::scalar)
            detail::scalar_kernels::dot_rows_f32(w, r0, r1, xp, d);
        else
            detail::generic_kernels::dot_rows_f32(w, r0, r1, xp, d);
        for (Eigen::Index i = r0; i < r1; ++i)
            y(i) = w.scale()(i) * d[i - r0] + (w.has_offset() ? w.offset()(i) * xsum : 0.0f);
    }
}

/// y = W·x for one activation vector (length w.cols()), either activation policy (`gemv_into`
/// into a new vector).
template <PackedWeights M, class Act = act_int>
[[nodiscard]] inline vector_f gemv(const M& w, const cref_vector_f& x, Act act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    detail::require_kernel_shape(w, x.size(), "gemv", "x length");
    vector_f y(w.rows());
    gemv_into(w, x, act, y, isa);
    return y;
}

/// Y = X·Wᵀ split over row chunks with OpenMP (`#pragma omp parallel for`) when the consumer compiles
/// with OpenMP; otherwise identical to gemm(w, x, act, isa). Results are bit-identical either way.
template <PackedWeights M>
[[nodiscard]] inline matrix_f gemm_parallel(const M& w, const cref_matrix_f& x, act_int act = {},
                                            kernel_isa isa = kernel_isa::automatic) {
    detail::require_kernel_shape(w, x.cols(), "gemm_parallel", "x.cols()");
    const kernel_isa path = detail::resolve_gemm_isa(isa, x.rows(), "gemm_parallel");
    const quantized_activations a = quantize_activations(x, act.bits);
    matrix_f y(x.rows(), w.rows());
    constexpr Eigen::Index chunk = 64;
    const Eigen::Index nchunks = (w.rows() + chunk - 1) / chunk;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (Eigen::Index c = 0; c < nchunks; ++c)
        gemm_rows(w, a, c * chunk, std::min(w.rows(), (c + 1) * chunk), y, path);
    return y;
}

/// MXFP4 × quantized activations, rows [row_begin, row_end) of Y `[tokens x w.rows()]`:
///     Y(k, i) = (0.5·s_k)·Σ_b 2^(E_ib − 127)·S_ikb,   S_ikb = Σ_{j∈b} e2m1_doubled(c_ij)·q_kj (exact int)
/// with float accumulation over blocks: |ΔY| ≤ (nb + 8)·u·0.5·s_k·Σ_b 2^(E−127)·Σ_j |e2m1_doubled·q|.
/// Paths: avx512 (4 blocks per step: vpermi2b gather, vpshufb table, vpdpbusd; arch/avx512.hpp;
/// also for an amx request); every other request runs the scalar reference.
/// \throws shape_error (cols mismatch, range, y shape), invalid_argument (ISA unsupported).
template <class L>
inline void gemm_rows(const packed_mxfp4<L>& w, const quantized_activations& a, Eigen::Index row_begin,
                      Eigen::Index row_end, Eigen::Ref<matrix_f> y, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemm_rows";
    detail::require<shape_error>(w.cols() <= detail::max_kernel_cols, where, "w.cols() exceeds 2^21");
    detail::require_dim(a.cols, w.cols(), where, "activation columns");
    detail::require<shape_error>(a.padded_cols() >= w.padded_cols() && a.padded_cols() == detail::padded_activation_cols(a.cols), where,
                                 "activations are not padded as quantize_activations pads them");
    detail::require<shape_error>(0 <= row_begin && row_begin <= row_end && row_end <= w.rows(), where, "row range outside [0, rows)");
    detail::require_dim(y.rows(), a.tokens(), where, "y.rows()");
    detail::require_dim(y.cols(), w.rows(), where, "y.cols()");
    const kernel_isa path = detail::resolve_isa(isa, where);
    std::vector<float> d(static_cast<std::size_t>(std::max<Eigen::Index>(row_end - row_begin, 1)));
    const bool avx512 = path == kernel_isa::avx512 || path == kernel_isa::amx;
    std::vector<std::int8_t> xp(avx512 ? static_cast<std::size_t>(w.padded_cols()) : 0);
    std::vector<std::int32_t> ncorr(avx512 ? static_cast<std::size_t>(w.padded_cols() / 8) : 0);
    for (Eigen::Index k = 0; k < a.tokens(); ++k) {
        const std::int8_t* xk = a.q.row(k).data();
#if LOWBIT_HAVE_X86_KERNELS
        if (avx512) {
            detail::avx512_kernels::mxfp4_prepare<L>(xk, w.blocks_per_row(), xp.data(), ncorr.data());
            detail::avx512_kernels::mxfp4_rows(w, row_begin, row_end, xk, xp.data(), ncorr.data(), d.data());
        } else
#endif
            detail::scalar_kernels::mxfp4_rows(w, row_begin, row_end, xk, d.data());
        (void)path;
        for (Eigen::Index i = row_begin; i < row_end; ++i)
            y(k, i) = (0.5f * a.scale(k)) * d[static_cast<std::size_t>(i - row_begin)];
    }
}

/// Y = X·Wᵀ for MXFP4 weights with activations quantized per token inside (`act_int{bits}`).
template <class L>
[[nodiscard]] inline matrix_f gemm(const packed_mxfp4<L>& w, const cref_matrix_f& x, act_int act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    detail::require_dim(x.cols(), w.cols(), "gemm", "x.cols()");
    const quantized_activations a = quantize_activations(x, act.bits);
    matrix_f y(x.rows(), w.rows());
    gemm_rows(w, a, 0, w.rows(), y, isa);
    return y;
}

/// y = W·x for MXFP4 weights (int activations quantized inside).
template <class L>
[[nodiscard]] inline vector_f gemv(const packed_mxfp4<L>& w, const cref_vector_f& x, act_int act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    detail::require_dim(x.size(), w.cols(), "gemv", "x length");
    const Eigen::Map<const matrix_f> xr(x.data(), 1, x.size());
    return gemm(w, xr, act, isa).row(0).transpose();
}

// ---------------------------------------------------------------------------------------------
// Grouped int4 (pack.hpp grouped_int4_matrix): per-group scales and offsets
// ---------------------------------------------------------------------------------------------

namespace detail {

/// Digit half sums of int4 rows [r0, r1) for every token, on `path`: out[(k·(r1 − r0) + i − r0)·nh + h]
/// = Σ_{j<128} u_{i,128h+j}·q_{k,128h+j}, nh = 2·blocks_per_row (exact; arch/ int4_half_dots).
/// amx runs the avx512 kernel (no AMX code for groups).
inline void int4_half_dots_rows(kernel_isa path, const packed_matrix<int4>& w, Eigen::Index r0, Eigen::Index r1,
                                const quantized_activations& a, std::int32_t* out) {
    const Eigen::Index nb = w.blocks_per_row(), nh = 2 * nb, nr = r1 - r0, stride = packed_matrix<int4>::block_stride();
    for (Eigen::Index i0 = r0; i0 < r1; i0 += gemm_row_tile) {
        const Eigen::Index i1 = std::min(r1, i0 + gemm_row_tile);
        for (Eigen::Index k = 0; k < a.tokens(); ++k)
            for (Eigen::Index i = i0; i < i1; ++i) {
                const std::uint8_t* p = w.row_data(i);
                const std::int8_t* x = a.q.row(k).data();
                std::int32_t* o = out + (k * nr + i - r0) * nh;
                switch (path) {
#if LOWBIT_HAVE_X86_KERNELS
                case kernel_isa::amx:
                case kernel_isa::avx512: avx512_kernels::int4_half_dots(p, x, nb, stride, o); break;
                case kernel_isa::avx2: avx2_kernels::int4_half_dots(p, x, nb, stride, o); break;
#endif
#if LOWBIT_HAVE_NEON_KERNELS
                case kernel_isa::neon: neon_kernels::int4_half_dots(p, x, nb, stride, o); break;
#endif
                case kernel_isa::generic: generic_kernels::int4_half_dots(p, x, nb, stride, o); break;
                default: scalar_kernels::int4_half_dots(p, x, nb, stride, o); break;
                }
            }
    }
}

} // namespace detail

/// Exact per-group integer sums of a grouped int4 matrix for rows [row_begin, row_end) and every
/// token: out[(k·(row_end − row_begin) + i − row_begin)·groups + g] = Σ_{j∈g} t_ij·q_kj (t = u − 8;
/// formed from the kernels' nibble-half digit sums minus 8·Σ_{j∈half} q_kj, halves added pairwise
/// for G = 256). Identical on every ISA path (scalar, generic, avx2, avx512 — also for an amx
/// request —, neon). `group_q` = the per-token group sums Σ_{j∈g} q_kj (`tokens·groups`).
/// \throws shape_error (cols mismatch, range, activations not padded as quantize_activations pads
///         them), invalid_argument (ISA unsupported, null out). O(tokens·rows·cols).
inline void dot_groups(const grouped_int4_matrix& w, const quantized_activations& a, const std::vector<std::int32_t>& group_q,
                       Eigen::Index row_begin, Eigen::Index row_end, std::int32_t* out, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "dot_groups";
    const packed_matrix<int4>& c = w.codes();
    detail::require_kernel_shape(c, a.cols, where, "activation columns");
    detail::require<shape_error>(a.padded_cols() >= c.padded_cols() && a.padded_cols() == detail::padded_activation_cols(a.cols), where,
                                 "activations are not padded as quantize_activations pads them");
    detail::require<shape_error>(0 <= row_begin && row_begin <= row_end && row_end <= w.rows(), where, "row range outside [0, rows)");
    const Eigen::Index ng = w.groups(), nh = 2 * c.blocks_per_row(), nr = row_end - row_begin;
    detail::require_dim(static_cast<Eigen::Index>(group_q.size()), a.tokens() * ng, where, "length of 'group_q'");
    detail::require<invalid_argument>(out != nullptr || nr == 0, where, "argument 'out' is null");
    const kernel_isa path = detail::resolve_isa(isa, where); // amx: the avx512 kernel (int4_half_dots_rows)
    std::vector<std::int32_t> half(static_cast<std::size_t>(std::max<Eigen::Index>(nr * a.tokens() * nh, 1)));
    detail::int4_half_dots_rows(path, c, row_begin, row_end, a, half.data());
    const Eigen::Index per = w.group_cols() / 128; // halves per group
    for (Eigen::Index k = 0; k < a.tokens(); ++k)
        for (Eigen::Index r = 0; r < nr; ++r) {
            const std::int32_t* h = half.data() + (k * nr + r) * nh;
            std::int32_t* o = out + (k * nr + r) * ng;
            for (Eigen::Index g = 0; g < ng; ++g) {
                std::int32_t d = 0;
                for (Eigen::Index e = g * per; e < std::min(nh, (g + 1) * per); ++e) d += h[e];
                o[g] = d - 8 * group_q[static_cast<std::size_t>(k * ng + g)];
            }
        }
}

/// Y = X·Wᵀ into `y` `[tokens x rows]` for a grouped int4 matrix with activations quantized per token
/// inside (`act_int{bits}`, the rule of the file comment; s_k the token's scale), buffers from `ws`
/// (a call of a shape `ws` has seen allocates nothing):
///     y_ki = Σ_g (α_ig·s_k)·d_kig + μ_ig·Σ_{j∈g} x_kj,    d_kig = Σ_{j∈g} t_ij·q_kj (exact, as dot_groups)
/// evaluated in double (α·s exact, Σx per group sequential in double) and rounded to float once:
/// |y − formula| ≤ 2^-24·|formula| + (groups + 128)·2^-52·Σ_g (|α s d| + |μ|·Σ_{j∈g}|x_j|), the same
/// on every ISA path (bit-identical results, since d is exact and the epilogue is shared).
/// \throws shape_error (cols mismatch, empty x, y shape), numeric_error (NaN/Inf), invalid_argument (bits, ISA).
/// O(tokens·rows·cols).
inline void gemm_into(const grouped_int4_matrix& w, const cref_matrix_f& x, act_int act, Eigen::Ref<matrix_f> y,
                      gemm_workspace& ws, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemm";
    detail::require_kernel_shape(w.codes(), x.cols(), where, "x.cols()");
    quantize_activations(x, act.bits, ws.act);
    const quantized_activations& a = ws.act;
    detail::require_dim(y.rows(), a.tokens(), where, "y.rows()");
    detail::require_dim(y.cols(), w.rows(), where, "y.cols()");
    const kernel_isa path = detail::resolve_isa(isa, where);
    const Eigen::Index ng = w.groups(), gc = w.group_cols(), nh = 2 * w.codes().blocks_per_row(), per = gc / 128;
    ws.group_q.assign(static_cast<std::size_t>(a.tokens() * ng), 0);
    ws.sums.assign(static_cast<std::size_t>(a.tokens() * ng), 0.0);
    for (Eigen::Index k = 0; k < a.tokens(); ++k)
        for (Eigen::Index j = 0; j < x.cols(); ++j) {
            const auto o = static_cast<std::size_t>(k * ng + j / gc);
            ws.group_q[o] += a.q(k, j);
            ws.sums[o] += static_cast<double>(x(k, j));
        }
    ws.dots.resize(static_cast<std::size_t>(a.tokens() * w.rows() * nh));
    detail::int4_half_dots_rows(path, w.codes(), 0, w.rows(), a, ws.dots.data());
    for (Eigen::Index k = 0; k < a.tokens(); ++k) {
        const double s = static_cast<double>(a.scale(k));
        const std::int32_t* gq = ws.group_q.data() + k * ng;
        const double* xs = ws.sums.data() + k * ng;
        for (Eigen::Index i = 0; i < w.rows(); ++i) {
            const std::int32_t* h = ws.dots.data() + (k * w.rows() + i) * nh;
            const float* al = w.scale().row(i).data();
            const float* mu = w.offset().row(i).data();
            // four independent partial sums over g mod 4 (fixed order, the same on every path): a
            // single running sum is one dependent chain of 2·groups double adds
            double acc[4] = {0.0, 0.0, 0.0, 0.0};
            for (Eigen::Index g = 0; g < ng; ++g) {
                std::int32_t d = h[g * per] - 8 * gq[g];
                if (per == 2 && g * per + 1 < nh) d += h[g * per + 1];
                acc[g & 3] += static_cast<double>(al[g]) * s * static_cast<double>(d) + static_cast<double>(mu[g]) * xs[g];
            }
            y(k, i) = static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
        }
    }
}

/// Y = X·Wᵀ `[tokens x rows]` for a grouped int4 matrix with activations quantized per token inside
/// (`act_int{bits}`): `gemm_into` with a fresh workspace (same results and bound).
/// \throws as gemm_into. O(tokens·rows·cols).
[[nodiscard]] inline matrix_f gemm(const grouped_int4_matrix& w, const cref_matrix_f& x, act_int act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    gemm_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

namespace detail {

/// Rows [r0, r0 + nr) of a grouped int4 matrix decoded to float weights into wf.topRows(nr):
/// wf(i, j) = α_ig·t_ij + μ_ig (j ∈ g; one float rounding per weight). `wf` has w.cols() columns.
inline void decode_grouped_rows_f32(const grouped_int4_matrix& w, Eigen::Index r0, Eigen::Index nr, kernel_isa path, matrix_f& wf,
                                    std::vector<float>& buf) {
    const Eigen::Index gc = w.group_cols(), n = w.cols();
    buf.resize(static_cast<std::size_t>(w.codes().padded_cols()));
    for (Eigen::Index i = 0; i < nr; ++i) {
        decode_codes_row_f32(w.codes(), r0 + i, path, buf.data());
        for (Eigen::Index g = 0; g < w.groups(); ++g) {
            const Eigen::Index j0 = g * gc, len = std::min(gc, n - j0);
            wf.row(i).segment(j0, len) =
                (Eigen::Map<const Eigen::RowVectorXf>(buf.data() + j0, len) * w.scale()(r0 + i, g)).array() + w.offset()(r0 + i, g);
        }
    }
}

/// The per-token fp32 path of the grouped int4 GEMM for rows [r0, r1): y[k·ldy + i] (absolute row i) =
/// Σ_g α_ig·S_kig + Σ_g μ_ig·gsum[k·groups + g], S_kig = Σ_{j∈g} t_ij·x_k[j], the sum over g in
/// double and rounded to float once. x[k]: token k's activations zero-padded to the packed width;
/// gsum: Σ_{j∈g} x_kj in double. S: on an avx512 (or amx) / avx2 path the AVX-512 / AVX2 kernel (lane
/// sums scaled by α in float, arch/avx512_fp32.hpp, arch/avx2_fp32.hpp); elsewhere the portable loop (codes decoded once per row into
/// `tbuf`, 8 interleaved float partial sums per group, α·S added in double). Scratch: `dots`
/// (tokens·(r1 − r0) floats), `tbuf` (padded-cols floats). O(tokens·(r1 − r0)·cols).
inline void grouped_int4_f32_rows(const grouped_int4_matrix& w, Eigen::Index r0, Eigen::Index r1, const float* const* x,
                                  const double* gsum, Eigen::Index tokens, kernel_isa path, float* dots, float* tbuf, float* y,
                                  Eigen::Index ldy) {
    const packed_matrix<int4>& c = w.codes();
    const Eigen::Index ng = w.groups(), gc = w.group_cols(), np = c.padded_cols();
#if LOWBIT_HAVE_X86_KERNELS
    if (path == kernel_isa::avx512 || path == kernel_isa::amx || path == kernel_isa::avx2) {
        const Eigen::Index nr = r1 - r0;
        if (path == kernel_isa::avx2) avx2_kernels::dot_rows_grouped_int4_f32(c, w.scale().data(), ng, gc, r0, r1, x, tokens, dots, nr);
        else avx512_kernels::dot_rows_grouped_int4_f32(c, w.scale().data(), ng, gc, r0, r1, x, tokens, dots, nr);
        for (Eigen::Index k = 0; k < tokens; ++k)
            for (Eigen::Index i = r0; i < r1; ++i) {
                const float* mu = w.offset().row(i).data();
                double acc = static_cast<double>(dots[k * nr + i - r0]);
                for (Eigen::Index g = 0; g < ng; ++g) acc += static_cast<double>(mu[g]) * gsum[k * ng + g];
                y[k * ldy + i] = static_cast<float>(acc);
            }
        return;
    }
#endif
    (void)dots;
    for (Eigen::Index i = r0; i < r1; ++i) {
        decode_codes_row_f32(c, i, kernel_isa::scalar, tbuf);
        for (Eigen::Index k = 0; k < tokens; ++k) {
            const float* xk = x[k];
            double acc = 0.0;
            for (Eigen::Index g = 0; g < ng; ++g) {
                float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (Eigen::Index j = g * gc; j < (g + 1) * gc && j < np; j += 8)
                    for (int l = 0; l < 8; ++l) part[l] += tbuf[j + l] * xk[j + l];
                const float sg = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
                acc += static_cast<double>(w.scale()(i, g)) * static_cast<double>(sg) + static_cast<double>(w.offset()(i, g)) * gsum[k * ng + g];
            }
            y[k * ldy + i] = static_cast<float>(acc);
        }
    }
}

} // namespace detail

/// Y = X·Wᵀ into `y` `[tokens x rows]` for a grouped int4 matrix with fp32 activations (weight-only),
/// buffers from `ws` (a call of a shape `ws` has seen allocates nothing). Per token (decode): the
/// codes are decoded to float inside the dot products and y_ki = Σ_g α_ig·S_kig + μ_ig·Σ_{j∈g} x_kj
/// (S_kig = Σ_{j∈g} t_ij x_kj) — AVX-512 kernel on an avx512/amx path, AVX2 kernel on an avx2 path (each
/// decoded weight vector shared by up to 4 tokens, lane sums scaled by α in float), a portable loop on
/// the others (neon, generic and scalar requests: float partial sums per group, α·S in double). From
/// `fp32_batched_min_tokens` (4; AVX-512: 32) tokens on a non-scalar path: 64-row blocks decoded to
/// float weights α·t + μ once and multiplied with all tokens (Eigen GEMM). Every path:
///     |y − exact| ≤ (n + 2·groups + 8)·u·Σ_g (|α_ig|·Σ_{j∈g}|t_ij x_kj| + |μ_ig|·Σ_{j∈g}|x_kj|) + u·|exact|
/// (n = padded columns, u = 2⁻²⁴). O(tokens·rows·cols).
/// \throws shape_error (cols mismatch, empty x, y shape), numeric_error (NaN/Inf in x), invalid_argument (ISA).
inline void gemm_into(const grouped_int4_matrix& w, const cref_matrix_f& x, act_fp32, Eigen::Ref<matrix_f> y, gemm_workspace& ws,
                      kernel_isa isa = kernel_isa::automatic) {
    kernel_isa path{};
    if (detail::fp32_gemm_start(w.codes(), w.rows(), x, y, ws, isa, path,
                                [&](Eigen::Index r0, Eigen::Index nr, kernel_isa p, matrix_f& wf, std::vector<float>& buf) {
                                    detail::decode_grouped_rows_f32(w, r0, nr, p, wf, buf);
                                }))
        return;
    const Eigen::Index tokens = x.rows(), rows = w.rows(), n = x.cols(), np = w.codes().padded_cols(), ng = w.groups();
    ws.x_padded.resize(tokens, np);
    ws.x_padded.leftCols(n) = x;
    ws.x_padded.rightCols(np - n).setZero();
    ws.sums.assign(static_cast<std::size_t>(tokens * ng), 0.0);
    ws.x_rows.resize(static_cast<std::size_t>(tokens));
    for (Eigen::Index k = 0; k < tokens; ++k) {
        ws.x_rows[static_cast<std::size_t>(k)] = ws.x_padded.row(k).data();
        for (Eigen::Index j = 0; j < n; ++j) ws.sums[static_cast<std::size_t>(k * ng + j / w.group_cols())] += static_cast<double>(x(k, j));
    }
    ws.fdots.resize(static_cast<std::size_t>(tokens * rows));
    ws.row.resize(static_cast<std::size_t>(np));
    detail::grouped_int4_f32_rows(w, 0, rows, ws.x_rows.data(), ws.sums.data(), tokens, path, ws.fdots.data(), ws.row.data(), y.data(),
                                  y.outerStride());
}

/// Y = X·Wᵀ `[tokens x rows]` for a grouped int4 matrix with fp32 activations: `gemm_into` with a
/// fresh workspace (same results and bound).
/// \throws as gemm_into. O(tokens·rows·cols).
[[nodiscard]] inline matrix_f gemm(const grouped_int4_matrix& w, const cref_matrix_f& x, act_fp32 act,
                                   kernel_isa isa = kernel_isa::automatic) {
    gemm_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

/// y = W·x for one token into `y` (length w.rows()) for a grouped int4 matrix with fp32 activations:
/// bit-identical to `gemm(w, x as 1×n, act_fp32, isa)` (its per-token path). For padded widths ≤
/// detail::gemv_stack_cols the padded activations, group sums and dot products live on the stack (no
/// allocation: the decode step of a layer); wider rows take gemm_into with a local workspace.
/// \throws shape_error (lengths), numeric_error (NaN/Inf in x), invalid_argument (ISA). O(rows·cols).
inline void gemv_into(const grouped_int4_matrix& w, const cref_vector_f& x, act_fp32 act, Eigen::Ref<vector_f> y,
                      kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemv_into";
    detail::require_kernel_shape(w.codes(), x.size(), where, "x length");
    detail::require_dim(y.size(), w.rows(), where, "y length");
    const Eigen::Index n = x.size(), np = w.codes().padded_cols();
    if (np > detail::gemv_stack_cols) return detail::gemv_by_gemm(w, x, act, y, isa);
    const kernel_isa path = detail::resolve_isa(isa, where);
    alignas(64) float xp[detail::gemv_stack_cols];
    alignas(64) float tbuf[detail::gemv_stack_cols];
    double gsum[detail::gemv_stack_cols / 128] = {};
    double sum = 0.0;
    for (Eigen::Index j = 0; j < n; ++j) {
        xp[j] = x(j);
        gsum[j / w.group_cols()] += static_cast<double>(x(j));
        sum += static_cast<double>(x(j));
    }
    // finite iff every x_j is (as in the packed gemv_into: no second pass over x)
    detail::require<numeric_error>(std::isfinite(sum), where, "argument 'x' contains NaN or Inf");
    std::fill(xp + n, xp + np, 0.0f);
    const float* xr[1] = {xp};
    float d[detail::gemv_stack_rows];
    for (Eigen::Index r0 = 0; r0 < w.rows(); r0 += detail::gemv_stack_rows) {
        const Eigen::Index r1 = std::min(w.rows(), r0 + detail::gemv_stack_rows);
        detail::grouped_int4_f32_rows(w, r0, r1, xr, gsum, 1, path, d, tbuf, y.data(), 0);
    }
}

/// y = W·x for a grouped int4 matrix (`act_int{bits}` or `act_fp32`), as `gemm` with one token.
template <class Act = act_int>
    requires(std::is_same_v<Act, act_int> || std::is_same_v<Act, act_fp32>)
[[nodiscard]] inline vector_f gemv(const grouped_int4_matrix& w, const cref_vector_f& x, Act act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    detail::require_dim(x.size(), w.cols(), "gemv", "x length");
    const Eigen::Map<const matrix_f> xr(x.data(), 1, x.size());
    return gemm(w, xr, act, isa).row(0).transpose();
}

namespace detail {
/// Rows [begin, end) of part p of n: contiguous ranges of a multiple of 16 rows (whole 4-row tiles
/// of an interleaved_matrix), the last part takes the rest.
[[nodiscard]] inline std::pair<Eigen::Index, Eigen::Index> part_rows(Eigen::Index rows, int p, int n) noexcept {
    const Eigen::Index h = ((rows + n - 1) / n + 15) / 16 * 16;
    const Eigen::Index b = std::min(rows, h * p);
    return {b, p + 1 == n ? rows : std::min(rows, h * (p + 1))};
}

/// Quantizes X once on the caller, then gemm_rows over `pool.size()` row ranges.
template <class W, PartRunner P>
[[nodiscard]] inline matrix_f gemm_on_pool(const W& w, const cref_matrix_f& x, act_int act, P& pool, kernel_isa isa) {
    detail::require_dim(x.cols(), w.cols(), "gemm_parallel", "x.cols()");
    const kernel_isa path = resolve_isa(isa, "gemm_parallel");
    const quantized_activations a = quantize_activations(x, act.bits);
    matrix_f y(x.rows(), w.rows());
    pool.run([&](int p, int n) {
        const auto [r0, r1] = part_rows(w.rows(), p, n);
        if (r0 < r1) gemm_rows(w, a, r0, r1, y, path);
    });
    return y;
}
} // namespace detail

/// Y = X·Wᵀ with int activations quantized per token inside (once, on the calling thread), output
/// rows split over `pool` (a `PartRunner`: lowbit's caller-owned `thread_pool` from thread_pool.hpp,
/// or the caller's own pool) in contiguous ranges of multiples of 16 rows. Bit-identical to
/// gemm(w, x, act, isa). O(T·rows·cols / pool.size()) per part. No thread is created here.
/// \throws as gemm (rethrown by the pool from whichever part failed first).
template <PackedWeights M, PartRunner P>
[[nodiscard]] inline matrix_f gemm_parallel(const M& w, const cref_matrix_f& x, act_int act, P& pool,
                                            kernel_isa isa = kernel_isa::automatic) {
    return detail::gemm_on_pool(w, x, act, pool, isa);
}

/// MXFP4 weights: as above.
template <class L, PartRunner P>
[[nodiscard]] inline matrix_f gemm_parallel(const packed_mxfp4<L>& w, const cref_matrix_f& x, act_int act, P& pool,
                                            kernel_isa isa = kernel_isa::automatic) {
    return detail::gemm_on_pool(w, x, act, pool, isa);
}

/// Sign-packed activations for binary × binary: bit j = [x_j ≥ 0] in binary1's block layout, with
/// β = mean|x| (XNOR-Net) and Σx.
struct binary_activations {
    Eigen::Index cols = 0;                    ///< unpadded length
    packed_matrix<binary1>::buffer bits;      ///< padded to a multiple of 256 columns (padding bits 0)
    float beta = 0.0f;                        ///< mean |x_j|
    float sum = 0.0f;                         ///< Σ x_j
};

/// Binarizes x (length n ≥ 1, finite). O(n).
/// \throws shape_error (empty), numeric_error (NaN/Inf).
[[nodiscard]] inline binary_activations binarize_activations(const cref_vector_f& x) {
    constexpr const char* where = "binarize_activations";
    detail::require_nonempty(x, where, "x");
    detail::require_finite(x, where, "x");
    using T = pack_format<binary1>;
    const Eigen::Index nb = packed_matrix<binary1>::blocks_for(x.size());
    binary_activations a;
    a.cols = x.size();
    a.bits.assign(static_cast<std::size_t>(nb * T::block_bytes), 0);
    std::uint8_t u[T::block_weights];
    double sabs = 0.0, sum = 0.0;
    for (Eigen::Index b = 0; b < nb; ++b) {
        for (Eigen::Index j = 0; j < T::block_weights; ++j) {
            const Eigen::Index c = b * T::block_weights + j;
            u[j] = static_cast<std::uint8_t>(c < x.size() && x(c) >= 0.0f);
        }
        detail::pack_block<binary1>(u, a.bits.data() + b * T::block_bytes);
    }
    for (Eigen::Index j = 0; j < x.size(); ++j) {
        sabs += std::fabs(static_cast<double>(x(j)));
        sum += static_cast<double>(x(j));
    }
    a.beta = static_cast<float>(sabs / static_cast<double>(x.size()));
    a.sum = static_cast<float>(sum);
    return a;
}

/// Exact XNOR-popcount dot products d_i = Σ_j b_ij·sign(x_j) = cols − 2·popcount(w_i ⊕ a) for rows
/// [row_begin, row_end) into out[i − row_begin].
/// \throws shape_error (length mismatch, bad range), invalid_argument (ISA unsupported).
template <PackedWeights M>
    requires std::is_same_v<typename M::format, binary1>
inline void xnor_dot_rows(const M& w, const binary_activations& a, Eigen::Index row_begin,
                          Eigen::Index row_end, std::int32_t* out, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "xnor_dot_rows";
    detail::require_kernel_shape(w, a.cols, where, "activation length");
    detail::require_dim(static_cast<Eigen::Index>(a.bits.size()), w.row_bytes(), where, "activation bit buffer size");
    detail::require<shape_error>(0 <= row_begin && row_begin <= row_end && row_end <= w.rows(), where, "row range outside [0, rows)");
    switch (detail::resolve_isa(isa, where)) {
#if LOWBIT_HAVE_X86_KERNELS
    case kernel_isa::amx:
    case kernel_isa::avx512: detail::avx512_kernels::xnor_rows(w, row_begin, row_end, a.bits.data(), out); return;
    case kernel_isa::avx2: detail::avx2_kernels::xnor_rows(w, row_begin, row_end, a.bits.data(), out); return;
#endif
    case kernel_isa::neon: // binary × binary on aarch64: the portable popcount path
    case kernel_isa::generic: detail::generic_kernels::xnor_rows(w, row_begin, row_end, a.bits.data(), out); return;
    default: detail::scalar_kernels::xnor_rows(w, row_begin, row_end, a.bits.data(), out); return;
    }
}

/// Binary × binary GEMV: y_i = α_i·β·d_i + μ_i·Σx with d_i from xnor_dot_rows (XNOR-Net).
template <PackedWeights M>
    requires std::is_same_v<typename M::format, binary1>
[[nodiscard]] inline vector_f xnor_gemv(const M& w, const cref_vector_f& x,
                                        kernel_isa isa = kernel_isa::automatic) {
    const binary_activations a = binarize_activations(x);
    std::vector<std::int32_t> d(static_cast<std::size_t>(w.rows()));
    xnor_dot_rows(w, a, 0, w.rows(), d.data(), isa);
    vector_f y(w.rows());
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        y(i) = (w.scale()(i) * a.beta) * static_cast<float>(d[static_cast<std::size_t>(i)]) +
               (w.has_offset() ? w.offset()(i) * a.sum : 0.0f);
    return y;
}

LOWBIT_END_NAMESPACE
