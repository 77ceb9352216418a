#pragma once
/// \file pcdvq.hpp
/// PCDVQ — polar-coordinate decoupled vector quantization (arXiv 2506.05432; codebook details from
/// the third-party re-implementation, sources.md §8.2). Every 8-vector v of a weight row (after
/// the per-row scale s_i = ‖w_i‖/√n) is stored as a direction index (b_d bits) into a spherical code
/// built from E8-lattice directions by greedy farthest-point selection, and a magnitude index (b_r
/// bits) into a Lloyd–Max codebook for the χ distribution with 8 degrees of freedom. Bits per weight
/// (indices only): (b_d + b_r)/8, plus one float scale per row.
///
/// Encode: direction = argmax_c ⟨v/‖v‖, c⟩ (max cosine), magnitude = nearest centroid to ‖v‖.
/// Decode: v̂ = s_i · r̂ · ĉ.
///
/// The incoherence preprocessing of the paper (randomized Hadamard per row) is a transform, not part
/// of this quantizer (layering: quantizers do not include transforms): apply it before `pcdvq_encode`
/// and undo it after `pcdvq_decode` when wanted.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <numeric>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Vector dimension of PCDVQ (the E8 lattice).
inline constexpr Eigen::Index pcdvq_dim = 8;

namespace detail {

inline int gcd_int(int a, int b) {
    while (b) {
        const int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/// Enumerates doubled E8 points y = 2x (all even or all odd coordinates, Σy ≡ 0 mod 4) with
/// Σy² ≤ limit into `out` as canonical direction representatives y/gcd.
inline void e8_enumerate(std::array<int, 8>& y, int pos, int norm_left, int parity, int sum,
                         std::vector<std::array<int, 8>>& out) {
    if (pos == 8) {
        if (sum % 4 != 0) return;
        int g = 0;
        for (int v : y) g = gcd_int(g, v < 0 ? -v : v);
        if (g == 0) return; // origin
        std::array<int, 8> c{};
        for (int j = 0; j < 8; ++j) c[static_cast<std::size_t>(j)] = y[static_cast<std::size_t>(j)] / g;
        out.push_back(c);
        return;
    }
    const int bound = static_cast<int>(std::sqrt(static_cast<double>(norm_left)));
    for (int v = -bound; v <= bound; ++v) {
        if (((v % 2) + 2) % 2 != parity) continue;
        if (v * v > norm_left) continue;
        y[static_cast<std::size_t>(pos)] = v;
        e8_enumerate(y, pos + 1, norm_left - v * v, parity, sum + v, out);
    }
}

} // namespace detail

/// All distinct directions of non-zero E8 points (E8 = D8 ∪ (D8 + ½)) with squared norm ≤
/// `max_norm_sq`, as unit rows `[N x 8]`. Order: by squared norm of the primitive (gcd-reduced)
/// doubled point, then lexicographic — deterministic. `max_norm_sq = 2` gives the 240 roots.
/// \throws invalid_argument unless 2 ≤ max_norm_sq ≤ 32. Complexity: O(points in the ball).
[[nodiscard]] inline matrix_f e8_directions(int max_norm_sq) {
    detail::require(max_norm_sq >= 2 && max_norm_sq <= 32, "e8_directions",
                    "argument 'max_norm_sq' must lie in [2, 32]");
    std::vector<std::array<int, 8>> pts;
    std::array<int, 8> y{};
    for (int parity = 0; parity < 2; ++parity) detail::e8_enumerate(y, 0, 4 * max_norm_sq, parity, 0, pts);
    auto norm2 = [](const std::array<int, 8>& a) {
        int s = 0;
        for (int v : a) s += v * v;
        return s;
    };
    std::sort(pts.begin(), pts.end(), [&](const auto& a, const auto& b) {
        const int na = norm2(a), nb = norm2(b);
        return na != nb ? na < nb : a < b;
    });
    pts.erase(std::unique(pts.begin(), pts.end()), pts.end());
    matrix_f out(static_cast<Eigen::Index>(pts.size()), 8);
    for (std::size_t i = 0; i < pts.size(); ++i) {
        const double inv = 1.0 / std::sqrt(static_cast<double>(norm2(pts[i])));
        for (int j = 0; j < 8; ++j)
            out(static_cast<Eigen::Index>(i), j) = static_cast<float>(pts[i][static_cast<std::size_t>(j)] * inv);
    }
    return out;
}

/// A greedy spherical code.
struct spherical_code {
    matrix_f directions;  ///< (count, d) unit rows, in selection order
    double min_angle = 0; ///< minimum pairwise angle (radians) = the last insertion angle
};

/// Greedy farthest-point selection of `count` rows of `candidates` (unit rows): start at row 0, then
/// repeatedly add the candidate whose largest cosine to the selected set is smallest (ties: lowest
/// index). Insertion angles are non-increasing, so the minimum pairwise angle of the result is the
/// angle at which the last row was added. O(count · N · d).
/// \throws invalid_argument unless 1 ≤ count ≤ N; shape_error for empty candidates.
[[nodiscard]] inline spherical_code greedy_spherical_code(const cref_matrix_f& candidates, Eigen::Index count) {
    constexpr const char* where = "greedy_spherical_code";
    detail::require_nonempty(candidates, where, "candidates");
    detail::require_finite(candidates, where, "candidates");
    const Eigen::Index n = candidates.rows();
    detail::require(count >= 1 && count <= n, where,
                    "argument 'count' (" + std::to_string(count) + ") must lie in [1, " + std::to_string(n) +
                        "] (the number of candidates)");
    const Eigen::Index d = candidates.cols();
    // Row-major double copy: one fused pass per pick updates every candidate's largest cosine to the
    // selected set and finds the next pick (smallest such cosine among the untaken, lowest index).
    std::vector<double> c(static_cast<std::size_t>(n * d));
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index j = 0; j < d; ++j) c[static_cast<std::size_t>(i * d + j)] = candidates(i, j);
    std::vector<double> maxcos(static_cast<std::size_t>(n), -2.0);
    std::vector<char> taken(static_cast<std::size_t>(n), 0);
    spherical_code out;
    out.directions.resize(count, d);
    double last_cos = -1.0, next_cos = 3.0;
    Eigen::Index pick = 0;
    for (Eigen::Index s = 0; s < count; ++s) {
        if (s > 0) last_cos = next_cos;
        taken[static_cast<std::size_t>(pick)] = 1;
        out.directions.row(s) = candidates.row(pick);
        const double* p = &c[static_cast<std::size_t>(pick * d)];
        Eigen::Index next = pick;
        next_cos = 3.0;
        for (Eigen::Index i = 0; i < n; ++i) {
            const double* x = &c[static_cast<std::size_t>(i * d)];
            double dot = 0;
            for (Eigen::Index j = 0; j < d; ++j) dot += x[j] * p[j];
            double& mc = maxcos[static_cast<std::size_t>(i)];
            mc = std::max(mc, dot);
            if (!taken[static_cast<std::size_t>(i)] && mc < next_cos) {
                next_cos = mc;
                next = i;
            }
        }
        pick = next;
    }
    out.min_angle = count > 1 ? std::acos(std::clamp(last_cos, -1.0, 1.0)) : std::numbers::pi;
    return out;
}

/// Lloyd–Max quantizer of the χ distribution with `dof` degrees of freedom (density ∝ r^{dof−1}
/// e^{−r²/2}, the norm of a standard Gaussian dof-vector), on a grid of `grid` points over
/// [0, √dof + 12]: boundaries start at the equal-probability quantiles, then alternate centroid =
/// conditional mean of the cell, boundary = midpoint of neighbouring centroids, `iterations` times.
/// Returns `levels` ascending reconstruction values. dof = 1 is the half-normal (Max 1960 tables).
/// \throws invalid_argument for levels < 1, dof < 1, iterations < 0, grid < 100·levels.
[[nodiscard]] inline vector_f chi_lloyd_max(int levels, int dof, int iterations = 100, int grid = 20000) {
    constexpr const char* where = "chi_lloyd_max";
    detail::require(levels >= 1, where, "argument 'levels' must be >= 1");
    detail::require(dof >= 1, where, "argument 'dof' must be >= 1");
    detail::require(iterations >= 0, where, "argument 'iterations' must be >= 0");
    detail::require(grid >= 100 * levels, where, "argument 'grid' must be >= 100·levels");
    const double rmax = std::sqrt(static_cast<double>(dof)) + 12.0, step = rmax / grid;
    std::vector<double> r(static_cast<std::size_t>(grid)), p(static_cast<std::size_t>(grid));
    double total = 0;
    for (int g = 0; g < grid; ++g) {
        const double x = (g + 0.5) * step; // midpoint rule
        r[static_cast<std::size_t>(g)] = x;
        p[static_cast<std::size_t>(g)] = std::exp((dof - 1) * std::log(x) - 0.5 * x * x);
        total += p[static_cast<std::size_t>(g)];
    }
    // Equal-probability initial boundaries.
    std::vector<double> bnd(static_cast<std::size_t>(levels) + 1);
    bnd.front() = 0;
    bnd.back() = rmax + 1;
    {
        double acc = 0;
        int next = 1;
        for (int g = 0; g < grid && next < levels; ++g) {
            acc += p[static_cast<std::size_t>(g)];
            while (next < levels && acc >= total * next / levels) bnd[static_cast<std::size_t>(next++)] = r[static_cast<std::size_t>(g)] + 0.5 * step;
        }
    }
    std::vector<double> cen(static_cast<std::size_t>(levels));
    auto centroids = [&] {
        std::vector<double> num(static_cast<std::size_t>(levels), 0), den(static_cast<std::size_t>(levels), 0);
        int cell = 0;
        for (int g = 0; g < grid; ++g) {
            while (cell + 1 < levels && r[static_cast<std::size_t>(g)] >= bnd[static_cast<std::size_t>(cell) + 1]) ++cell;
            num[static_cast<std::size_t>(cell)] += r[static_cast<std::size_t>(g)] * p[static_cast<std::size_t>(g)];
            den[static_cast<std::size_t>(cell)] += p[static_cast<std::size_t>(g)];
        }
        for (int k = 0; k < levels; ++k)
            cen[static_cast<std::size_t>(k)] = den[static_cast<std::size_t>(k)] > 0
                                                   ? num[static_cast<std::size_t>(k)] / den[static_cast<std::size_t>(k)]
                                                   : 0.5 * (bnd[static_cast<std::size_t>(k)] + bnd[static_cast<std::size_t>(k) + 1]);
    };
    centroids();
    for (int it = 0; it < iterations; ++it) {
        for (int k = 1; k < levels; ++k)
            bnd[static_cast<std::size_t>(k)] = 0.5 * (cen[static_cast<std::size_t>(k) - 1] + cen[static_cast<std::size_t>(k)]);
        centroids();
    }
    vector_f out(levels);
    for (int k = 0; k < levels; ++k) out(k) = static_cast<float>(cen[static_cast<std::size_t>(k)]);
    return out;
}

/// PCDVQ codebook options.
struct pcdvq_options {
    int direction_bits = 14; ///< b_d: 2^b_d directions (1..16)
    int magnitude_bits = 2;  ///< b_r: 2^b_r magnitudes (1..8)
    int max_norm_sq = 16;    ///< E8 candidate ball (squared norm); must hold ≥ 2^b_d directions
    int lloyd_iterations = 100; ///< χ Lloyd–Max iterations
};

/// Direction and magnitude codebooks.
struct pcdvq_codebook {
    matrix_f directions; ///< (2^b_d, 8) unit rows
    vector_f magnitudes; ///< (2^b_r) ascending χ₈ Lloyd–Max levels
    double min_angle = 0; ///< minimum pairwise angle of the directions (radians)
};

/// Builds the PCDVQ codebooks (DACC): greedy farthest-point E8 directions and χ₈ Lloyd–Max
/// magnitudes. Cost O(2^b_d · N_candidates · 8), e.g. b_d = 14 with max_norm_sq = 16 takes seconds.
/// \throws invalid_argument for bits out of range or too few candidates.
[[nodiscard]] inline pcdvq_codebook make_pcdvq_codebook(const pcdvq_options& opt = {}) {
    constexpr const char* where = "make_pcdvq_codebook";
    detail::require(opt.direction_bits >= 1 && opt.direction_bits <= 16, where, "direction_bits must lie in [1, 16]");
    detail::require(opt.magnitude_bits >= 1 && opt.magnitude_bits <= 8, where, "magnitude_bits must lie in [1, 8]");
    const matrix_f cand = e8_directions(opt.max_norm_sq);
    const Eigen::Index count = Eigen::Index{1} << opt.direction_bits;
    detail::require(count <= cand.rows(), where,
                    "max_norm_sq " + std::to_string(opt.max_norm_sq) + " yields only " + std::to_string(cand.rows()) +
                        " E8 directions, fewer than 2^direction_bits = " + std::to_string(count));
    auto code = greedy_spherical_code(cand, count);
    return {std::move(code.directions), chi_lloyd_max(1 << opt.magnitude_bits, static_cast<int>(pcdvq_dim), opt.lloyd_iterations),
            code.min_angle};
}

/// PCDVQ codes of an `[rows x cols]` matrix (cols a multiple of 8); vector v = row·(cols/8) + c.
struct pcdvq_codes {
    Eigen::Index rows = 0, cols = 0;
    std::vector<std::uint16_t> direction; ///< (rows·cols/8) direction indices
    std::vector<std::uint8_t> magnitude;  ///< (rows·cols/8) magnitude indices
    vector_f row_scale;                   ///< (rows) s_i = ‖w_i‖/√cols
};

/// Encodes `w` with `book` (see the file comment). Zero vectors get direction 0 and the smallest
/// magnitude; zero rows get scale 0. O(rows·cols/8 · 2^b_d · 8) as blocked GEMMs (double).
/// \throws shape_error (empty, cols not a multiple of 8, bad codebook shape), numeric_error (NaN/Inf).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] pcdvq_codes pcdvq_encode(const cref_matrix_f& w, const pcdvq_codebook& book) {
    constexpr const char* where = "pcdvq_encode";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require<shape_error>(w.cols() % pcdvq_dim == 0, where,
                                 "w cols (" + std::to_string(w.cols()) + ") is not a multiple of 8");
    detail::require_nonempty(book.directions, where, "book.directions");
    detail::require_nonempty(book.magnitudes, where, "book.magnitudes");
    detail::require_dim(book.directions.cols(), pcdvq_dim, where, "book.directions cols");
    detail::require(book.directions.rows() <= 65536 && book.magnitudes.size() <= 256, where,
                    "codebook larger than 16 direction bits / 8 magnitude bits");
    const Eigen::Index per = w.cols() / pcdvq_dim, nv = w.rows() * per;
    pcdvq_codes out;
    out.rows = w.rows();
    out.cols = w.cols();
    out.direction.resize(static_cast<std::size_t>(nv));
    out.magnitude.resize(static_cast<std::size_t>(nv));
    out.row_scale.resize(w.rows());
    const Eigen::MatrixXd dirs_t = book.directions.cast<double>().transpose(); // [8 x K]
    constexpr Eigen::Index chunk = 512;
    Eigen::MatrixXd u(chunk, pcdvq_dim), dots;
    std::vector<double> radius(static_cast<std::size_t>(chunk));
    Eigen::Index filled = 0, base = 0;
    auto flush = [&] {
        if (filled == 0) return;
        dots.noalias() = u.topRows(filled) * dirs_t;
        for (Eigen::Index i = 0; i < filled; ++i) {
            Eigen::Index best = 0;
            if (radius[static_cast<std::size_t>(i)] > 0) dots.row(i).maxCoeff(&best);
            out.direction[static_cast<std::size_t>(base + i)] = static_cast<std::uint16_t>(best);
            Eigen::Index mbest = 0;
            double md = std::fabs(radius[static_cast<std::size_t>(i)] - book.magnitudes(0));
            for (Eigen::Index k = 1; k < book.magnitudes.size(); ++k) {
                const double d = std::fabs(radius[static_cast<std::size_t>(i)] - book.magnitudes(k));
                if (d < md) {
                    md = d;
                    mbest = k;
                }
            }
            out.magnitude[static_cast<std::size_t>(base + i)] = static_cast<std::uint8_t>(mbest);
        }
        base += filled;
        filled = 0;
    };
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        const double s = w.row(i).cast<double>().norm() / std::sqrt(static_cast<double>(w.cols()));
        out.row_scale(i) = static_cast<float>(s);
        for (Eigen::Index c = 0; c < per; ++c) {
            Eigen::RowVectorXd v = w.row(i).segment(c * pcdvq_dim, pcdvq_dim).cast<double>();
            if (s > 0) v /= s;
            const double r = v.norm();
            radius[static_cast<std::size_t>(filled)] = r;
            u.row(filled) = r > 0 ? Eigen::RowVectorXd(v / r) : Eigen::RowVectorXd::Zero(pcdvq_dim);
            if (++filled == chunk) flush();
        }
    }
    flush();
    return out;
}

