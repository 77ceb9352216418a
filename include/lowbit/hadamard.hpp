#pragma once
/// \file hadamard.hpp
/// Walsh–Hadamard transforms for rotations (sources.md §1.2; sources.md §1.2, §P 5).
///
/// - `fwht_inplace` / `fwht_rows`: the fast Walsh–Hadamard transform of length 2^m, float and double.
///   Float rows of ≥ 16 elements run the register-resident AVX-512 kernel (arch/fwht_avx512.hpp) when the
///   CPU has AVX-512F (run-time check, no -march needed); otherwise xsimd (the log2(L) lowest stages as an
///   L×L ±1 product with broadcasts, the rest as radix-4/radix-2 butterflies on whole batches).
///   Unnormalised (entries ±1) or normalised (±1/√n). O(n log n) per row. Float error against the exact
///   y = xH: ‖ŷ − y‖₂ ≤ log2(n)·2⁻²⁴·‖y‖₂ on the AVX-512 and scalar paths (one rounding per radix-2 stage;
///   the AVX-512 result is bit-identical to the scalar one), ≤ (log2(n) + L)·2⁻²⁴·‖y‖₂ on the xsimd path
///   (its L×L stage sums L terms in sequence); tests/test_hadamard.cpp checks both against double.
/// - `hadamard_construction(n, policy)`: which orthogonal matrix a width n gets. n = b·2^a (b odd):
///   Sylvester H_(2^a) when b = 1; otherwise the smallest K = b·2^j (j ≤ a) with a Paley I, Paley II
///   (GF(q) for every prime power q, e.g. 12, 20, 28, 36, 44, 52, 60, 108, 140, 284, 924) or stored
///   Williamson (172) Hadamard matrix, giving H_K ⊗ H_(n/K); when none exists (e.g. 13696 = 107·2^7), the
///   documented fallback R_b ⊗ H_(2^a) with R_b a seeded random orthogonal b×b matrix (not a Hadamard
///   matrix: entries are not ±1/√n, but Q is exactly orthogonal up to rounding). Dense blocks are limited to
///   K ≤ 4096. `hadamard_policy::bounded_cost` keeps the Hadamard only when K ≤ 64 and otherwise uses
///   W_b ⊗ H_(2^a), W_b three overlapping seeded Sylvester windows (O(log n) additions per element): the
///   dense K×K stage costs K multiply-adds per element, e.g. 172·11008 = 1.9 M for 11008 = H_172 ⊗ H_64,
///   ≥ 30 µs at Zen 4's 16 fp32 FMA/cycle — an exact Hadamard of that width cannot meet 15 µs this way.
/// - `hadamard_transform`: the plan object (a `RowTransform`): x ↦ x·Q with
///   Q = D_s (A ⊗ H_P)/√n, A the K×K block, D_s optional seeded random ±1 signs ("randomised Hadamard").
///   Cost per row O(n log P + n K); the Williamson H_172 with P ≥ 16 goes through the real Fourier
///   eigenbasis of its circulant blocks (≈ n K/4 multiply-adds: 11008 = H_172 ⊗ H_64 in 0.47 M, not 1.89 M).

#include <lowbit/arch/fwht_avx512.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/detail/hadamard_tables.hpp>
#include <lowbit/detail/xsimd_compat.hpp>
#include <lowbit/error.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/types.hpp>

#include <xsimd/xsimd.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

