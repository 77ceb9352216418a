#pragma once
/// \file vq.hpp
/// Vector quantization: weighted k-means++ seeding and Lloyd iterations (GPTVQ/VPTQ-style
/// Hessian-diagonal weights), nearest-codeword encode and decode, the reshaping between weight
/// matrices and d-vectors, and KBVQ-MoE's per-channel affine output correction (BCOS).
///
/// Layout: a set of N vectors of dimension d is a row-major `[N x d]` matrix; a weight matrix
/// `[m x n]` (n a multiple of d) is split along its rows into consecutive d-vectors, vector
/// `i·(n/d) + c` = `W(i, c·d : c·d+d)`. Weights `h` have the same shape as the points (one non-negative
/// weight per coordinate) and define the distance `Σ_j h_j (x_j − c_j)²`; an empty weight matrix
/// means all ones. Codes are `std::uint32_t` indices into the `[K x d]` codebook.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Options of `weighted_kmeans`.
struct kmeans_options {
    Eigen::Index codebook_size = 256; ///< K ≥ 1 centroids (≤ number of vectors)
    int iterations = 25;              ///< Lloyd iterations ≥ 0 (stops early at a fixed point)
    std::uint64_t seed = 0;           ///< seed of the std::mt19937_64 used by k-means++
};

/// Result of `weighted_kmeans`.
struct kmeans_result {
    matrix_f centroids;                ///< (K, d)
    std::vector<std::uint32_t> codes;  ///< (N) index of each vector's centroid
    std::vector<double> objective;     ///< weighted SSE after seeding ([0]) and after each Lloyd iteration
};

namespace detail {

inline void check_vq_weights(const cref_matrix_f& points, const cref_matrix_f& weights, const char* where) {
    if (weights.size() == 0) return;
    require_dim(weights.rows(), points.rows(), where, "weights rows (must equal points rows)");
    require_dim(weights.cols(), points.cols(), where, "weights cols (must equal points cols)");
    require_finite(weights, where, "weights");
    require(weights.minCoeff() >= 0.0f, where, "argument 'weights' must be non-negative");
}

inline double weighted_sq_dist(const float* x, const float* c, const float* h, Eigen::Index d) {
    double s = 0;
    for (Eigen::Index j = 0; j < d; ++j) {
        const double diff = static_cast<double>(x[j]) - static_cast<double>(c[j]);
        s += (h ? static_cast<double>(h[j]) : 1.0) * diff * diff;
    }
    return s;
}

/// Nearest centroid of every point (weighted), chunked GEMM expansion in double:
/// ‖x−c‖²_h = Σ h x² − 2 (h∘x)·c + h·(c∘c). Ties: lowest index.
template <class = void> // compiled only where called (docs/compile_time.md)
void nearest_codes(const cref_matrix_f& points, const cref_matrix_f& weights, const cref_matrix_f& centroids,
                          std::uint32_t* codes) {
    const Eigen::Index n = points.rows(), d = points.cols(), k = centroids.rows();
    const bool weighted = weights.size() != 0;
    const Eigen::MatrixXd c = centroids.cast<double>();
    const Eigen::MatrixXd ct = c.transpose();                              // [d x K]
    const Eigen::MatrixXd c2t = c.cwiseProduct(c).transpose();             // [d x K]
    const Eigen::RowVectorXd cnorm = c.rowwise().squaredNorm().transpose(); // (K)
    // Row-major distance block of at most ~64K entries (stays in cache; argmin scans contiguous rows).
    const Eigen::Index chunk = std::max<Eigen::Index>(16, 65536 / std::max<Eigen::Index>(k, 1));
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dist;
    for (Eigen::Index s = 0; s < n; s += chunk) {
        const Eigen::Index b = std::min(chunk, n - s);
        const Eigen::MatrixXd x = points.middleRows(s, b).cast<double>();
        if (weighted) {
            const Eigen::MatrixXd h = weights.middleRows(s, b).cast<double>();
            const Eigen::MatrixXd hx = h.cwiseProduct(x);
            dist.noalias() = h * c2t;
            dist.noalias() -= 2.0 * hx * ct;
        } else {
            dist.noalias() = -2.0 * x * ct;
            dist.rowwise() += cnorm;
        }
        for (Eigen::Index i = 0; i < b; ++i) {
            const double* row = dist.row(i).data();
            Eigen::Index best = 0;
            double bv = row[0];
            for (Eigen::Index q = 1; q < k; ++q)
                if (row[q] < bv) {
                    bv = row[q];
                    best = q;
                }
            codes[s + i] = static_cast<std::uint32_t>(best);
        }
    }
    (void)d;
}

template <class = void> // compiled only where called (docs/compile_time.md)
double vq_sse(const cref_matrix_f& points, const cref_matrix_f& weights, const cref_matrix_f& centroids,
                     const std::vector<std::uint32_t>& codes) {
    double s = 0;
    const bool weighted = weights.size() != 0;
    for (Eigen::Index i = 0; i < points.rows(); ++i)
        s += weighted_sq_dist(points.row(i).data(), centroids.row(codes[static_cast<std::size_t>(i)]).data(),
                              weighted ? weights.row(i).data() : nullptr, points.cols());
    return s;
}

} // namespace detail

