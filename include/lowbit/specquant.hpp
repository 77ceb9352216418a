#pragma once
/// \file specquant.hpp
/// SpecQuant (Zhao et al., AAAI'26, arXiv 2511.11663; sources.md / algorithms.md §12): SmoothQuant-form
/// smoothing followed by channel-wise low-frequency Fourier truncation of the smoothed weight.
///
/// Stage 1, smoothing: per input channel j, `λ_j = max|X_j|^α / max_i|W_ij|^(1−α)`;
/// `X' = X·diag(λ)⁻¹`, `W' = W·diag(λ)`, so `X'·W'ᵀ = X·Wᵀ` (up to float rounding). This header adds
/// the factors from per-channel activation statistics (`activation_absmax`,
/// `smoothquant_scales_from_absmax`); the apply step is `smooth_activations` / `smooth_weights` of
/// orthogonal.hpp (included), as for SmoothQuant itself.
/// Stage 2, truncation (**RECON** §12.1): per output row i of `W'` (`[out x in]`), the real DFT along
/// the input dimension; keep the `K_i` lowest frequencies `f = 0..K_i−1` (with their conjugate
/// mirrors `n−f`), `K_i` the smallest count whose cumulative spectral energy reaches `η` of the row's
/// total; the inverse DFT of the kept spectrum is `W_FFT`, the residual `R = W' − W_FFT` is what a
/// recipe quantizes. docs/specquant.md has the contracts, the tests and a measurement.
///
/// Layout: weights row-major `[out x in]`, activations `[tokens x in]`. The FFT is Eigen's
/// unsupported FFT module (kissfft backend, any length; docs/specquant.md says why), in double.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>
#include <unsupported/Eigen/FFT>

#include <algorithm>
#include <cmath>
#include <complex>
#include <limits>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Per-input-channel absolute maximum of activations `x` (`[tokens x in]`): `a_j = max_t |x_tj|`,
/// the statistic `smoothquant_scales_from_absmax` takes. Over several batches, take the element-wise
/// maximum of the results. O(tokens·in).
/// \throws shape_error (empty), numeric_error (NaN/Inf).
[[nodiscard]] inline vector_f activation_absmax(const cref_matrix_f& x) {
    constexpr const char* where = "activation_absmax";
    detail::require_nonempty(x, where, "x");
    detail::require_finite(x, where, "x");
    return x.cwiseAbs().colwise().maxCoeff().transpose();
}

/// SmoothQuant factors `λ_j = a_j^α / w_j^(1−α)` with `a_j = act_absmax(j)` and `w_j = max_i |w(i, j)|`,
/// computed in double and rounded to float. A channel with `a_j = 0` or `w_j = 0` (dead or unused:
/// nothing to migrate) gets `λ_j = 1`. With `act_absmax = activation_absmax(x)` these are exactly
/// `smoothquant_scales(x, w, alpha)` (orthogonal.hpp), here from statistics gathered over any number of
/// batches without keeping them. Apply with `smooth_activations(x, λ)` and `smooth_weights(w, λ)`.
///
/// \param act_absmax  `(in)`, finite, ≥ 0 (e.g. `activation_absmax` of calibration activations).
/// \param w           `[out x in]`, finite, non-empty.
/// \param alpha       migration strength α ∈ [0, 1] (0.5 = SmoothQuant's default).
/// \returns `λ` `(in)`, every entry finite and > 0. O(out·in).
/// \throws shape_error (empty `w`, `act_absmax` size ≠ in), numeric_error (NaN/Inf, a λ_j that does not fit
///         a positive finite float), invalid_argument (negative statistic, α outside [0, 1]).
[[nodiscard]] inline vector_f smoothquant_scales_from_absmax(const cref_vector_f& act_absmax,
                                                            const cref_matrix_f& w, double alpha = 0.5) {
    constexpr const char* where = "smoothquant_scales_from_absmax";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require_dim(act_absmax.size(), w.cols(), where, "act_absmax size (must equal w cols)");
    detail::require_finite(act_absmax, where, "act_absmax");
    detail::require(act_absmax.minCoeff() >= 0.0f, where, "argument 'act_absmax' has a negative entry");
    detail::require(alpha >= 0.0 && alpha <= 1.0, where, "argument 'alpha' must lie in [0, 1]");
    const vector_f wmax = w.cwiseAbs().colwise().maxCoeff().transpose();
    vector_f lambda(w.cols());
    for (Eigen::Index j = 0; j < w.cols(); ++j) {
        const double a = act_absmax(j), m = wmax(j);
        if (a == 0.0 || m == 0.0) {
            lambda(j) = 1.0f;
            continue;
        }
        const float l = static_cast<float>(std::pow(a, alpha) / std::pow(m, 1.0 - alpha));
        detail::require<numeric_error>(std::isfinite(l) && l >= std::numeric_limits<float>::min(), where, [&] {
            return "smoothing factor of channel " + std::to_string(j) + " does not fit a positive finite float";
        });
        lambda(j) = l;
    }
    return lambda;
}