namespace detail {

/// Scalar radix-2 FWHT, unnormalised. Precondition: n a power of two. Reference for the SIMD path.
template <class T>
inline void fwht_scalar(T* x, std::size_t n) noexcept {
    for (std::size_t h = 1; h < n; h *= 2)
        for (std::size_t i = 0; i < n; i += 2 * h)
            for (std::size_t j = i; j < i + h; ++j) {
                const T a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
}

/// xsimd FWHT, unnormalised. Precondition: n a power of two.
template <class T>
inline void fwht_simd(T* x, std::size_t n) noexcept {
    using batch = xsimd::batch<T>;
    constexpr std::size_t L = batch::size;
    if constexpr (L < 2) {
        fwht_scalar(x, n);
    } else {
        if (n < 2 * L) {
            fwht_scalar(x, n);
            return;
        }
        // Stages h < L: each chunk of L becomes chunk · H_L = Σ_k x_k · (row k of H_L).
        alignas(64) std::array<T, L * L> hrow{}; // row k of H_L at hrow[k·L ..]
        for (std::size_t k = 0; k < L; ++k)
            for (std::size_t l = 0; l < L; ++l) hrow[k * L + l] = (std::popcount(k & l) & 1) ? T(-1) : T(1);
        for (std::size_t c = 0; c < n; c += L) {
            batch acc = batch(x[c]) * batch::load_aligned(hrow.data());
            for (std::size_t k = 1; k < L; ++k) acc = acc + batch(x[c + k]) * batch::load_aligned(hrow.data() + k * L);
            acc.store_unaligned(x + c);
        }
        // Stages h >= L: radix-4 (two stages per pass), then one radix-2 stage if log2(n/L) is odd.
        std::size_t h = L;
        for (; 4 * h <= n; h *= 4)
            for (std::size_t i = 0; i < n; i += 4 * h)
                for (std::size_t j = i; j < i + h; j += L) {
                    const batch a = batch::load_unaligned(x + j), b = batch::load_unaligned(x + j + h);
                    const batch c = batch::load_unaligned(x + j + 2 * h), d = batch::load_unaligned(x + j + 3 * h);
                    const batch s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
                    (s0 + s2).store_unaligned(x + j);
                    (s1 + s3).store_unaligned(x + j + h);
                    (s0 - s2).store_unaligned(x + j + 2 * h);
                    (s1 - s3).store_unaligned(x + j + 3 * h);
                }
        if (h < n)
            for (std::size_t j = 0; j < h; j += L) {
                const batch a = batch::load_unaligned(x + j), b = batch::load_unaligned(x + j + h);
                (a + b).store_unaligned(x + j);
                (a - b).store_unaligned(x + j + h);
            }
    }
}

template <class T>
inline void scale_inplace(T* x, std::size_t n, T s) noexcept {
    using batch = xsimd::batch<T>;
    constexpr std::size_t L = batch::size;
    std::size_t i = 0;
    const batch bs(s);
    for (; i + L <= n; i += L) (batch::load_unaligned(x + i) * bs).store_unaligned(x + i);
    for (; i < n; ++i) x[i] *= s;
}

inline bool is_pow2(long long n) { return n > 0 && (n & (n - 1)) == 0; }

/// Unnormalised FWHT of length P on each of the K consecutive rows at x (one AVX-512 call for float rows of
/// ≥ 16 when available, else row by row).
template <class T>
inline void fwht_blocks(T* x, std::size_t P, std::size_t K) noexcept;

/// Which code path `fwht_dispatch` takes for T and n on this CPU: "avx512" (arch/fwht_avx512.hpp, float,
/// n ≥ 16, chosen at run time from the cached CPU features), "xsimd" (compile-time batch width), "scalar".
template <class T>
inline const char* fwht_path(std::size_t n) noexcept {
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (n >= 16 && host_cpu_features().avx512) return "avx512";
#endif
    return (xsimd::batch<T>::size >= 2 && n >= 2 * xsimd::batch<T>::size) ? "xsimd" : "scalar";
}

/// Unnormalised FWHT of x[0..n) followed by x *= scale (skipped when scale = 1). Precondition: n a power of
/// two. Float rows of ≥ 16 elements use the AVX-512 kernel when the CPU has it (run-time dispatch, no
/// -march needed), everything else the xsimd path.
template <class T>
inline void fwht_dispatch(T* x, std::size_t n, T scale) noexcept {
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (n >= 16 && host_cpu_features().avx512) {
            fwht_avx512::fwht(x, n, scale);
            return;
        }
#endif
    fwht_simd(x, n);
    if (scale != T(1)) scale_inplace(x, n, scale);
}

template <class T>
inline void fwht_blocks(T* x, std::size_t P, std::size_t K) noexcept {
    if (P == 1) return; // H_1 = [1]
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (P >= 16 && host_cpu_features().avx512) {
            fwht_avx512::fwht_rows(x, P, K);
            return;
        }
#endif
    for (std::size_t k = 0; k < K; ++k) fwht_dispatch(x + k * P, P, T(1));
}

} // namespace detail

/// Whether a transform keeps the ±1 entries of H or divides by √n (making it orthogonal).
enum class hadamard_norm {
    none,      ///< entries ±1 (H Hᵀ = n I)
    orthonormal ///< entries ±1/√n (H Hᵀ = I)
};

/// In-place FWHT of `x` (length a power of two): x ↦ x H (H symmetric Sylvester, H_ij = (−1)^popcount(i&j)),
/// optionally normalised. Throws `shape_error` if the length is not a power of two (0 included), and
/// `numeric_error` if x holds NaN/Inf (or overflows): y₀ = Σ xᵢ is then not finite (x is left transformed).
/// O(n log n); exact in integer arithmetic for |x| small enough, float error ≤ log2(n)·ε·‖x‖·√n.
template <class T>
    requires std::is_floating_point_v<T>
inline void fwht_inplace(std::span<T> x, hadamard_norm norm = hadamard_norm::none) {
    detail::require<shape_error>(detail::is_pow2(static_cast<long long>(x.size())), "fwht_inplace",
                                 "length of 'x' must be a power of two, got " + std::to_string(x.size()));
    detail::fwht_dispatch(x.data(), x.size(),
                          norm == hadamard_norm::orthonormal ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(x.size()))) : T(1));
    detail::require<numeric_error>(std::isfinite(x[0]), "fwht_inplace", "'x' holds NaN or Inf (or the sum overflows)");
}

namespace detail {
template <class T>
inline void fwht_rows_impl(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m,
                           hadamard_norm norm) {
    require<shape_error>(is_pow2(m.cols()), "fwht_rows",
                         "columns of 'm' must be a power of two, got " + std::to_string(m.cols()));
    const auto n = static_cast<std::size_t>(m.cols());
    const T s = norm == hadamard_norm::orthonormal ? static_cast<T>(1.0 / std::sqrt(static_cast<double>(n))) : T(1);
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
        fwht_dispatch(&m(r, 0), n, s);
        require<numeric_error>(std::isfinite(m(r, 0)), "fwht_rows",
                               "row " + std::to_string(r) + " of 'm' holds NaN or Inf (or its sum overflows)");
    }
}
} // namespace detail