/// Weighted sum of squared errors Σ_i Σ_j h_ij (x_ij − c_{code_i, j})². O(N·d).
/// \throws shape_error if the sizes disagree; invalid_argument for a code ≥ K.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] double vq_objective(const cref_matrix_f& points, const cref_matrix_f& centroids,
                                         const std::vector<std::uint32_t>& codes,
                                         const cref_matrix_f& weights = matrix_f()) {
    constexpr const char* where = "vq_objective";
    detail::require_dim(static_cast<Eigen::Index>(codes.size()), points.rows(), where, "codes size");
    detail::require_dim(centroids.cols(), points.cols(), where, "centroids cols (vector dimension)");
    detail::check_vq_weights(points, weights, where);
    for (auto c : codes)
        detail::require(static_cast<Eigen::Index>(c) < centroids.rows(), where, "a code is >= the codebook size");
    return detail::vq_sse(points, weights, centroids, codes);
}

/// Encodes every point to its nearest centroid in the (weighted) distance; ties go to the lowest
/// index. O(N·K·d) as blocked GEMMs in double.
/// \throws shape_error (empty, dimension mismatch), numeric_error (NaN/Inf).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::vector<std::uint32_t> vq_encode(const cref_matrix_f& points, const cref_matrix_f& centroids,
                                                          const cref_matrix_f& weights = matrix_f()) {
    constexpr const char* where = "vq_encode";
    detail::require_nonempty(points, where, "points");
    detail::require_nonempty(centroids, where, "centroids");
    detail::require_dim(centroids.cols(), points.cols(), where, "centroids cols (vector dimension)");
    detail::require_finite(points, where, "points");
    detail::require_finite(centroids, where, "centroids");
    detail::check_vq_weights(points, weights, where);
    std::vector<std::uint32_t> codes(static_cast<std::size_t>(points.rows()));
    detail::nearest_codes(points, weights, centroids, codes.data());
    return codes;
}

/// Decodes codes to `[N x d]` vectors (row i = centroid codes[i]). O(N·d).
/// \throws invalid_argument for a code ≥ K; shape_error for an empty codebook.
[[nodiscard]] inline matrix_f vq_decode(const std::vector<std::uint32_t>& codes, const cref_matrix_f& centroids) {
    detail::require_nonempty(centroids, "vq_decode", "centroids");
    matrix_f out(static_cast<Eigen::Index>(codes.size()), centroids.cols());
    for (std::size_t i = 0; i < codes.size(); ++i) {
        detail::require(static_cast<Eigen::Index>(codes[i]) < centroids.rows(), "vq_decode",
                        "code " + std::to_string(codes[i]) + " is >= the codebook size");
        out.row(static_cast<Eigen::Index>(i)) = centroids.row(codes[i]);
    }
    return out;
}

