#pragma once
/// \file hadamard.hpp
/// Walsh–Hadamard transforms for rotations (algorithms.md §1.2; performance.md §5; ecosystem.md §3 row 9).
///
/// - `fwht_inplace` / `fwht_rows`: the fast Walsh–Hadamard transform of length 2^m, float and double,
///   vectorised with xsimd (the log2(L) lowest stages as an L×L ±1 product with broadcasts, the rest as
///   radix-4/radix-2 butterflies on whole batches). Unnormalised (entries ±1) or normalised (±1/√n).
///   O(n log n) per row.
/// - `hadamard_construction(n)`: which orthogonal matrix a width n gets. n = b·2^a (b odd):
///   Sylvester H_(2^a) when b = 1; otherwise the smallest K = b·2^j (j ≤ a) with a Paley I or Paley II
///   Hadamard matrix (GF(q) for every prime power q, e.g. 12, 20, 28, 36, 44, 52, 60, 108, 140, 284, 344,
///   924), giving H_K ⊗ H_(n/K); when none exists (e.g. 13696 = 107·2^7), the documented fallback
///   R_b ⊗ H_(2^a) with R_b a seeded random orthogonal b×b matrix (not a Hadamard matrix: entries are
///   not ±1/√n, but Q is exactly orthogonal up to rounding). Dense blocks are limited to K ≤ 4096.
/// - `hadamard_transform`: the plan object (a `RowTransform`): x ↦ x·Q with
///   Q = D_s (A ⊗ H_P)/√n, A the K×K block, D_s optional seeded random ±1 signs ("randomised Hadamard").
///   Cost per row O(n log P + n K).

#include <lowbit/config.hpp>
#include <lowbit/detail/hadamard_tables.hpp>
#include <lowbit/detail/xsimd_compat.hpp>
#include <lowbit/error.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/types.hpp>

#include <xsimd/xsimd.hpp>

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
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

} // namespace detail

/// Whether a transform keeps the ±1 entries of H or divides by √n (making it orthogonal).
enum class hadamard_norm {
    none,      ///< entries ±1 (H Hᵀ = n I)
    orthonormal ///< entries ±1/√n (H Hᵀ = I)
};

/// In-place FWHT of `x` (length a power of two): x ↦ x H (H symmetric Sylvester, H_ij = (−1)^popcount(i&j)),
/// optionally normalised. Throws `shape_error` if the length is not a power of two (0 included).
/// O(n log n); exact in integer arithmetic for |x| small enough, float error ≤ log2(n)·ε·‖x‖·√n.
template <class T>
    requires std::is_floating_point_v<T>
inline void fwht_inplace(std::span<T> x, hadamard_norm norm = hadamard_norm::none) {
    detail::require<shape_error>(detail::is_pow2(static_cast<long long>(x.size())), "fwht_inplace",
                                 "length of 'x' must be a power of two, got " + std::to_string(x.size()));
    detail::fwht_simd(x.data(), x.size());
    if (norm == hadamard_norm::orthonormal)
        detail::scale_inplace(x.data(), x.size(), static_cast<T>(1.0 / std::sqrt(static_cast<double>(x.size()))));
}

namespace detail {
template <class T>
inline void fwht_rows_impl(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m,
                           hadamard_norm norm) {
    require<shape_error>(is_pow2(m.cols()), "fwht_rows",
                         "columns of 'm' must be a power of two, got " + std::to_string(m.cols()));
    const auto n = static_cast<std::size_t>(m.cols());
    const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(n)));
    for (Eigen::Index r = 0; r < m.rows(); ++r) {
        T* row = &m(r, 0);
        fwht_simd(row, n);
        if (norm == hadamard_norm::orthonormal) scale_inplace(row, n, s);
    }
}
} // namespace detail

/// FWHT of every row of a row-major float matrix (columns a power of two), in place. See `fwht_inplace`.
inline void fwht_rows(Eigen::Ref<matrix_f> m, hadamard_norm norm = hadamard_norm::none) { detail::fwht_rows_impl<float>(m, norm); }
/// FWHT of every row of a row-major double matrix, in place.
inline void fwht_rows(Eigen::Ref<matrix_d> m, hadamard_norm norm = hadamard_norm::none) { detail::fwht_rows_impl<double>(m, norm); }

/// How `hadamard_construction` builds the orthogonal matrix of a width.
enum class hadamard_method {
    sylvester,          ///< n = 2^a: H_n by FWHT only (block K = 1)
    paley1,             ///< H_K ⊗ H_(n/K), H_K Paley I over GF(q), K = q + 1, q ≡ 3 mod 4
    paley2,             ///< H_K ⊗ H_(n/K), H_K Paley II over GF(q), K = 2(q + 1), q ≡ 1 mod 4
    random_orthogonal   ///< fallback R_b ⊗ H_(2^a), R_b seeded random orthogonal of the odd factor b
};

/// The answer of `hadamard_construction(n)`: Q = (A ⊗ H_pow2)/√n with A the `block`×`block` matrix.
struct hadamard_construction_info {
    Eigen::Index n = 0;      ///< the width
    hadamard_method method = hadamard_method::sylvester;
    Eigen::Index block = 1;  ///< K, order of the dense block A
    Eigen::Index pow2 = 1;   ///< P = n / K, a power of two
    long q = 0;              ///< the field order for Paley constructions (0 otherwise)