/// FWHT of every row of a row-major float matrix (columns a power of two), in place. See `fwht_inplace`
/// (`shape_error` for other widths, `numeric_error` for a row with NaN/Inf).
inline void fwht_rows(Eigen::Ref<matrix_f> m, hadamard_norm norm = hadamard_norm::none) { detail::fwht_rows_impl<float>(m, norm); }
/// FWHT of every row of a row-major double matrix, in place.
inline void fwht_rows(Eigen::Ref<matrix_d> m, hadamard_norm norm = hadamard_norm::none) { detail::fwht_rows_impl<double>(m, norm); }

/// How `hadamard_construction` builds the orthogonal matrix of a width.
enum class hadamard_method {
    sylvester,          ///< n = 2^a: H_n by FWHT only (block K = 1)
    paley1,             ///< H_K ⊗ H_(n/K), H_K Paley I over GF(q), K = q + 1, q ≡ 3 mod 4
    paley2,             ///< H_K ⊗ H_(n/K), H_K Paley II over GF(q), K = 2(q + 1), q ≡ 1 mod 4
    williamson,         ///< H_K ⊗ H_(n/K), H_K from a stored Williamson quadruple (K = 172)
    random_orthogonal,  ///< fallback R_b ⊗ H_(2^a), R_b a dense seeded random orthogonal of the odd factor b
    sylvester_windows   ///< W_b ⊗ H_(2^a), W_b three overlapping seeded Sylvester windows (cheap, not Hadamard)
};

/// Which constructions `hadamard_construction` may choose.
enum class hadamard_policy {
    /// A Hadamard matrix H_K ⊗ H_P whenever lowbit can build one (any K), else the dense random
    /// orthogonal R_b ⊗ H_P. The default. The dense K×K block costs K multiply-adds per element.
    exact_first,
    /// Bounded cost per element: the Hadamard construction only when its dense block has
    /// K ≤ `hadamard_max_dense_block` (64), else the windowed W_b ⊗ H_P (≈ 3 log2(b) + log2(P)
    /// additions per element; orthogonal, entries not ±1/√n, max |Q_ij|·√n ≤ 3).
    bounded_cost
};

/// Largest dense block the `bounded_cost` policy accepts (K multiply-adds per element).
inline constexpr Eigen::Index hadamard_max_dense_block = 64;

/// The answer of `hadamard_construction(n)`: Q = (A ⊗ H_pow2)/√n with A the `block`×`block` matrix
/// (for `sylvester_windows`, A = √b·W_b).
struct hadamard_construction_info {
    Eigen::Index n = 0;      ///< the width
    hadamard_method method = hadamard_method::sylvester;
    Eigen::Index block = 1;  ///< K, order of the block A
    Eigen::Index pow2 = 1;   ///< P = n / K, a power of two
    long q = 0;              ///< the field order for Paley constructions (0 otherwise)

    /// True when Q is a (scaled) Hadamard matrix, i.e. neither the random-orthogonal nor the windowed construction.
    [[nodiscard]] bool is_hadamard() const {
        return method != hadamard_method::random_orthogonal && method != hadamard_method::sylvester_windows;
    }
    /// Multiply-adds per element of the dense block stage (K for a dense block, 0 for Sylvester and windows).
    [[nodiscard]] Eigen::Index dense_cost_per_element() const {
        return (block > 1 && method != hadamard_method::sylvester_windows) ? block : 0;
    }
    /// Human-readable description, e.g. "H_172 (Williamson) x H_64".
    [[nodiscard]] std::string describe() const {
        const std::string p = "H_" + std::to_string(pow2);
        switch (method) {
        case hadamard_method::sylvester: return "H_" + std::to_string(n) + " (Sylvester)";
        case hadamard_method::paley1:
            return "H_" + std::to_string(block) + " (Paley I, GF(" + std::to_string(q) + ")) x " + p;
        case hadamard_method::paley2:
            return "H_" + std::to_string(block) + " (Paley II, GF(" + std::to_string(q) + ")) x " + p;
        case hadamard_method::williamson: return "H_" + std::to_string(block) + " (Williamson) x " + p;
        case hadamard_method::random_orthogonal:
            return "R_" + std::to_string(block) + " (seeded random orthogonal, no Hadamard known) x " + p;
        case hadamard_method::sylvester_windows:
            return "W_" + std::to_string(block) + " (seeded overlapping Sylvester windows, not Hadamard) x " + p;
        }
        return {};
    }
};

/// Largest dense block order K lowbit builds (a K×K float block is applied per row).
inline constexpr Eigen::Index hadamard_max_block = 4096;

/// Which construction width `n` gets under `policy` (see the file comment). Never asserts: throws
/// `invalid_argument` for n < 1 or when the odd factor of n exceeds `hadamard_max_block`.
/// O(log n + K·√K) for the search.
[[nodiscard]] inline hadamard_construction_info hadamard_construction(Eigen::Index n,
                                                                      hadamard_policy policy = hadamard_policy::exact_first) {
    detail::require(n >= 1, "hadamard_construction", "width 'n' must be >= 1, got " + std::to_string(n));
    hadamard_construction_info info;
    info.n = n;
    Eigen::Index b = n, p2 = 1;
    while (b % 2 == 0) {
        b /= 2;
        p2 *= 2;
    }
    if (b == 1) {
        info.pow2 = n;
        return info;
    }
    detail::require(b <= hadamard_max_block, "hadamard_construction",
                    "width " + std::to_string(n) + " has odd factor " + std::to_string(b) +
                        ", larger than the dense block limit " + std::to_string(hadamard_max_block));
    for (Eigen::Index K = b; K <= n && K <= hadamard_max_block; K *= 2) {
        if (detail::paley1_applies(K)) {
            info.method = hadamard_method::paley1;
            info.q = static_cast<long>(K - 1);
        } else if (detail::paley2_applies(K)) {
            info.method = hadamard_method::paley2;
            info.q = static_cast<long>(K / 2 - 1);
        } else if (detail::williamson_applies(static_cast<long>(K))) {
            info.method = hadamard_method::williamson;
        } else {
            continue;
        }
        if (policy == hadamard_policy::bounded_cost && K > hadamard_max_dense_block) break;
        info.block = K;
        info.pow2 = n / K;
        return info;
    }
    info.method = policy == hadamard_policy::bounded_cost ? hadamard_method::sylvester_windows : hadamard_method::random_orthogonal;
    info.q = 0;
    info.block = b;
    info.pow2 = p2;
    return info;
}