/// Weighted k-means: k-means++ seeding (D² sampling in the weighted distance; first centre drawn
/// uniformly) followed by Lloyd iterations — assignment to the nearest centroid (a point keeps its
/// previous code unless another is strictly closer) and the weighted-mean update
/// `c_kj = Σ_{i∈k} h_ij x_ij / Σ_{i∈k} h_ij` (unchanged where the weights sum to 0). An empty cluster
/// is moved onto the point with the largest current error. Each step can only lower the objective,
/// so `objective` is non-increasing (up to double rounding of the means).
///
/// \param points   `[N x d]`, finite, non-empty.
/// \param weights  empty, or `[N x d]` non-negative (e.g. the Hessian diagonal of each coordinate).
/// \throws shape_error, numeric_error, invalid_argument (K < 1, K > N, iterations < 0).
/// Complexity: O((iterations + 1)·N·K·d) plus O(N·K·d) for seeding.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] kmeans_result weighted_kmeans(const cref_matrix_f& points, const cref_matrix_f& weights,
                                                   const kmeans_options& opt) {
    constexpr const char* where = "weighted_kmeans";
    detail::require_nonempty(points, where, "points");
    detail::require_finite(points, where, "points");
    detail::check_vq_weights(points, weights, where);
    const Eigen::Index n = points.rows(), d = points.cols(), k = opt.codebook_size;
    detail::require(k >= 1, where, "codebook_size must be >= 1");
    detail::require(k <= n, where,
                    "codebook_size (" + std::to_string(k) + ") is larger than the number of vectors (" +
                        std::to_string(n) + ")");
    detail::require(opt.iterations >= 0, where, "iterations must be >= 0");
    const bool weighted = weights.size() != 0;
    auto hrow = [&](Eigen::Index i) { return weighted ? weights.row(i).data() : nullptr; };

    // k-means++ seeding.
    std::mt19937_64 rng(opt.seed);
    kmeans_result res;
    res.centroids.resize(k, d);
    std::vector<double> best(static_cast<std::size_t>(n), std::numeric_limits<double>::infinity());
    std::vector<std::uint32_t> codes(static_cast<std::size_t>(n), 0);
    Eigen::Index first = static_cast<Eigen::Index>(std::uniform_int_distribution<long long>(0, n - 1)(rng));
    for (Eigen::Index c = 0; c < k; ++c) {
        Eigen::Index pick = first;
        if (c > 0) {
            double total = 0;
            for (double b : best) total += b;
            if (total > 0) {
                double u = std::uniform_real_distribution<double>(0.0, total)(rng);
                pick = n - 1;
                for (Eigen::Index i = 0; i < n; ++i) {
                    u -= best[static_cast<std::size_t>(i)];
                    if (u < 0 && best[static_cast<std::size_t>(i)] > 0) {
                        pick = i;
                        break;
                    }
                }
            } else {
                pick = c % n; // all points already coincide with a centre
            }
        }
        res.centroids.row(c) = points.row(pick);
        for (Eigen::Index i = 0; i < n; ++i) {
            const double dd = detail::weighted_sq_dist(points.row(i).data(), res.centroids.row(c).data(), hrow(i), d);
            if (dd < best[static_cast<std::size_t>(i)]) {
                best[static_cast<std::size_t>(i)] = dd;
                codes[static_cast<std::size_t>(i)] = static_cast<std::uint32_t>(c);
            }
        }
    }
    res.objective.push_back(detail::vq_sse(points, weights, res.centroids, codes));

    std::vector<std::uint32_t> cand(static_cast<std::size_t>(n));
    Eigen::MatrixXd num(k, d), den(k, d);
    for (int it = 0; it < opt.iterations; ++it) {
        // Update step (weighted means).
        num.setZero();
        den.setZero();
        for (Eigen::Index i = 0; i < n; ++i) {
            const auto c = static_cast<Eigen::Index>(codes[static_cast<std::size_t>(i)]);
            for (Eigen::Index j = 0; j < d; ++j) {
                const double h = weighted ? static_cast<double>(weights(i, j)) : 1.0;
                num(c, j) += h * static_cast<double>(points(i, j));
                den(c, j) += h;
            }
        }
        std::vector<Eigen::Index> count(static_cast<std::size_t>(k), 0);
        for (auto c : codes) ++count[c];
        for (Eigen::Index c = 0; c < k; ++c)
            for (Eigen::Index j = 0; j < d; ++j)
                if (den(c, j) > 0) res.centroids(c, j) = static_cast<float>(num(c, j) / den(c, j));
        // Assignment step: keep the old code unless another centroid is strictly closer.
        detail::nearest_codes(points, weights, res.centroids, cand.data());
        std::vector<double> err(static_cast<std::size_t>(n));
        bool changed = false;
        for (Eigen::Index i = 0; i < n; ++i) {
            const auto si = static_cast<std::size_t>(i);
            const double old_d = detail::weighted_sq_dist(points.row(i).data(), res.centroids.row(codes[si]).data(), hrow(i), d);
            const double new_d = detail::weighted_sq_dist(points.row(i).data(), res.centroids.row(cand[si]).data(), hrow(i), d);
            if (new_d < old_d) {
                codes[si] = cand[si];
                err[si] = new_d;
                changed = true;
            } else {
                err[si] = old_d;
            }
        }
        // Empty clusters: move onto the point with the largest error (objective only decreases).
        std::fill(count.begin(), count.end(), 0);
        for (auto c : codes) ++count[c];
        for (Eigen::Index c = 0; c < k; ++c) {
            if (count[static_cast<std::size_t>(c)] != 0) continue;
            const auto worst = static_cast<Eigen::Index>(std::max_element(err.begin(), err.end()) - err.begin());
            if (err[static_cast<std::size_t>(worst)] <= 0) break;
            --count[codes[static_cast<std::size_t>(worst)]];
            res.centroids.row(c) = points.row(worst);
            codes[static_cast<std::size_t>(worst)] = static_cast<std::uint32_t>(c);
            err[static_cast<std::size_t>(worst)] = 0;
            ++count[static_cast<std::size_t>(c)];
            changed = true;
        }
        res.objective.push_back(detail::vq_sse(points, weights, res.centroids, codes));
        if (!changed && it > 0) break;
    }
    res.codes = std::move(codes);
    return res;
}

