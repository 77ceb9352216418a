#pragma once
/// \file pwl_fit.hpp
/// Globally optimal cutpoints for piecewise-linear interpolation by dynamic programming (NLI).
///
/// RECONSTRUCTION: the NLI paper (Yu et al., ICLR'26, arXiv 2602.02988) states only that cutpoint
/// selection is solved by dynamic programming to a global optimum in O(M N^2); the recurrence below is
/// lowbit's reconstruction (docs/nli.md). Given f, a candidate grid p_0 < ... < p_{N-1}, an evaluation set
/// X within [p_0, p_{N-1}] and M segments, choose cutpoints c_0 = p_0 < c_1 < ... < c_M = p_{N-1} from the
/// grid minimising
///   sum aggregation:  sum over segments of e(i, j) = sum_{x in X, p_i <= x < p_j} rho(f(x), chord_ij(x))
///   max aggregation:  max over segments of e(i, j) = max_{x in X, p_i <= x < p_j} rho(...)   (minimax)
/// (the last segment also owns x = p_{N-1}), chord_ij the line through (p_i, f(p_i)) and (p_j, f(p_j)).
/// Recurrence: D[0][0] = 0, D[0][j>0] = inf, D[t][j] = min_{i<j} D[t-1][i] (+ or max) e(i, j);
/// answer D[M][N-1] (or min_{t<=M} D[t][N-1] with `at_most`), cutpoints by backtracking argmins.
/// Cost: DP O(M N^2) time, O(M N) memory; segment costs O(1) each from prefix sums for squared error with
/// sum aggregation, otherwise precomputed in O(N^2 |X| / 6) time and O(N^2 / 2) memory (N <= 4096).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/pwl.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Pointwise error metric rho = (f - g)^2. With `sum_of_errors`, segment costs come from prefix sums in O(1).
struct squared_error {
    /// rho(f, g).
    double operator()(double f, double g) const noexcept { return (f - g) * (f - g); }
};

/// Pointwise error metric rho = |f - g|.
struct absolute_error {
    /// rho(f, g).
    double operator()(double f, double g) const noexcept { return std::abs(f - g); }
};

/// Pointwise error metric rho = |f - g| / max(|f|, floor) (the NLI metric; with `sum_of_errors` the
/// objective divided by |X| is the mean relative error). `floor` > 0 keeps zeros of f finite.
struct relative_error {
    double floor = 1e-30; ///< lower bound of the denominator
    /// rho(f, g).
    double operator()(double f, double g) const noexcept { return std::abs(f - g) / std::max(std::abs(f), floor); }
};

/// Aggregation policy: the objective is the sum of pointwise errors over X.
struct sum_of_errors {};
/// Aggregation policy: the objective is the maximum pointwise error over X (minimax).
struct max_of_errors {};

/// Options of `fit_pwl`.
struct pwl_fit_options {
    std::size_t segments = 16; ///< M >= 1
    bool at_most = false;      ///< allow fewer than M segments if that lowers the objective
};

/// Result of `fit_pwl`: the optimal cutpoints and objective.
struct pwl_fit_result {
    std::vector<std::size_t> cut_index; ///< indices into the grid, size segments + 1, first 0, last N-1
    std::vector<double> cutpoints;      ///< grid values at cut_index
    std::vector<double> values;         ///< f at the cutpoints
    double objective = 0;               ///< optimal total (sum) or maximum (max) error
    double mean = 0;                    ///< objective / |X| (sum aggregation; equals objective for max)
    std::size_t grid_cells = 0;         ///< N-1 if the grid is uniform (then tables get a cell index), else 0

    /// Number of segments of the solution.
    std::size_t segments() const noexcept { return cut_index.empty() ? 0 : cut_index.size() - 1; }
};

/// N >= 2 uniformly spaced points lo, ..., hi (computed in double as lo + k (hi - lo) / (N - 1)).
/// Throws `invalid_argument` for an empty or inverted domain (lo >= hi), non-finite ends or N < 2.
inline std::vector<double> uniform_grid(double lo, double hi, std::size_t n) {
    detail::require(std::isfinite(lo) && std::isfinite(hi), "uniform_grid", "domain ends must be finite");
    detail::require(lo < hi, "uniform_grid", "domain [lo, hi] is empty or inverted (need lo < hi)");
    detail::require(n >= 2, "uniform_grid", "argument 'n' must be >= 2");
    std::vector<double> g(n);
    for (std::size_t k = 0; k < n; ++k) g[k] = lo + (hi - lo) * static_cast<double>(k) / static_cast<double>(n - 1);
    g.back() = hi;
    return g;
}