/// The ±1 Hadamard matrix of order K built by `method` (paley1/paley2/williamson/sylvester), as int8. For
/// tests and dense uses; throws `invalid_argument` if the method does not apply to K.
[[nodiscard]] inline matrix_i8 hadamard_sign_matrix(Eigen::Index k, hadamard_method method) {
    switch (method) {
    case hadamard_method::sylvester:
        detail::require(detail::is_pow2(k), "hadamard_sign_matrix", "Sylvester order must be a power of two");
        return detail::sylvester_hadamard(static_cast<long>(k));
    case hadamard_method::paley1:
        detail::require(detail::paley1_applies(k), "hadamard_sign_matrix",
                        "Paley I needs K − 1 a prime power ≡ 3 mod 4, got K = " + std::to_string(k));
        return detail::paley1_hadamard(static_cast<long>(k - 1));
    case hadamard_method::paley2:
        detail::require(detail::paley2_applies(k), "hadamard_sign_matrix",
                        "Paley II needs K/2 − 1 a prime power ≡ 1 mod 4, got K = " + std::to_string(k));
        return detail::paley2_hadamard(static_cast<long>(k / 2 - 1));
    case hadamard_method::williamson:
        detail::require(detail::williamson_applies(static_cast<long>(k)), "hadamard_sign_matrix",
                        "no stored Williamson quadruple of order K/4 (lowbit has K = 172), got K = " + std::to_string(k));
        return detail::williamson_hadamard(static_cast<long>(k));
    case hadamard_method::random_orthogonal:
    case hadamard_method::sylvester_windows: break;
    }
    throw invalid_argument("lowbit: hadamard_sign_matrix: the random-orthogonal and windowed constructions have no sign matrix");
}

/// Options of a `hadamard_transform`.
struct hadamard_options {
    bool randomized = false;         ///< multiply by seeded random signs first: Q = diag(s)·H
    std::uint64_t seed = 0;          ///< seed of the signs (std::mt19937_64)
    bool require_hadamard = false;   ///< throw instead of using a construction that is not a Hadamard matrix
    std::uint64_t fallback_seed = 0x5eed; ///< seed of the fallback's random orthogonal block / the windows' signs
    hadamard_policy policy = hadamard_policy::exact_first; ///< which constructions may be chosen
};