/// How many low frequencies each row keeps. With `n` columns a row has `n/2 + 1` (integer division)
/// distinct frequencies `f = 0..⌊n/2⌋` of a real signal; keeping `K` of them means `f < K`.
///  - default: the smallest `K` with `Σ_{f<K} E_f ≥ eta·Σ_f E_f` (E_f below), then capped at `k_max`;
///  - `fixed_k > 0`: exactly `min(fixed_k, n/2 + 1)` per row (`eta`, `k_max` ignored).
/// `E_f = |X_f|²` for DC and (n even) Nyquist, `2|X_f|²` otherwise (the conjugate mirror), so
/// `Σ_f E_f = n·‖row‖²` (Parseval). An all-zero row keeps `K = 0`.
struct spectral_truncation {
    double eta = 0.995;        ///< energy fraction to keep, in (0, 1]; 1 keeps every non-zero frequency
    Eigen::Index k_max = 0;    ///< cap on K per row (0: no cap); larger than n/2 + 1 is no cap
    Eigen::Index fixed_k = 0;  ///< > 0: fixed-K mode, K = min(fixed_k, n/2 + 1) on every row
};

/// Reals needed to store the `k` lowest frequencies of a real length-`n` signal: the DC coefficient
/// (f = 0) and, for even n, the Nyquist one (f = n/2) are real (1 each), every other kept coefficient
/// is complex (2). `spectral_stored_reals(n/2 + 1, n) == n`. O(1).
/// \throws invalid_argument unless 0 ≤ k ≤ n/2 + 1 and n ≥ 1.
[[nodiscard]] inline Eigen::Index spectral_stored_reals(Eigen::Index k, Eigen::Index n) {
    constexpr const char* where = "spectral_stored_reals";
    detail::require(n >= 1, where, "argument 'n' must be >= 1");
    detail::require(k >= 0 && k <= n / 2 + 1, where, "argument 'k' must lie in [0, n/2 + 1]");
    if (k == 0) return 0;
    return 2 * k - 1 - ((n % 2 == 0 && k == n / 2 + 1) ? 1 : 0);
}

/// Result of `spectral_truncate`: `w' = low + residual` (float rounding, bound in `spectral_truncate`).
struct spectral_split {
    matrix_f low;                              ///< W_FFT `[out x in]`: inverse DFT of the kept spectrum
    matrix_f residual;                         ///< R = W' − W_FFT `[out x in]`
    std::vector<Eigen::Index> kept;            ///< K_i per row (out entries), 0 ≤ K_i ≤ in/2 + 1
    std::vector<Eigen::VectorXcf> coefficients; ///< per row: the unnormalised DFT X_0..X_{K_i−1}, X_f = Σ_j w'_j e^{−2πi fj/n}
                                               ///< (DC and Nyquist imaginary parts stored as 0)
    std::vector<double> energy_kept;           ///< per row: Σ_{f<K_i} E_f / Σ_f E_f (1 for an all-zero row)

    /// Reals that storing every row's kept coefficients takes (Σ_i spectral_stored_reals(K_i, in)).
    [[nodiscard]] Eigen::Index stored_reals() const {
        Eigen::Index s = 0;
        for (Eigen::Index k : kept) s += spectral_stored_reals(k, low.cols());
        return s;
    }
};