/// Splits every row of `w` (`[m x n]`, n a multiple of `dim`) into consecutive `dim`-vectors:
/// returns `[m·n/dim x dim]`. O(m·n).
/// \throws invalid_argument (dim < 1), shape_error (empty, n not a multiple of dim).
[[nodiscard]] inline matrix_f to_vectors(const cref_matrix_f& w, Eigen::Index dim) {
    constexpr const char* where = "to_vectors";
    detail::require(dim >= 1, where, "argument 'dim' must be >= 1");
    detail::require_nonempty(w, where, "w");
    detail::require<shape_error>(w.cols() % dim == 0, where,
                                 "w cols (" + std::to_string(w.cols()) + ") is not a multiple of dim (" +
                                     std::to_string(dim) + ")");
    const Eigen::Index per = w.cols() / dim;
    matrix_f out(w.rows() * per, dim);
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index c = 0; c < per; ++c) out.row(i * per + c) = w.row(i).segment(c * dim, dim);
    return out;
}

/// Inverse of `to_vectors`: `[rows·cols/dim x dim]` → `[rows x cols]`.
/// \throws shape_error if the element counts disagree or cols is not a multiple of dim.
[[nodiscard]] inline matrix_f from_vectors(const cref_matrix_f& v, Eigen::Index rows, Eigen::Index cols) {
    constexpr const char* where = "from_vectors";
    detail::require_nonempty(v, where, "v");
    detail::require<shape_error>(cols % v.cols() == 0, where, "cols is not a multiple of the vector dimension");
    detail::require_dim(v.rows() * v.cols(), rows * cols, where, "element count");
    const Eigen::Index dim = v.cols(), per = cols / dim;
    matrix_f out(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index c = 0; c < per; ++c) out.row(i).segment(c * dim, dim) = v.row(i * per + c);
    return out;
}