namespace detail {

/// Multiplies x[0..n) by `signs` (when not null) and tells whether x then holds no NaN/Inf: one pass that
/// flips and sums (a finite sum ⇒ every term finite), the exact element check only when the sum is not
/// finite (it may overflow from large finite values). Float rows use the AVX-512 pass when available.
template <class T>
inline bool multiply_signs_check_finite(T* x, const float* signs, std::size_t n) noexcept {
    T sum = 0;
    bool summed = false;
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (host_cpu_features().avx512) {
            sum = fwht_avx512::multiply_and_sum(x, signs, n);
            summed = true;
        }
#endif
    if (!summed) {
        using batch = xsimd::batch<T>;
        constexpr std::size_t L = batch::size;
        batch acc(T(0));
        std::size_t i = 0;
        for (; i + L <= n; i += L) {
            batch v = batch::load_unaligned(x + i);
            if (signs) {
                alignas(64) T s[L];
                for (std::size_t l = 0; l < L; ++l) s[l] = static_cast<T>(signs[i + l]);
                v = v * batch::load_aligned(s);
                v.store_unaligned(x + i);
            }
            acc += v;
        }
        sum = detail::lane_sum(acc);
        for (; i < n; ++i) {
            if (signs) x[i] *= static_cast<T>(signs[i]);
            sum += x[i];
        }
    }
    if (std::isfinite(sum)) return true;
    for (std::size_t j = 0; j < n; ++j)
        if (!std::isfinite(x[j])) return false;
    return true;
}

/// Row k of the K×C slice at x (row stride `stride`) times s[k].
template <class T>
inline void scale_rows(T* x, Eigen::Index stride, Eigen::Index C, const T* s, Eigen::Index K) noexcept {
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (C % 16 == 0 && host_cpu_features().avx512) return fwht_avx512::scale_rows(x, stride, C, s, K);
#endif
    for (Eigen::Index k = 0; k < K; ++k) scale_inplace(x + k * stride, static_cast<std::size_t>(C), s[k]);
}

/// Unnormalised FWHT over rows lo .. lo + w − 1 of the K×C slice at x (row stride `stride`; each "element"
/// of the transform is a row of C values, so every butterfly is a vector add/sub over C columns). Float
/// slices with C a multiple of 16 use the AVX-512 step when the CPU has it.
template <class T>
inline void fwht_over_rows(T* x, Eigen::Index stride, Eigen::Index C, Eigen::Index lo, Eigen::Index w) noexcept {
#if LOWBIT_HAVE_X86_KERNELS
    if constexpr (std::is_same_v<T, float>)
        if (C % 16 == 0 && host_cpu_features().avx512) return fwht_avx512::fwht_over_rows(x, stride, C, lo, w);
#endif
    using batch = xsimd::batch<T>;
    constexpr Eigen::Index L = static_cast<Eigen::Index>(batch::size);
    for (Eigen::Index h = 1; h < w; h *= 2)
        for (Eigen::Index i = lo; i < lo + w; i += 2 * h)
            for (Eigen::Index j = i; j < i + h; ++j) {
                T* a = x + j * stride;
                T* b = x + (j + h) * stride;
                Eigen::Index p = 0;
                for (; p + L <= C; p += L) {
                    const batch u = batch::load_unaligned(a + p), v = batch::load_unaligned(b + p);
                    (u + v).store_unaligned(a + p);
                    (u - v).store_unaligned(b + p);
                }
                for (; p < C; ++p) {
                    const T u = a[p], v = b[p];
                    a[p] = u + v;
                    b[p] = u - v;
                }
            }
}

/// Left multiplication by the transposed Williamson Hadamard matrix through the eigenbasis of its circulant
/// blocks. H = [[A, B, C, D], [−B, A, −D, C], [−C, D, A, −B], [−D, −C, B, A]] with symmetric circulants of odd
/// order m, all diagonalised by the real orthonormal Fourier basis (1/√m, √(2/m)·cos(2πkj/m),
/// √(2/m)·sin(2πkj/m), k = 1 … (m−1)/2) with eigenvalues λ_k = Σ_d a_d cos(2πkd/m) shared by the cos and sin
/// vectors. By the symmetry x_j ± x_(m−j), the forward basis change of a block is one ((m+1)/2)² cos product
/// and one ((m−1)/2)² sin product; so Hᵀ·X costs 8·(((m+1)/2)² + ((m−1)/2)²)·P ≈ 2·(4m)²·P/4 multiply-adds
/// instead of (4m)²·P: 474 k instead of 1.89 M for 11008 = H_172 ⊗ H_64. Exact in exact arithmetic; float
/// rounding of the basis ~1e-7 (orthogonality tested to 1e-5).
template <class T>
struct williamson_spectral {
    using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Index m = 0, half = 0;                   // block order, (m − 1)/2
    mat cf, sf;                                      // (half+1)², half²: forward cos / sin bases
    mat cft, sft;                                    // their transposes (row-major copies: the inverse change)
    Eigen::Matrix<T, 4, Eigen::Dynamic> lam_c, lam_s; // eigenvalues ×scale per block matrix (A, B, C, D)

    williamson_spectral() = default;
    williamson_spectral(const williamson_quadruple& w, double scale) : m(w.m), half((w.m - 1) / 2) {
        constexpr double pi = 3.14159265358979323846;
        const double md = static_cast<double>(m);
        cf.resize(half + 1, half + 1);
        sf.resize(half, half);
        for (Eigen::Index k = 0; k <= half; ++k)
            for (Eigen::Index j = 0; j <= half; ++j)
                cf(k, j) = static_cast<T>((k == 0 ? std::sqrt(1.0 / md) : std::sqrt(2.0 / md)) *
                                          std::cos(2.0 * pi * static_cast<double>(k * j % m) / md));
        for (Eigen::Index k = 1; k <= half; ++k)
            for (Eigen::Index j = 1; j <= half; ++j)
                sf(k - 1, j - 1) = static_cast<T>(std::sqrt(2.0 / md) * std::sin(2.0 * pi * static_cast<double>(k * j % m) / md));
        cft = cf.transpose();
        sft = sf.transpose();
        lam_c.resize(4, half + 1);
        lam_s.resize(4, half);
        for (int t = 0; t < 4; ++t)
            for (Eigen::Index k = 0; k <= half; ++k) {
                double l = 0;
                for (Eigen::Index d = 0; d < m; ++d)
                    l += (w.rows[t][d] == '+' ? 1.0 : -1.0) * std::cos(2.0 * pi * static_cast<double>(k * d % m) / md);
                lam_c(t, k) = static_cast<T>(l * scale);
                if (k > 0) lam_s(t, k - 1) = static_cast<T>(l * scale);
            }
    }