namespace detail {

/// The double-precision inverse real DFT of a half spectrum given by its lowest `c.size()` frequencies
/// (the others 0), scaled by 1/n, into `out` (n values). `fft` and `half` are reused buffers.
inline void spectral_inverse_row(Eigen::FFT<double>& fft, std::vector<std::complex<double>>& half,
                                 const Eigen::VectorXcf& c, std::vector<double>& out) {
    std::fill(half.begin(), half.end(), std::complex<double>(0.0, 0.0));
    for (Eigen::Index f = 0; f < c.size(); ++f)
        half[static_cast<std::size_t>(f)] = std::complex<double>(c(f).real(), c(f).imag());
    if (out.size() == 1) { // kissfft's plan for length 1 crashes (Eigen 3.4.0); the DFT of one value is itself
        out[0] = half[0].real();
        return;
    }
    fft.inv(out.data(), half.data(), static_cast<Eigen::Index>(out.size()));
}

/// Half spectrum X_0..X_{n/2} of the real row `in` (n = in.size() values) into `half` (HalfSpectrum flag set).
inline void spectral_forward_row(Eigen::FFT<double>& fft, const std::vector<double>& in,
                                 std::vector<std::complex<double>>& half) {
    if (in.size() == 1) { // see spectral_inverse_row
        half[0] = std::complex<double>(in[0], 0.0);
        return;
    }
    fft.fwd(half.data(), in.data(), static_cast<Eigen::Index>(in.size()));
}

} // namespace detail

/// W_FFT from stored low-frequency coefficients: row i is the inverse real DFT of
/// `coefficients[i]` (frequencies 0..K_i−1, the rest 0), computed in double and rounded to float — the
/// same path `spectral_truncate` builds `low` with, so a caller that quantizes the coefficients
/// reconstructs with this. Imaginary parts of DC and (n even) Nyquist are ignored.
/// \param coefficients one vector per row, each with at most cols/2 + 1 finite entries.
/// \param cols         n ≥ 1, the row length.
/// \returns `[coefficients.size() x cols]`. O(rows·n log n) for n with small prime factors.
/// \throws shape_error (no rows, too many coefficients), invalid_argument (cols < 1), numeric_error (NaN/Inf).
[[nodiscard]] inline matrix_f spectral_synthesis(const std::vector<Eigen::VectorXcf>& coefficients,
                                                 Eigen::Index cols) {
    constexpr const char* where = "spectral_synthesis";
    detail::require<shape_error>(!coefficients.empty(), where, "argument 'coefficients' has no rows");
    detail::require(cols >= 1, where, "argument 'cols' must be >= 1");
    const Eigen::Index h = cols / 2 + 1;
    for (const auto& c : coefficients) {
        detail::require<shape_error>(c.size() <= h, where, "a row of 'coefficients' has more than cols/2 + 1 entries");
        for (Eigen::Index f = 0; f < c.size(); ++f)
            detail::require<numeric_error>(std::isfinite(c(f).real()) && std::isfinite(c(f).imag()), where,
                                           "argument 'coefficients' contains NaN or Inf");
    }
    Eigen::FFT<double> fft;
    std::vector<std::complex<double>> half(static_cast<std::size_t>(h));
    std::vector<double> row(static_cast<std::size_t>(cols));
    matrix_f out(static_cast<Eigen::Index>(coefficients.size()), cols);
    for (std::size_t i = 0; i < coefficients.size(); ++i) {
        detail::spectral_inverse_row(fft, half, coefficients[i], row);
        for (Eigen::Index j = 0; j < cols; ++j)
            out(static_cast<Eigen::Index>(i), j) = static_cast<float>(row[static_cast<std::size_t>(j)]);
    }
    return out;
}