    /// True when Q is a (scaled) Hadamard matrix, i.e. not the random-orthogonal fallback.
    [[nodiscard]] bool is_hadamard() const { return method != hadamard_method::random_orthogonal; }
    /// Human-readable description, e.g. "H_172 (Paley I, GF(171)) x H_64".
    [[nodiscard]] std::string describe() const {
        const std::string p = "H_" + std::to_string(pow2);
        switch (method) {
        case hadamard_method::sylvester: return "H_" + std::to_string(n) + " (Sylvester)";
        case hadamard_method::paley1:
            return "H_" + std::to_string(block) + " (Paley I, GF(" + std::to_string(q) + ")) x " + p;
        case hadamard_method::paley2:
            return "H_" + std::to_string(block) + " (Paley II, GF(" + std::to_string(q) + ")) x " + p;
        case hadamard_method::random_orthogonal:
            return "R_" + std::to_string(block) + " (seeded random orthogonal, no Hadamard known) x " + p;
        }
        return {};
    }
};

/// Largest dense block order K lowbit builds (a K×K float block is applied per row).
inline constexpr Eigen::Index hadamard_max_block = 4096;

/// Which construction width `n` gets (see the file comment). Never asserts: throws `invalid_argument`
/// for n < 1 or when the odd factor of n exceeds `hadamard_max_block`. O(log n + K·√K) for the search.
[[nodiscard]] inline hadamard_construction_info hadamard_construction(Eigen::Index n) {
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
        } else {
            continue;
        }
        info.block = K;
        info.pow2 = n / K;
        return info;
    }
    info.method = hadamard_method::random_orthogonal;
    info.block = b;
    info.pow2 = p2;
    return info;
}

/// The ±1 Hadamard matrix of order K built by `method` (paley1/paley2/sylvester), as int8. For tests
/// and dense uses; throws `invalid_argument` if the method does not apply to K.
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
    case hadamard_method::random_orthogonal: break;
    }
    throw invalid_argument("lowbit: hadamard_sign_matrix: the random-orthogonal fallback has no sign matrix");
}

/// Options of a `hadamard_transform`.
struct hadamard_options {
    bool randomized = false;         ///< multiply by seeded random signs first: Q = diag(s)·H
    std::uint64_t seed = 0;          ///< seed of the signs (std::mt19937_64)
    bool require_hadamard = false;   ///< throw instead of using the random-orthogonal fallback
    std::uint64_t fallback_seed = 0x5eed; ///< seed of the fallback's random orthogonal block
};

/// The orthogonal (randomised) Hadamard transform of width n, x ↦ x·Q with Q = D_s (A ⊗ H_P)/√n
/// (`hadamard_construction(n)` gives A and P). A `RowTransform`. Building costs O(K²) (+O(K³) for the
/// fallback); applying O(n log P + n K) per row. ‖QᵀQ − I‖_max ≤ 1e-5 in float for every supported n.
class hadamard_transform {
public:
    /// Plans width n. Throws `invalid_argument` for n < 1, an oversized odd factor, or when
    /// `opt.require_hadamard` is set and n has only the fallback.
    explicit hadamard_transform(Eigen::Index n, hadamard_options opt = {}) : info_(hadamard_construction(n)) {
        if (opt.require_hadamard && !info_.is_hadamard())
            throw invalid_argument("lowbit: hadamard_transform: no Hadamard matrix of order " + std::to_string(n) +
                                   " is known to lowbit (" + info_.describe() + "); unset require_hadamard to accept it");
        const double inv_sqrt_n = 1.0 / std::sqrt(static_cast<double>(n));
        if (info_.block > 1) {
            matrix_d a;
            if (info_.is_hadamard())
                a = hadamard_sign_matrix(info_.block, info_.method).cast<double>() * inv_sqrt_n;
            else // R_b orthogonal: scale so that the unnormalised FWHT's √P is absorbed
                a = random_orthogonal(info_.block, opt.fallback_seed) / std::sqrt(static_cast<double>(info_.pow2));
            left_d_ = a.transpose();
            left_f_ = left_d_.cast<float>();
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

    /// x ↦ x Q on every row (float). Throws `shape_error` if `m.cols() != n`.
    void apply_rows(Eigen::Ref<matrix_f> m) const { apply_impl<float>(m, left_f_); }
    /// x ↦ x Q on every row (double).
    void apply_rows(Eigen::Ref<matrix_d> m) const { apply_impl<double>(m, left_d_); }

    /// The dense n×n Q in double (rows of the identity transformed). O(n² K).
    [[nodiscard]] matrix_d matrix() const {
        matrix_d q = matrix_d::Identity(info_.n, info_.n);
        apply_rows(q);
        return q;
    }

private:
    template <class T, class Left>
    void apply_impl(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m,
                    const Left& left) const {
        using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        detail::require_dim(m.cols(), info_.n, "hadamard_transform::apply_rows", "columns of 'm'");
        const auto K = info_.block, P = info_.pow2;
        const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(info_.n)));
        mat tmp(K, P);
        for (Eigen::Index r = 0; r < m.rows(); ++r) {
            T* row = &m(r, 0);
            if (signs_f_.size() > 0)
                for (Eigen::Index i = 0; i < info_.n; ++i) row[i] *= static_cast<T>(signs_f_(i));
            for (Eigen::Index k = 0; k < K; ++k) detail::fwht_simd(row + k * P, static_cast<std::size_t>(P));
            if (K == 1) {
                detail::scale_inplace(row, static_cast<std::size_t>(P), s);
            } else {
                Eigen::Map<mat> x(row, K, P);
                tmp.noalias() = left * x;
                x = tmp;
            }
        }
    }

    hadamard_construction_info info_;
    matrix_f left_f_; // Aᵀ/√n (or R_bᵀ/√P), K×K
    matrix_d left_d_;
    vector_f signs_f_;
};

LOWBIT_END_NAMESPACE