    /// X (4m × P, row-major, in place) ← scale · Hᵀ X. The 4 block rows sit side by side (c × 4P), so each
    /// basis change is one GEMM for all four blocks. One scratch allocation of ≈ 3·4m·P values.
    void apply(T* x, Eigen::Index P) const {
        static constexpr int block_of[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
        static constexpr int sign_of[4][4] = {{1, 1, 1, 1}, {-1, 1, -1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}};
        using map = Eigen::Map<mat>;
        const Eigen::Index c = half + 1, sn = half, W = 4 * P;
        const std::unique_ptr<T[]> buf(new T[static_cast<std::size_t>(3 * (c + sn) * W)]); // every entry written before read
        map u(buf.get(), c, W), v(u.data() + c * W, sn, W);
        map hc(v.data() + sn * W, c, W), hs(hc.data() + c * W, sn, W);
        map zc(hs.data() + sn * W, c, W), zs(zc.data() + c * W, sn, W);
        for (Eigen::Index b = 0; b < 4; ++b) {
            const T* xb = x + b * m * P;
            std::copy_n(xb, P, u.data() + b * P);
            for (Eigen::Index j = 1; j <= half; ++j)
                add_sub(xb + j * P, xb + (m - j) * P, u.data() + j * W + b * P, v.data() + (j - 1) * W + b * P, P);
        }
        hc.noalias() = cf * u;
        hs.noalias() = sf * v;
        // spectral combine: row k of block bi = Σ_bj sign·λ_(t,k) · row k of block bj ((Hᵀ)_(bi, bj) = sign·C_t)
        const auto combine = [&](const map& h, map& z, const Eigen::Matrix<T, 4, Eigen::Dynamic>& lam) {
            for (Eigen::Index k = 0; k < h.rows(); ++k)
                for (int bi = 0; bi < 4; ++bi) {
                    T* out = z.data() + k * W + bi * P;
                    for (int bj = 0; bj < 4; ++bj)
                        axpy(static_cast<T>(sign_of[bj][bi]) * lam(block_of[bj][bi], k), h.data() + k * W + bj * P, out, P, bj == 0);
                }
        };
        combine(hc, zc, lam_c);
        combine(hs, zs, lam_s);
        u.noalias() = cft * zc; // reuse u, v for the results
        v.noalias() = sft * zs;
        for (Eigen::Index b = 0; b < 4; ++b) {
            T* yb = x + b * m * P;
            std::copy_n(u.data() + b * P, P, yb);
            for (Eigen::Index j = 1; j <= half; ++j)
                add_sub(u.data() + j * W + b * P, v.data() + (j - 1) * W + b * P, yb + j * P, yb + (m - j) * P, P);
        }
    }

    /// y = a·x (first) or y += a·x over n values (xsimd).
    static void axpy(T a, const T* x, T* y, Eigen::Index n, bool first) noexcept {
        using batch = xsimd::batch<T>;
        constexpr Eigen::Index L = static_cast<Eigen::Index>(batch::size);
        const batch ba(a);
        Eigen::Index i = 0;
        if (first) {
            for (; i + L <= n; i += L) (ba * batch::load_unaligned(x + i)).store_unaligned(y + i);
            for (; i < n; ++i) y[i] = a * x[i];
        } else {
            for (; i + L <= n; i += L) xsimd::fma(ba, batch::load_unaligned(x + i), batch::load_unaligned(y + i)).store_unaligned(y + i);
            for (; i < n; ++i) y[i] += a * x[i];
        }
    }

    /// s = a + c, d = a − c over n values (xsimd).
    static void add_sub(const T* a, const T* c, T* sum, T* diff, Eigen::Index n) noexcept {
        using batch = xsimd::batch<T>;
        constexpr Eigen::Index L = static_cast<Eigen::Index>(batch::size);
        Eigen::Index i = 0;
        for (; i + L <= n; i += L) {
            const batch x = batch::load_unaligned(a + i), y = batch::load_unaligned(c + i);
            (x + y).store_unaligned(sum + i);
            (x - y).store_unaligned(diff + i);
        }
        for (; i < n; ++i) {
            sum[i] = a[i] + c[i];
            diff[i] = a[i] - c[i];
        }
    }
};

} // namespace detail

/// The orthogonal (randomised) Hadamard transform of width n, x ↦ x·Q with Q = D_s (A ⊗ H_P)/√n
/// (`hadamard_construction(n, opt.policy)` gives A and P). A `RowTransform`. Building costs O(K²) (+O(K³)
/// for the random fallback); applying O(n log P + n K) per row for a dense block, O(n log n) for the
/// windowed construction. ‖QᵀQ − I‖_max ≤ 1e-5 in float for every supported n.
class hadamard_transform {
public:
    /// Plans width n. Throws `invalid_argument` for n < 1, an oversized odd factor, or when
    /// `opt.require_hadamard` is set and n gets a construction that is not a Hadamard matrix.
    /// (A template with one defaulted, unused parameter so that the random fallback's QR is compiled only
    /// where a transform is built, docs/compile_time.md; construct it as an ordinary class.)
    template <class = void>
    explicit hadamard_transform(Eigen::Index n, hadamard_options opt = {}) : info_(hadamard_construction(n, opt.policy)) {
        if (opt.require_hadamard && !info_.is_hadamard())
            throw invalid_argument("lowbit: hadamard_transform: no Hadamard matrix of order " + std::to_string(n) +
                                   " is known to lowbit under this policy (" + info_.describe() +
                                   "); unset require_hadamard to accept it");
        const double inv_sqrt_n = 1.0 / std::sqrt(static_cast<double>(n));
        if (info_.method == hadamard_method::sylvester_windows) {
            plan_windows(opt.fallback_seed);
        } else if (info_.block > 1) {
            matrix_d a;
            if (info_.is_hadamard())
                a = hadamard_sign_matrix(info_.block, info_.method).cast<double>() * inv_sqrt_n;
            else // R_b orthogonal: scale so that the unnormalised FWHT's √P is absorbed
                a = random_orthogonal(info_.block, opt.fallback_seed) / std::sqrt(static_cast<double>(info_.pow2));
            left_d_ = a.transpose();
            if (info_.method == hadamard_method::williamson) { // applied through the circulants' eigenbasis
                const auto& w = *detail::find_williamson(static_cast<long>(info_.block / 4));
                spectral_f_ = detail::williamson_spectral<float>(w, inv_sqrt_n);
                spectral_d_ = detail::williamson_spectral<double>(w, inv_sqrt_n);
            }
            left_f_ = left_d_.cast<float>();
            if (info_.is_hadamard() && info_.block >= sign_bits_min_block && info_.block <= sign_bits_max_block) {
                // the ±1 block (row i of Aᵀ) as sign nibbles for the AVX-512 one-column path, bit j % 4 set
                // where +; sign_table_matvec's layout: per 16-row group and 4-column group, the 16 rows' nibbles
                const Eigen::Index K = info_.block;
                sign_qgroups_ = (K + 3) / 4;
                sign_rgroups_ = (K + 63) / 64 * 4; // 16-row groups, a multiple of 4
                sign_idx_.assign(static_cast<std::size_t>(sign_rgroups_ * sign_qgroups_ * 16), 0);
                for (Eigen::Index i = 0; i < K; ++i)
                    for (Eigen::Index j = 0; j < K; ++j)
                        if (left_d_(i, j) > 0)
                            sign_idx_[static_cast<std::size_t>(((i / 16) * sign_qgroups_ + j / 4) * 16 + i % 16)] |= 1 << (j % 4);
                sign_scale_ = static_cast<float>(inv_sqrt_n);
            }
        }
        if (opt.randomized) {
            std::mt19937_64 rng(opt.seed);
            signs_f_.resize(n);
            for (Eigen::Index i = 0; i < n; ++i) signs_f_(i) = (rng() >> 63) ? -1.0f : 1.0f;
        }
    }