/// Per-coordinate k-means weights for the d-vectors of an `[rows x n]` weight matrix from a per-column
/// importance `h` (n) — e.g. the GPTQ Hessian diagonal (GPTVQ) or 1/[H⁻¹]_jj: `[rows·n/dim x dim]`.
/// \throws shape_error if n is not a multiple of dim; numeric_error for NaN/Inf; invalid_argument for h < 0.
[[nodiscard]] inline matrix_f column_importance_weights(const cref_vector_f& h, Eigen::Index rows, Eigen::Index dim) {
    constexpr const char* where = "column_importance_weights";
    detail::require_nonempty(h, where, "h");
    detail::require_finite(h, where, "h");
    detail::require(h.minCoeff() >= 0.0f, where, "argument 'h' must be non-negative");
    detail::require(rows >= 1, where, "argument 'rows' must be >= 1");
    matrix_f w(rows, h.size());
    for (Eigen::Index i = 0; i < rows; ++i) w.row(i) = h.transpose();
    return to_vectors(w, dim);
}

/// Per-output-channel affine correction ŷ' = γ ⊙ ŷ + β (KBVQ-MoE BCOS, RECON §5.2).
struct affine_correction {
    vector_f gamma; ///< (m) channel gains
    vector_f beta;  ///< (m) channel offsets

    /// Applies the correction to outputs `[tokens x m]`. \throws shape_error on a channel mismatch.
    [[nodiscard]] matrix_f apply(const cref_matrix_f& y_hat) const {
        detail::require_dim(y_hat.cols(), gamma.size(), "affine_correction::apply", "y_hat cols (channels)");
        matrix_f out = y_hat;
        for (Eigen::Index i = 0; i < out.rows(); ++i)
            out.row(i) = out.row(i).cwiseProduct(gamma.transpose()) + beta.transpose();
        return out;
    }
};

/// BCOS closed form per output channel k, over calibration tokens (rows):
/// `γ_k = Cov(y_k, ŷ_k)/Var(ŷ_k)`, `β_k = E[y_k] − γ_k E[ŷ_k]` — the least-squares affine map from ŷ_k
/// to y_k (γ_k = 1 where Var(ŷ_k) = 0). With `mean_only`, γ = 1 and β = E[y − ŷ] (classical bias
/// correction). Folding: γ into the quantized weight's row scale, β into the layer bias.
/// \param y_ref  full-precision outputs `[tokens x m]`; \param y_hat quantized-model outputs, same shape.
/// \throws shape_error (empty, shape mismatch), numeric_error (NaN/Inf). O(tokens·m).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] affine_correction fit_affine_correction(const cref_matrix_f& y_ref, const cref_matrix_f& y_hat,
                                                             bool mean_only = false) {
    constexpr const char* where = "fit_affine_correction";
    detail::require_nonempty(y_ref, where, "y_ref");
    detail::require_dim(y_hat.rows(), y_ref.rows(), where, "y_hat rows (tokens)");
    detail::require_dim(y_hat.cols(), y_ref.cols(), where, "y_hat cols (channels)");
    detail::require_finite(y_ref, where, "y_ref");
    detail::require_finite(y_hat, where, "y_hat");
    const Eigen::Index t = y_ref.rows(), m = y_ref.cols();
    affine_correction out{vector_f(m), vector_f(m)};
    for (Eigen::Index k = 0; k < m; ++k) {
        double my = 0, mh = 0;
        for (Eigen::Index i = 0; i < t; ++i) {
            my += y_ref(i, k);
            mh += y_hat(i, k);
        }
        my /= static_cast<double>(t);
        mh /= static_cast<double>(t);
        double cov = 0, var = 0;
        for (Eigen::Index i = 0; i < t; ++i) {
            const double dh = y_hat(i, k) - mh;
            cov += (y_ref(i, k) - my) * dh;
            var += dh * dh;
        }
        const double g = (mean_only || var <= 0) ? 1.0 : cov / var;
        out.gamma(k) = static_cast<float>(g);
        out.beta(k) = static_cast<float>(my - g * mh);
    }
    return out;
}

LOWBIT_END_NAMESPACE