/// SpecQuant stage 2: per row of `w` (the smoothed weight W', `[out x in]`), real DFT along the input
/// dimension in double, keep the K_i lowest frequencies chosen by `opt`, W_FFT = their inverse DFT
/// (from the float-rounded stored coefficients, `spectral_synthesis`), R = W' − W_FFT in float.
///
/// Error bounds: exact arithmetic gives `‖R_i‖² = (1/n)·Σ_{f≥K_i} E_f ≤ (1 − η)·‖W'_i‖²` (energy mode,
/// before the cap); in float each entry obeys `|W' − (W_FFT + R)| ≤ 2⁻²³·(|W'| + |W_FFT|)`, and
/// W_FFT differs from the exact truncation only by the float rounding of the stored coefficients and
/// of the result (relative error of order 2⁻²⁴ in norm). Deterministic (no global state; the FFT plans are local).
/// Complexity: O(out·n log n) for n with small prime factors (kissfft radices 2, 3, 4, 5; a larger prime
/// factor p costs O(p) per element and level, e.g. 43 for 11008 = 2⁸·43).
///
/// \param w    `[out x in]`, finite, non-empty.
/// \param opt  `eta ∈ (0, 1]`, `k_max ≥ 0`, `fixed_k ≥ 0`.
/// \throws shape_error (empty), numeric_error (NaN/Inf), invalid_argument (η outside (0, 1], negative k).
[[nodiscard]] inline spectral_split spectral_truncate(const cref_matrix_f& w, const spectral_truncation& opt = {}) {
    constexpr const char* where = "spectral_truncate";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require(opt.eta > 0.0 && opt.eta <= 1.0, where, "spectral_truncation.eta must lie in (0, 1]");
    detail::require(opt.k_max >= 0, where, "spectral_truncation.k_max must be >= 0");
    detail::require(opt.fixed_k >= 0, where, "spectral_truncation.fixed_k must be >= 0");
    const Eigen::Index m = w.rows(), n = w.cols(), h = n / 2 + 1;
    spectral_split out;
    out.kept.resize(static_cast<std::size_t>(m));
    out.coefficients.resize(static_cast<std::size_t>(m));
    out.energy_kept.resize(static_cast<std::size_t>(m));
    Eigen::FFT<double> fft;
    fft.SetFlag(Eigen::FFT<double>::HalfSpectrum);
    std::vector<double> row(static_cast<std::size_t>(n));
    std::vector<std::complex<double>> spec(static_cast<std::size_t>(h));
    std::vector<double> prefix(static_cast<std::size_t>(h + 1));
    for (Eigen::Index i = 0; i < m; ++i) {
        for (Eigen::Index j = 0; j < n; ++j) row[static_cast<std::size_t>(j)] = w(i, j);
        detail::spectral_forward_row(fft, row, spec);
        prefix[0] = 0.0;
        for (Eigen::Index f = 0; f < h; ++f) {
            const bool single = f == 0 || (n % 2 == 0 && f == n / 2);
            prefix[static_cast<std::size_t>(f + 1)] =
                prefix[static_cast<std::size_t>(f)] + (single ? 1.0 : 2.0) * std::norm(spec[static_cast<std::size_t>(f)]);
        }
        const double total = prefix[static_cast<std::size_t>(h)];
        Eigen::Index k = 0;
        if (opt.fixed_k > 0) {
            k = std::min(opt.fixed_k, h);
        } else {
            const double target = opt.eta * total;
            while (k < h && prefix[static_cast<std::size_t>(k)] < target) ++k;
            if (opt.k_max > 0) k = std::min(k, opt.k_max);
        }
        Eigen::VectorXcf c(k);
        for (Eigen::Index f = 0; f < k; ++f) {
            const auto& s = spec[static_cast<std::size_t>(f)];
            const bool single = f == 0 || (n % 2 == 0 && f == n / 2);
            c(f) = std::complex<float>(static_cast<float>(s.real()), single ? 0.0f : static_cast<float>(s.imag()));
        }
        out.kept[static_cast<std::size_t>(i)] = k;
        out.energy_kept[static_cast<std::size_t>(i)] = total > 0.0 ? prefix[static_cast<std::size_t>(k)] / total : 1.0;
        out.coefficients[static_cast<std::size_t>(i)] = std::move(c);
    }
    out.low = spectral_synthesis(out.coefficients, n);
    out.residual = w - out.low;
    return out;
}

LOWBIT_END_NAMESPACE