/// Decodes PCDVQ codes to `[rows x cols]`: v̂ = s_i · magnitudes(m) · directions(d).
/// \throws shape_error / invalid_argument if the codes do not fit the codebook.
[[nodiscard]] inline matrix_f pcdvq_decode(const pcdvq_codes& codes, const pcdvq_codebook& book) {
    constexpr const char* where = "pcdvq_decode";
    const Eigen::Index per = codes.cols / pcdvq_dim;
    detail::require<shape_error>(codes.cols % pcdvq_dim == 0 && codes.rows >= 0, where, "codes.cols is not a multiple of 8");
    detail::require_dim(static_cast<Eigen::Index>(codes.direction.size()), codes.rows * per, where, "codes.direction size");
    detail::require_dim(static_cast<Eigen::Index>(codes.magnitude.size()), codes.rows * per, where, "codes.magnitude size");
    detail::require_dim(codes.row_scale.size(), codes.rows, where, "codes.row_scale size");
    detail::require_dim(book.directions.cols(), pcdvq_dim, where, "book.directions cols");
    matrix_f out(codes.rows, codes.cols);
    for (Eigen::Index i = 0; i < codes.rows; ++i)
        for (Eigen::Index c = 0; c < per; ++c) {
            const auto v = static_cast<std::size_t>(i * per + c);
            detail::require(codes.direction[v] < book.directions.rows() && codes.magnitude[v] < book.magnitudes.size(),
                            where, "a code index exceeds the codebook size");
            out.row(i).segment(c * pcdvq_dim, pcdvq_dim) =
                book.directions.row(codes.direction[v]) * (book.magnitudes(codes.magnitude[v]) * codes.row_scale(i));
        }
    return out;
}

LOWBIT_END_NAMESPACE