    [[nodiscard]] Eigen::Index dim() const { return info_.n; }
    [[nodiscard]] const hadamard_construction_info& info() const { return info_; }
    /// The ±1 signs of the randomised variant (empty when not randomised).
    [[nodiscard]] const vector_f& signs() const { return signs_f_; }

    /// x ↦ x Q on every row (float). Throws `shape_error` if `m.cols() != n`, `numeric_error` for a row with
    /// NaN/Inf (rows before it are transformed).
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_f> m) const { apply_impl<float>(m, left_f_); }
    /// x ↦ x Q on every row (double).
    template <class = void> // compiled only where called (docs/compile_time.md)
    void apply_rows(Eigen::Ref<matrix_d> m) const { apply_impl<double>(m, left_d_); }

    /// The dense n×n Q in double (rows of the identity transformed). O(n² K).
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] matrix_d matrix() const {
        matrix_d q = matrix_d::Identity(info_.n, info_.n);
        apply_rows(q);
        return q;
    }

private:
    // Windowed W_b: stage s multiplies row k by pre_[s][k] (seeded signs, and 1/√w for the rows of the
    // previous window), then FWHTs the rows of window s: [0, w), [b − w, b), [0, w) with w = 2^⌊log2 b⌋ (the
    // two windows overlap since w > b/2, so every output gets a share of every input); finally rows are
    // multiplied by post_ (the last window's 1/√w and the FWHT_P's 1/√P). Measured max |W_ij|·√b: 3.16
    // (b = 43), 3.25 (b = 107), like a dense Haar R_b (3.3–3.9); a Hadamard matrix has 1.
    void plan_windows(std::uint64_t seed) {
        const Eigen::Index b = info_.block;
        window_ = 1;
        while (2 * window_ < b) window_ *= 2;
        window_lo_ = {0, b - window_, 0};
        std::mt19937_64 rng(seed);
        const double inv_w = 1.0 / std::sqrt(static_cast<double>(window_));
        for (std::size_t s = 0; s < 3; ++s) {
            auto& pre = pre_[s];
            pre.resize(static_cast<std::size_t>(b));
            for (Eigen::Index k = 0; k < b; ++k) {
                double v = (rng() >> 63) ? -1.0 : 1.0;
                if (s > 0 && k >= window_lo_[s - 1] && k < window_lo_[s - 1] + window_) v *= inv_w;
                pre[static_cast<std::size_t>(k)] = v;
            }
            pre_f_[s].assign(pre.begin(), pre.end());
        }
        post_.assign(static_cast<std::size_t>(b), 1.0 / std::sqrt(static_cast<double>(info_.pow2)));
        for (Eigen::Index k = window_lo_[2]; k < window_lo_[2] + window_; ++k) post_[static_cast<std::size_t>(k)] *= inv_w;
        post_f_.assign(post_.begin(), post_.end());
    }

    // W_b on the K×P block matrix of one row, in place, column slice by column slice (K×C ≤ 16 KiB, so the
    // three window stages run in L1).
    template <class T>
    void apply_windows(T* row) const {
        const Eigen::Index K = info_.block, P = info_.pow2;
        Eigen::Index C = P;
        while (C > 16 && K * C * static_cast<Eigen::Index>(sizeof(T)) > 16384) C /= 2;
        const auto pick = [&](const std::vector<double>& d, const std::vector<float>& f) -> const T* {
            if constexpr (std::is_same_v<T, float>) return f.data();
            else return d.data();
        };
        for (Eigen::Index c0 = 0; c0 < P; c0 += C) {
            T* x = row + c0;
            for (std::size_t s = 0; s < 3; ++s) {
                detail::scale_rows(x, P, C, pick(pre_[s], pre_f_[s]), K);
                detail::fwht_over_rows(x, P, C, window_lo_[s], window_);
            }
            detail::scale_rows(x, P, C, pick(post_, post_f_), K);
        }
    }

    template <class T, class Left>
    void apply_impl(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m,
                    const Left& left) const {
        using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        detail::require_dim(m.cols(), info_.n, "hadamard_transform::apply_rows", "columns of 'm'");
        const auto K = info_.block, P = info_.pow2;
        const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(info_.n)));
        const bool windows = info_.method == hadamard_method::sylvester_windows;
        const bool bits = std::is_same_v<T, float> && !sign_idx_.empty() && detail::host_cpu_features().avx512 &&
                          !(info_.method == hadamard_method::williamson && P >= williamson_spectral_min_pow2);
        mat tmp(windows || bits || K == 1 ? 0 : K, windows || bits || K == 1 ? 0 : P); // K = 1 (Sylvester) needs none
        for (Eigen::Index r = 0; r < m.rows(); ++r) {
            T* row = &m(r, 0);
            const float* signs = signs_f_.size() > 0 ? signs_f_.data() : nullptr;
            if (K == 1) { // Sylvester: one FWHT with the 1/√n folded into its last pass; y₀ ∝ Σ ±xᵢ checks finiteness
                if (signs)
                    for (Eigen::Index i = 0; i < info_.n; ++i) row[i] *= static_cast<T>(signs[i]);
                detail::fwht_dispatch(row, static_cast<std::size_t>(P), s);
                detail::require<numeric_error>(std::isfinite(row[0]), "hadamard_transform::apply_rows",
                                               [&] { return "row " + std::to_string(r) + " of 'm' holds NaN or Inf (or overflows)"; });
                continue;
            }
            detail::require<numeric_error>(detail::multiply_signs_check_finite(row, signs, static_cast<std::size_t>(info_.n)),
                                           "hadamard_transform::apply_rows",
                                           [&] { return "row " + std::to_string(r) + " of 'm' holds NaN or Inf"; });
            detail::fwht_blocks(row, static_cast<std::size_t>(P), static_cast<std::size_t>(K));
            if (windows) {
                apply_windows(row);
            } else if (info_.method == hadamard_method::williamson && P >= williamson_spectral_min_pow2) {
                if constexpr (std::is_same_v<T, float>) spectral_f_.apply(row, P);
                else spectral_d_.apply(row, P);
            } else if (bits) {
                if constexpr (std::is_same_v<T, float>) apply_sign_bits(row);
            } else {
                Eigen::Map<mat> x(row, K, P);
                tmp.noalias() = left * x;
                x = tmp;
            }
        }
    }

    // Column by column through the ±1 signs (arch/fwht_avx512.hpp `sign_table_matvec`): the dense Hadamard
    // block of a small-P width (172, 344, …: one decode token) by 16-entry table lookups of 4-column signed
    // sums instead of a K×K float product streamed from L2 (docs/transforms.md, "Dense Hadamard blocks").
    void apply_sign_bits(float* row) const {
#if LOWBIT_HAVE_X86_KERNELS
        const Eigen::Index K = info_.block, P = info_.pow2;
        alignas(64) float xb[sign_bits_max_block + 16], yb[sign_bits_max_block + 64], tables[4 * (sign_bits_max_block + 16)];
        std::fill(xb + K, xb + 4 * sign_qgroups_, 0.0f);
        for (Eigen::Index p = 0; p < P; ++p) {
            for (Eigen::Index k = 0; k < K; ++k) xb[k] = row[k * P + p];
            detail::fwht_avx512::sign_table_matvec(sign_idx_.data(), static_cast<std::size_t>(sign_qgroups_),
                                                   static_cast<std::size_t>(sign_rgroups_), xb, sign_scale_, tables, yb);
            for (Eigen::Index k = 0; k < K; ++k) row[k * P + p] = yb[k];
        }
#else
        (void)row;
#endif
    }

    static constexpr Eigen::Index sign_bits_min_block = 32;   // below, the float product is as cheap
    static constexpr Eigen::Index sign_bits_max_block = 512; // stack buffers of apply_sign_bits (≈ 12 KiB)
    static constexpr Eigen::Index williamson_spectral_min_pow2 = 16; // below, the dense 4m×4m product is cheaper
    hadamard_construction_info info_;
    detail::williamson_spectral<float> spectral_f_;
    detail::williamson_spectral<double> spectral_d_;
    matrix_f left_f_; // Aᵀ/√n (or R_bᵀ/√P), K×K
    matrix_d left_d_;
    vector_f signs_f_;
    std::vector<std::int32_t> sign_idx_; // ±1 block as 4-column sign nibbles (sign_table_matvec), empty if unused
    Eigen::Index sign_qgroups_ = 0, sign_rgroups_ = 0;
    float sign_scale_ = 0.0f;            // 1/√n
    Eigen::Index window_ = 0;                // w = 2^⌊log2 b⌋ (windowed construction)
    std::array<Eigen::Index, 3> window_lo_{}; // first row of each window
    std::array<std::vector<double>, 3> pre_;
    std::array<std::vector<float>, 3> pre_f_;
    std::vector<double> post_;
    std::vector<float> post_f_;
};

LOWBIT_END_NAMESPACE