namespace detail {

/// IEEE binary16 bits to double (subnormals included; Inf/NaN map to Inf/NaN).
inline double fp16_to_double(std::uint16_t h) noexcept {
    const int sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v;
    if (exp == 0) v = std::ldexp(static_cast<double>(man), -24);
    else if (exp == 31) v = man ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
    else v = std::ldexp(static_cast<double>(man | 0x400), exp - 25);
    return sign ? -v : v;
}

/// bfloat16 bits to double.
inline double bf16_to_double(std::uint16_t b) noexcept {
    const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

template <class Decode>
std::vector<double> representable_grid(double lo, double hi, Decode decode, const char* where) {
    detail::require(std::isfinite(lo) && std::isfinite(hi), where, "domain ends must be finite");
    detail::require(lo < hi, where, "domain [lo, hi] is empty or inverted (need lo < hi)");
    std::vector<double> g;
    for (std::uint32_t c = 0; c < 65536u; ++c) {
        const double v = decode(static_cast<std::uint16_t>(c));
        if (std::isfinite(v) && v >= lo && v <= hi) g.push_back(v);
    }
    std::sort(g.begin(), g.end());
    g.erase(std::unique(g.begin(), g.end()), g.end()); // +0 and -0
    return g;
}

} // namespace detail

/// All IEEE fp16 (binary16) values in [lo, hi], sorted, -0 merged with +0. Bad domain: `invalid_argument`.
inline std::vector<double> fp16_grid(double lo, double hi) {
    return detail::representable_grid(lo, hi, detail::fp16_to_double, "fp16_grid");
}

/// All bfloat16 values in [lo, hi], sorted, -0 merged with +0. Bad domain: `invalid_argument`.
inline std::vector<double> bf16_grid(double lo, double hi) {
    return detail::representable_grid(lo, hi, detail::bf16_to_double, "bf16_grid");
}

/// The M+1 grid indices of uniform cutpoints: round(k (N - 1) / M), k = 0..M (the baseline NLI is compared
/// with). Requires M >= 1 and N >= M + 1 (`invalid_argument`).
inline std::vector<std::size_t> uniform_cut_indices(std::size_t n, std::size_t m) {
    detail::require(m >= 1, "uniform_cut_indices", "argument 'm' (segments) must be >= 1");
    detail::require(n >= m + 1, "uniform_cut_indices", "need N >= M + 1 grid points");
    std::vector<std::size_t> idx(m + 1);
    for (std::size_t k = 0; k <= m; ++k)
        idx[k] = static_cast<std::size_t>(std::llround(static_cast<double>(k) * static_cast<double>(n - 1) / static_cast<double>(m)));
    return idx;
}

namespace detail {

inline void check_grid(std::span<const double> grid, const char* where) {
    for (std::size_t k = 0; k < grid.size(); ++k) {
        require<numeric_error>(std::isfinite(grid[k]), where, "argument 'grid' contains NaN or Inf");
        if (k > 0) require(grid[k] > grid[k - 1], where, "argument 'grid' must be strictly increasing");
    }
}

/// Sorted evaluation set with f values and, per grid point, the first eval index >= p_i.
struct pwl_eval_set {
    std::vector<double> x, fx;
    std::vector<std::size_t> first; // size N
};

template <class F>
pwl_eval_set make_eval_set(F& f, std::span<const double> grid, std::span<const double> eval, const char* where) {
    require<shape_error>(!eval.empty(), where, "argument 'eval' (evaluation set) is empty");
    pwl_eval_set s;
    s.x.assign(eval.begin(), eval.end());
    for (double v : s.x) {
        require<numeric_error>(std::isfinite(v), where, "argument 'eval' contains NaN or Inf");
        require(v >= grid.front() && v <= grid.back(), where,
                "argument 'eval' has a point outside [grid.front(), grid.back()]");
    }
    std::sort(s.x.begin(), s.x.end());
    s.fx.resize(s.x.size());
    for (std::size_t k = 0; k < s.x.size(); ++k) {
        s.fx[k] = static_cast<double>(f(s.x[k]));
        require<numeric_error>(std::isfinite(s.fx[k]), where, "f is NaN or Inf on the evaluation set");
    }
    s.first.resize(grid.size());
    for (std::size_t i = 0; i < grid.size(); ++i)
        s.first[i] = static_cast<std::size_t>(std::lower_bound(s.x.begin(), s.x.end(), grid[i]) - s.x.begin());
    return s;
}

/// Direct segment cost: aggregate of rho over the eval points of [p_i, p_j) (closed at the grid end).
template <class Metric, class Agg>
double segment_cost_direct(const pwl_eval_set& s, std::span<const double> grid, std::span<const double> fg,
                           std::size_t i, std::size_t j, const Metric& rho) {
    const std::size_t b = s.first[i], e = (j + 1 == grid.size()) ? s.x.size() : s.first[j];
    const double slope = (fg[j] - fg[i]) / (grid[j] - grid[i]);
    double acc = 0;
    for (std::size_t k = b; k < e; ++k) {
        const double r = rho(s.fx[k], fg[i] + slope * (s.x[k] - grid[i]));
        if constexpr (std::is_same_v<Agg, max_of_errors>) acc = std::max(acc, r);
        else acc += r;
    }
    return acc;
}

} // namespace detail

/// Aggregated error of the interpolant with the given cutpoint indices (strictly increasing, first 0,
/// last N-1) — the DP objective evaluated directly, e.g. for uniform cutpoints. O(|X|).
template <class F, class Metric = relative_error, class Agg = sum_of_errors>
double pwl_objective(F&& f, std::span<const double> grid, std::span<const double> eval,
                     std::span<const std::size_t> cut_index, Metric rho = {}, Agg = {}) {
    constexpr const char* where = "pwl_objective";
    detail::check_grid(grid, where);
    detail::require(cut_index.size() >= 2 && cut_index.front() == 0 && cut_index.back() + 1 == grid.size(), where,
                    "argument 'cut_index' must start at 0 and end at N-1");
    const auto s = detail::make_eval_set(f, grid, eval, where);
    std::vector<double> fg(grid.size());
    for (std::size_t k = 0; k < grid.size(); ++k) fg[k] = static_cast<double>(f(grid[k]));
    double total = 0;
    for (std::size_t k = 0; k + 1 < cut_index.size(); ++k) {
        detail::require(cut_index[k + 1] > cut_index[k], where, "argument 'cut_index' must be strictly increasing");
        const double c = detail::segment_cost_direct<Metric, Agg>(s, grid, fg, cut_index[k], cut_index[k + 1], rho);
        if constexpr (std::is_same_v<Agg, max_of_errors>) total = std::max(total, c);
        else total += c;
    }
    return total;
}

/// Optimal cutpoints by dynamic programming (see the file comment; RECONSTRUCTION of NLI's DP).
///
/// - `f`: callable double -> double (or float), finite on grid and eval (`numeric_error`).
/// - `grid`: N candidate cutpoints, strictly increasing, finite; N >= M + 1 (`invalid_argument`), N <= 4096
///   unless the cost is squared error with sum aggregation (prefix sums, no N^2 table).
/// - `eval`: non-empty evaluation set inside [grid.front(), grid.back()] (`shape_error` / `invalid_argument`).
/// - `opt.segments` = M >= 1; `opt.at_most` returns the best solution with <= M segments.
/// Ties are broken towards the smallest predecessor index (deterministic). The result is never worse than
/// any other choice of cutpoints from the grid, in particular `uniform_cut_indices(N, M)`.
template <class F, class Metric = relative_error, class Agg = sum_of_errors>
pwl_fit_result fit_pwl(F&& f, std::span<const double> grid, std::span<const double> eval, pwl_fit_options opt,
                       Metric rho = {}, Agg = {}) {
    constexpr const char* where = "fit_pwl";
    constexpr bool is_max = std::is_same_v<Agg, max_of_errors>;
    static_assert(is_max || std::is_same_v<Agg, sum_of_errors>, "lowbit: fit_pwl: Agg must be sum_of_errors or max_of_errors");
    constexpr bool prefix = std::is_same_v<Metric, squared_error> && !is_max;
    const std::size_t m = opt.segments, n = grid.size();
    detail::require(m >= 1, where, "option 'segments' (M) must be >= 1");
    detail::require(n >= m + 1, where, "argument 'grid' needs N >= M + 1 points (N = " + std::to_string(n) +
                                           ", M = " + std::to_string(m) + ")");
    detail::check_grid(grid, where);
    detail::require(prefix || n <= 4096, where, "argument 'grid' has more than 4096 points for a tabulated cost");
    const auto s = detail::make_eval_set(f, grid, eval, where);
    std::vector<double> fg(n);
    for (std::size_t k = 0; k < n; ++k) {
        fg[k] = static_cast<double>(f(grid[k]));
        detail::require<numeric_error>(std::isfinite(fg[k]), where, "f is NaN or Inf on the grid");
    }

    // Segment costs: prefix sums (squared, sum) or a packed upper-triangular table.
    const std::size_t ne = s.x.size();
    const double mid = 0.5 * (grid.front() + grid.back());
    std::vector<double> p1, px, pxx, pf, pxf, pff;
    std::vector<double> table;
    if constexpr (prefix) {
        for (auto* v : {&p1, &px, &pxx, &pf, &pxf, &pff}) v->assign(ne + 1, 0.0);
        for (std::size_t k = 0; k < ne; ++k) {
            const double x = s.x[k] - mid, y = s.fx[k];
            p1[k + 1] = p1[k] + 1;
            px[k + 1] = px[k] + x;
            pxx[k + 1] = pxx[k] + x * x;
            pf[k + 1] = pf[k] + y;
            pxf[k + 1] = pxf[k] + x * y;
            pff[k + 1] = pff[k] + y * y;
        }
    } else {
        table.resize(n * (n - 1) / 2);
        std::size_t at = 0;
        for (std::size_t i = 0; i + 1 < n; ++i)
            for (std::size_t j = i + 1; j < n; ++j) table[at++] = detail::segment_cost_direct<Metric, Agg>(s, grid, fg, i, j, rho);
    }
    const auto row_start = [n](std::size_t i) { return i * (2 * n - i - 1) / 2; };
    const auto cost = [&](std::size_t i, std::size_t j) -> double {
        if constexpr (prefix) {
            const std::size_t b = s.first[i], e = (j + 1 == n) ? ne : s.first[j];
            const double sl = (fg[j] - fg[i]) / (grid[j] - grid[i]);
            const double t = fg[i] - sl * (grid[i] - mid);
            const double c = (pff[e] - pff[b]) - 2 * sl * (pxf[e] - pxf[b]) - 2 * t * (pf[e] - pf[b]) +
                             sl * sl * (pxx[e] - pxx[b]) + 2 * sl * t * (px[e] - px[b]) + t * t * (p1[e] - p1[b]);
            return std::max(c, 0.0);
        } else {
            return table[row_start(i) + (j - i - 1)];
        }
    };

    constexpr double inf = std::numeric_limits<double>::infinity();
    std::vector<double> prev(n, inf), cur(n, inf);
    std::vector<std::uint32_t> arg((m + 1) * n, 0);
    std::vector<double> final_cost(m + 1, inf);
    prev[0] = 0;
    for (std::size_t t = 1; t <= m; ++t) {
        std::fill(cur.begin(), cur.end(), inf);
        for (std::size_t j = t; j < n; ++j) {
            double best = inf;
            std::uint32_t bi = 0;
            // i ranges over positions reachable with t-1 segments and leaving room: t-1 <= i < j.
            for (std::size_t i = t - 1; i < j; ++i) {
                if (prev[i] == inf) continue;
                const double c = cost(i, j);
                const double v = is_max ? std::max(prev[i], c) : prev[i] + c;
                if (v < best) {
                    best = v;
                    bi = static_cast<std::uint32_t>(i);
                }
            }
            cur[j] = best;
            arg[t * n + j] = bi;
        }
        final_cost[t] = cur[n - 1];
        std::swap(prev, cur);
    }
    std::size_t used = m;
    if (opt.at_most) {
        used = 1;
        for (std::size_t t = 2; t <= m; ++t)
            if (final_cost[t] < final_cost[used]) used = t;
    }

    pwl_fit_result r;
    r.cut_index.assign(used + 1, 0);
    std::size_t j = n - 1;
    for (std::size_t t = used; t >= 1; --t) {
        r.cut_index[t] = j;
        j = arg[t * n + j];
    }
    r.cut_index[0] = 0;
    r.objective = final_cost[used];
    r.mean = is_max ? r.objective : r.objective / static_cast<double>(ne);
    for (std::size_t k : r.cut_index) {
        r.cutpoints.push_back(grid[k]);
        r.values.push_back(fg[k]);
    }
    // Uniform grid? Then tables built from this result can use a cell index of N-1 cells.
    const double h = (grid.back() - grid.front()) / static_cast<double>(n - 1);
    bool uniform = true;
    for (std::size_t k = 0; k < n && uniform; ++k)
        uniform = std::abs(grid[k] - (grid.front() + h * static_cast<double>(k))) <= 1e-6 * h;
    r.grid_cells = uniform ? n - 1 : 0;
    return r;
}

/// Float table of a fit: cutpoints and values rounded to float, with the given asymptotes; a cell index
/// of `fit.grid_cells` cells when the grid was uniform (and at most 2^24 cells), else binary search.
inline pwl_table make_pwl_table(const pwl_fit_result& fit, pwl_line left, pwl_line right) {
    detail::require(fit.segments() >= 1, "make_pwl_table", "argument 'fit' has no segments");
    std::vector<float> c(fit.cutpoints.begin(), fit.cutpoints.end()), v(fit.values.begin(), fit.values.end());
    if (fit.grid_cells >= fit.segments() && fit.grid_cells <= (std::size_t(1) << 24)) {
        try {
            return pwl_table(c, v, left, right, fit.grid_cells);
        } catch (const invalid_argument&) {
            // float-rounded cutpoints fell off the cell grid (domain far from 0): use binary search
        }
    }
    return pwl_table(std::move(c), std::move(v), left, right, 0);
}

LOWBIT_END_NAMESPACE
