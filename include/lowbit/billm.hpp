#pragma once
/// \file billm.hpp
/// BiLLM (Huang et al. 2024, "BiLLM: Pushing the Limit of Post-Training Quantization for LLMs"):
/// binary weights inside GPTQ with a structural salient-column split and residual binarization.
///
/// Per block of B = 128 columns (processing order), on the block's weights W1 as updated by the error
/// feedback of the earlier blocks:
/// 1. Saliency Ω_ij = W1_ij² / U_jj² (U the upper Cholesky factor of the damped H⁻¹, GPTQ's
///    "hessian" metric).
/// 2. Salient columns: the top-k columns by Σ_i Ω_ij, k = 1 … K − 1 (K = min(`salient_candidates`, B)),
///    the k minimising ‖Ω − R₂(Ω; salient) − R₂(Ω; rest)‖² where R_o(V; M) is the order-o masked
///    residual binarization (`binarize_masked`) of V on mask M. No candidate (K ≤ 1): no salient column.
/// 3. Non-salient split ("bell-shaped distribution splitting"): a break point p among `quantile_steps`
///    quantiles 10 %, …, 90 % (linear interpolation) of the block's Ω with the salient entries counted as
///    0; the non-salient entries split into Ω < p and Ω ≥ p, the p minimising the order-1 error of both
///    sides (first minimum). With `billm_options::split` off the non-salient weights stay one group
///    (no group bit per weight; split = +∞).
/// 4. W1 binarized in the three groups: salient order 2 (μ + α₀b₀ + α₁b₁), the two others order 1
///    (μ + αb), each row of each group with its own μ and α.
/// 5. GPTQ error feedback with these fixed values (gptq.hpp's blocked sweep).
///
/// `billm_options::gram_fit` (ARB-X inside BiLLM's groups, as ARB-LLM_X runs it): each row of each group
/// is then re-fitted for the layer-output error e S eᵀ with S = H/2 of the block (undamped), restricted
/// to the row's entries in the group (the errors of the other groups do not enter): order 2 keeps the
/// residual signs and solves (μ, α₀, α₁) by S-weighted least squares; order 1 alternates b = sign(w − μ)
/// with the S-weighted (μ, α) `gram_iters` times. The best (signs, μ, α) seen by e S eᵀ are kept, so a
/// row never ends worse than the paper's fit. Same bits.
///
/// Reconstruction notes (from the authors' released code, which this follows): the searches of steps 2–3
/// binarize Ω itself, not W; the error feedback here is GPTQ's exact sequential update inside the block
/// too (the released code propagates the block's error only to later blocks); sign(0) = +1 (torch's
/// sign gives 0 — an entry exactly at its group mean). BiLLM quotes "1.08 bits": the sign bit plus the
/// second plane of the salient columns (`billm_result::paper_bits`); what is stored — a group bit per
/// non-salient weight, the salient column set, 7 fp16 per row per block — is `stored_bits`, about
/// 2.9 bits per weight at B = 128. The layout has no packed kernel: `weights` are dequantized.
///
/// Compile time: the solver is a function template with a defaulted, unused parameter (as gptq.hpp).

#include <lowbit/asym_ternary.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/affine_codes.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/salient_binary.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Order-o masked residual binarization of the rows of a matrix (BiLLM's "binary residual
/// approximation"): on the entries of `mask` only, plane p binarizes the residual r_p of the previous
/// planes (r_0 = w): μ_p = mean of r_p over the row's masked entries, α_p = mean |r_p − μ_p|,
/// b_p = sign(r_p − μ_p) (sign(0) = +1). A row with no masked entry has μ = α = 0.
struct masked_binary_rows {
    group_mask mask;              ///< (rows, cols) the group
    int order = 1;                ///< sign planes
    vector_f mean;                ///< rows: μ = Σ_p μ_p
    std::vector<vector_f> alpha;  ///< `order` vectors of rows: α_p
    std::vector<matrix_i8> signs; ///< `order` (rows, cols) planes: b_p ∈ {−1, +1} on the mask, 0 outside

    /// μ + Σ_p α_p b_p on the mask, 0 outside. O(order·rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f out = matrix_f::Zero(mask.rows(), mask.cols());
        for (Eigen::Index i = 0; i < mask.rows(); ++i)
            for (Eigen::Index j = 0; j < mask.cols(); ++j) {
                if (!mask(i, j)) continue;
                double v = mean(i);
                for (int p = 0; p < order; ++p) v += static_cast<double>(alpha[static_cast<std::size_t>(p)](i)) * signs[static_cast<std::size_t>(p)](i, j);
                out(i, j) = static_cast<float>(v);
            }
        return out;
    }
};

namespace detail {

/// `binarize_masked` without checks (double accumulation per row).
template <class = void>
masked_binary_rows binarize_masked_impl(const cref_matrix_f& w, const group_mask& mask, int order) {
    const Eigen::Index m = w.rows(), n = w.cols();
    masked_binary_rows r;
    r.mask = mask;
    r.order = order;
    r.mean = vector_f::Zero(m);
    r.alpha.assign(static_cast<std::size_t>(order), vector_f::Zero(m));
    r.signs.assign(static_cast<std::size_t>(order), matrix_i8::Zero(m, n));
    std::vector<double> res(static_cast<std::size_t>(n));
    for (Eigen::Index i = 0; i < m; ++i) {
        Eigen::Index cnt = 0;
        for (Eigen::Index j = 0; j < n; ++j) {
            res[static_cast<std::size_t>(j)] = w(i, j);
            cnt += mask(i, j) ? 1 : 0;
        }
        if (cnt == 0) continue;
        double mu_total = 0.0;
        for (int p = 0; p < order; ++p) {
            double mu = 0.0;
            for (Eigen::Index j = 0; j < n; ++j)
                if (mask(i, j)) mu += res[static_cast<std::size_t>(j)];
            mu /= static_cast<double>(cnt);
            double a = 0.0;
            for (Eigen::Index j = 0; j < n; ++j)
                if (mask(i, j)) a += std::abs(res[static_cast<std::size_t>(j)] - mu);
            a /= static_cast<double>(cnt);
            auto& b = r.signs[static_cast<std::size_t>(p)];
            for (Eigen::Index j = 0; j < n; ++j) {
                if (!mask(i, j)) continue;
                double& x = res[static_cast<std::size_t>(j)];
                b(i, j) = x - mu >= 0.0 ? std::int8_t{1} : std::int8_t{-1};
                x -= mu + a * b(i, j);
            }
            mu_total += mu;
            r.alpha[static_cast<std::size_t>(p)](i) = static_cast<float>(a);
        }
        r.mean(i) = static_cast<float>(mu_total);
    }
    return r;
}

/// `billm_options::gram_fit` for one group fit `f` of the block `w` with S `[cols x cols]` (file comment).
/// O(rows·cols²·(order + 1)·(1 + iters)).
template <class = void>
void billm_output_refit(const matrix_f& w, masked_binary_rows& f, const matrix_d& s, int iters) {
    const Eigen::Index n = w.cols();
    std::vector<std::int8_t> cur(static_cast<std::size_t>(n));
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        const bool* mk = f.mask.row(i).data();
        if (std::none_of(mk, mk + n, [](bool b) { return b; })) continue;
        affine_codes_row row{w.row(i).data(), mk, {}, n};
        for (const auto& plane : f.signs) row.planes.push_back(plane.row(i).data());
        vector_d best(f.order + 1);
        best(0) = f.mean(i);
        for (int q = 0; q < f.order; ++q) best(q + 1) = f.alpha[static_cast<std::size_t>(q)](i);
        double best_obj = affine_codes_objective(row, &s, best);
        vector_d x = affine_codes_solve(row, &s);
        if (const double o = affine_codes_objective(row, &s, x); o < best_obj) {
            best_obj = o;
            best = x;
        }
        if (f.order == 1) { // ARB-X: signs around the latest μ, S-weighted (μ, α), the best kept
            affine_codes_row alt{w.row(i).data(), mk, {cur.data()}, n};
            for (int it = 0; it < iters; ++it) {
                for (Eigen::Index j = 0; j < n; ++j)
                    cur[static_cast<std::size_t>(j)] = !mk[j] ? std::int8_t{0} : w(i, j) - x(0) >= 0.0 ? std::int8_t{1} : std::int8_t{-1};
                x = affine_codes_solve(alt, &s);
                if (const double o = affine_codes_objective(alt, &s, x); o < best_obj) {
                    best_obj = o;
                    best = x;
                    std::copy(cur.begin(), cur.end(), f.signs[0].row(i).data());
                }
            }
        }
        f.mean(i) = static_cast<float>(best(0));
        for (int q = 0; q < f.order; ++q) f.alpha[static_cast<std::size_t>(q)](i) = static_cast<float>(best(q + 1));
    }
}

/// Order-o binarization error of `v` on `mask`.
template <class = void>
double masked_binary_sse(const matrix_f& v, const group_mask& mask, int order) {
    return masked_sse(v, binarize_masked_impl(v, mask, order).dequantize(), mask);
}

/// The three groups of one block (steps 2–3 of the file comment).
struct billm_partition_result {
    group_mask salient, low, high;     // salient columns; Ω < split; Ω ≥ split
    std::vector<Eigen::Index> columns; // salient columns, best score first
    double split = 0.0;
};

template <class = void>
billm_partition_result billm_partition(const matrix_f& omega, Eigen::Index candidates, int steps, bool split_rest) {
    const Eigen::Index m = omega.rows(), bw = omega.cols();
    billm_partition_result r;
    std::vector<Eigen::Index> cols(static_cast<std::size_t>(bw));
    std::iota(cols.begin(), cols.end(), Eigen::Index{0});
    const Eigen::VectorXd score = omega.cast<double>().cwiseAbs().colwise().sum().transpose();
    std::stable_sort(cols.begin(), cols.end(), [&](Eigen::Index a, Eigen::Index b) { return score(a) > score(b); });
    const Eigen::Index kmax = std::min(candidates, bw) - 1;
    // Whole columns: the fits of a column subset equal those of the same entries as a mask.
    matrix_f sorted_cols(m, bw);
    for (Eigen::Index c = 0; c < bw; ++c) sorted_cols.col(c) = omega.col(cols[static_cast<std::size_t>(c)]);
    Eigen::Index best_k = 0;
    double best = std::numeric_limits<double>::infinity();
    for (Eigen::Index k = 1; k <= kmax; ++k) {
        const matrix_f top = sorted_cols.leftCols(k), rest = sorted_cols.rightCols(bw - k);
        const double e = masked_binary_sse(top, group_mask::Constant(m, k, true), 2) +
                         masked_binary_sse(rest, group_mask::Constant(m, bw - k, true), 2);
        if (e < best) {
            best = e;
            best_k = k;
        }
    }
    r.columns.assign(cols.begin(), cols.begin() + best_k);
    r.salient = group_mask::Constant(m, bw, false);
    for (Eigen::Index c : r.columns) r.salient.col(c).setConstant(true);
    // Break point among the quantiles of Ω with salient entries as 0 (all m·bw values).
    std::vector<double> vals(static_cast<std::size_t>(m * bw));
    for (Eigen::Index i = 0; i < m; ++i)
        for (Eigen::Index j = 0; j < bw; ++j)
            vals[static_cast<std::size_t>(i * bw + j)] = r.salient(i, j) ? 0.0 : std::abs(static_cast<double>(omega(i, j)));
    std::sort(vals.begin(), vals.end());
    const auto quantile = [&](double q) { return linear_quantile(vals, q); };
    const group_mask rest = !r.salient.array();
    if (!split_rest) {
        r.low = rest;
        r.high = group_mask::Constant(m, bw, false);
        r.split = std::numeric_limits<double>::infinity();
        return r;
    }
    const auto split = [&](double p, group_mask& lo, group_mask& hi) {
        lo = rest.array() && (omega.array().abs().cast<double>() < p);
        hi = rest.array() && !(omega.array().abs().cast<double>() < p);
    };
    best = std::numeric_limits<double>::infinity();
    r.split = quantile(0.5);
    group_mask lo, hi;
    for (int s = 0; s < steps; ++s) {
        const double p = quantile(steps == 1 ? 0.5 : 0.1 + 0.8 * static_cast<double>(s) / static_cast<double>(steps - 1));
        split(p, lo, hi);
        const double e = masked_binary_sse(omega, lo, 1) + masked_binary_sse(omega, hi, 1);
        if (e < best) {
            best = e;
            r.split = p;
        }
    }
    split(r.split, r.low, r.high);
    return r;
}

} // namespace detail

/// Order-`order` masked residual binarization of every row of `w` `[rows x cols]` on `mask` (same
/// shape); see `masked_binary_rows`. The BiLLM building block, usable alone.
/// \throws shape_error (empty `w`, mask of another shape), numeric_error (NaN/Inf), invalid_argument
///         (order < 1). O(order·rows·cols).
template <class = void>
[[nodiscard]] masked_binary_rows binarize_masked(const cref_matrix_f& w, const Eigen::Ref<const group_mask>& mask,
                                                 int order) {
    constexpr const char* where = "binarize_masked";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require_dim(mask.rows(), w.rows(), where, "rows of 'mask'");
    detail::require_dim(mask.cols(), w.cols(), where, "columns of 'mask'");
    detail::require(order >= 1, where, "order must be >= 1");
    return detail::binarize_masked_impl(w, group_mask(mask), order);
}

/// BiLLM settings (the authors' defaults).
struct billm_options {
    gptq_options gptq{128, 0.01, 5, false, false, false, false}; ///< block 128, damp 0.01, no act order
    Eigen::Index salient_candidates = 50; ///< top-scored columns considered (the released code's up_lim); k ≤ candidates − 1
    int quantile_steps = 81;              ///< break points at the 10 %, 11 %, …, 90 % quantiles (≥ 1)
    bool keep_codes = false;              ///< return the three fits of every block
    bool gram_fit = false;                ///< re-fit every group's rows for e S eᵀ (ARB-X, file comment)
    int gram_iters = 15;                  ///< ARB-X alternations of the order-1 groups with `gram_fit` (≥ 0)
    bool split = true;                    ///< split the non-salient weights in two groups (step 3); false: one group

    /// Throws `invalid_argument` naming the bad field.
    void validate(const char* where) const {
        gptq.validate(where);
        detail::require(salient_candidates >= 1, where, "salient_candidates must be >= 1");
        detail::require(quantile_steps >= 1, where, "quantile_steps must be >= 1");
        detail::require(gram_iters >= 0, where, "gram_iters must be >= 0");
    }
};

/// What BiLLM chose for one block of columns (processing coordinates).
struct billm_block {
    Eigen::Index begin = 0;               ///< first processed column
    Eigen::Index width = 0;               ///< columns
    std::vector<Eigen::Index> salient;    ///< salient columns (block-relative), best score first
    double split = 0.0;                   ///< break point on Ω between the two non-salient groups (+∞: no split)
    /// With `keep_codes`: {salient (order 2), Ω < split (order 1), Ω ≥ split (order 1; empty without
    /// `billm_options::split`)}, their sum is
    /// the block of `billm_result::weights` (processing order).
    std::vector<masked_binary_rows> fits;
};

/// Result of `billm_quantize`.
struct billm_result {
    matrix_f weights;                 ///< (m, n) dequantized weights, original column order
    std::vector<billm_block> blocks;  ///< per block choices
    std::vector<Eigen::Index> order;  ///< processed column p is original column order[p]
    double loss = 0.0;                ///< Σ_j ‖w_j − q_j‖²/U_jj² = tr(Δ H_damped Δᵀ)
    double damp = 0.0;                ///< λ used
    int damp_retries = 0;             ///< failed factorisations before success
    bool split = true;                ///< the non-salient weights were split in two groups (`billm_options::split`)

    /// Bits per weight of what must be stored to rebuild `weights`: per block of width w with k salient
    /// columns and m rows, the column set min(w, k·⌈log₂ w⌉), one sign per weight, a second sign per
    /// salient weight, one group bit per non-salient weight (with `split`), and per row fp16 μ, α₀, α₁ of
    /// the salient group (if k > 0) and μ, α of each other group (two with `split`, else one). O(blocks).
    [[nodiscard]] double stored_bits() const {
        const double m = static_cast<double>(weights.rows());
        double bits = 0.0;
        for (const auto& b : blocks) {
            const double k = static_cast<double>(b.salient.size()), w = static_cast<double>(b.width);
            bits += std::min(w, k * std::ceil(std::log2(std::max(w, 2.0)))) + m * w + m * k +
                    (split ? m * (w - k) : 0.0) + m * 16.0 * ((k > 0 ? 3.0 : 0.0) + (split ? 4.0 : 2.0));
        }
        return bits / (m * static_cast<double>(weights.cols()));
    }
    /// BiLLM's own count: one sign per weight plus the salient second plane (no group bits, column
    /// sets or scales). O(blocks).
    [[nodiscard]] double paper_bits() const {
        double k = 0.0;
        for (const auto& b : blocks) k += static_cast<double>(b.salient.size());
        return 1.0 + k / static_cast<double>(weights.cols());
    }
};

/// BiLLM of `w` `[m x n]` with the calibration Hessian `h` `[n x n]` (`gptq_hessian`): steps 1–5 of
/// the file comment.
/// \throws as `gptq_quantize` (shapes, NaN/Inf, a Hessian that stays singular), plus invalid_argument
///         for bad options.
/// Complexity per block of B columns: O(K·m·B) for the salient search, O(quantile_steps·m·B) for the
/// split; plus GPTQ's O(n³ + m·n²).
template <class = void>
[[nodiscard]] billm_result billm_quantize(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h,
                                          const billm_options& opt = {}) {
    constexpr const char* where = "billm_quantize";
    opt.validate(where);
    billm_result r;
    r.split = opt.split;
    detail::fixed_block_gptq(r, w, h, opt.gptq, where,
                             [&](const detail::gptq_problem& p, const matrix_f& wf, const matrix_f& omega, Eigen::Index s) {
                                 auto part = detail::billm_partition(omega, opt.salient_candidates, opt.quantile_steps, opt.split);
                                 billm_block info;
                                 info.begin = s;
                                 info.width = wf.cols();
                                 info.salient = std::move(part.columns);
                                 info.split = part.split;
                                 matrix_f qblock = matrix_f::Zero(wf.rows(), wf.cols());
                                 matrix_d sblk;
                                 if (opt.gram_fit) sblk = p.h.block(s, s, wf.cols(), wf.cols()) / 2.0;
                                 const std::pair<const group_mask*, int> groups[] = {
                                     {&part.salient, 2}, {&part.low, 1}, {&part.high, 1}};
                                 for (const auto& [mask, order] : groups) {
                                     auto fit = detail::binarize_masked_impl(wf, *mask, order);
                                     if (opt.gram_fit) detail::billm_output_refit(wf, fit, sblk, opt.gram_iters);
                                     qblock += fit.dequantize();
                                     if (opt.keep_codes) info.fits.push_back(std::move(fit));
                                 }
                                 r.blocks.push_back(std::move(info));
                                 return qblock;
                             });
    return r;
}

/// The packed layout (salient_binary.hpp) of a BiLLM result computed with `keep_codes`: per block its
/// salient columns first, then the others in processing order; p1 = the first sign, p2 = the salient
/// second sign or the non-salient group (1: Ω ≥ split; without `split` p2 is stored only where
/// chunks hold salient columns); per row and block the 8 table entries
/// μ_lo ∓ α_lo, μ_hi ∓ α_hi, μ_s ∓ α₀ ∓ α₁ (in double, rounded once to fp16). Its `dequantize()`
/// equals `r.weights` up to that rounding: |Δw| ≤ 2⁻¹¹·|w| + 2⁻²⁴ (fp16 relative half-ulp and
/// subnormal spacing), which the tests check.
/// \throws invalid_argument (no kept codes, a block wider than 65534 columns), as the matrix constructor.
/// O(rows·cols).
template <class = void>
[[nodiscard]] salient_binary_matrix pack_billm(const billm_result& r) {
    constexpr const char* where = "pack_billm";
    const Eigen::Index m = r.weights.rows(), n = r.weights.cols();
    for (const auto& b : r.blocks)
        detail::require(b.fits.size() == 3, where, "the result keeps no codes (billm_options::keep_codes)");
    auto [blocks, source, packed_col] = detail::salient_packing_of(r.blocks, r.order);
    const Eigen::Index chunks = static_cast<Eigen::Index>(packed_col.size()) / 16, nb = static_cast<Eigen::Index>(blocks.size());
    std::vector<std::uint32_t> codes(static_cast<std::size_t>(m * chunks), 0u);
    vector_f table(m * nb * salient_binary_matrix::table_entries);
    Eigen::Index p0 = 0;
    for (Eigen::Index bi = 0; bi < nb; ++bi) {
        const auto& b = r.blocks[static_cast<std::size_t>(bi)];
        const auto& sal = b.fits[0];
        const auto& lo = b.fits[1];
        const auto& hi = b.fits[2];
        const Eigen::Index padded = (b.width + 15) / 16 * 16;
        for (Eigen::Index i = 0; i < m; ++i) {
            for (Eigen::Index t = 0; t < b.width; ++t) {
                const Eigen::Index j = packed_col[static_cast<std::size_t>(p0 + t)];
                bool p1 = false, p2 = false;
                if (t < static_cast<Eigen::Index>(b.salient.size())) {
                    p1 = sal.signs[0](i, j) > 0;
                    p2 = sal.signs[1](i, j) > 0;
                } else if (lo.mask(i, j)) {
                    p1 = lo.signs[0](i, j) > 0;
                } else {
                    detail::require(hi.mask(i, j), where, "a weight lies in no group");
                    p1 = hi.signs[0](i, j) > 0;
                    p2 = true;
                }
                const Eigen::Index p = p0 + t;
                auto& word = codes[static_cast<std::size_t>(i * chunks + p / 16)];
                word |= (p1 ? 1u : 0u) << (p % 16);
                word |= (p2 ? 1u : 0u) << (16 + p % 16);
            }
            const double ml = lo.mean(i), al = lo.alpha[0](i), mh = hi.mean(i), ah = hi.alpha[0](i);
            const double ms = sal.mean(i), a0 = sal.alpha[0](i), a1 = sal.alpha[1](i);
            const double e[8] = {ml - al, ml + al, mh - ah, mh + ah, ms - a0 - a1, ms + a0 - a1, ms - a0 + a1, ms + a0 + a1};
            for (int k = 0; k < 8; ++k)
                table((i * nb + bi) * 8 + k) = static_cast<float>(Eigen::half(static_cast<float>(e[k])));
        }
        p0 += padded;
    }
    // per row: the p1 half of every chunk, then the p2 half of the chunks that keep one (salient_binary.hpp)
    std::vector<char> keeps_p2;
    for (const auto& b : blocks)
        for (Eigen::Index c = 0; c < (b.width + 15) / 16; ++c) keeps_p2.push_back(r.split || c * 16 < b.salient);
    std::vector<std::uint16_t> words;
    for (Eigen::Index i = 0; i < m; ++i) {
        for (Eigen::Index c = 0; c < chunks; ++c) words.push_back(static_cast<std::uint16_t>(codes[static_cast<std::size_t>(i * chunks + c)]));
        for (Eigen::Index c = 0; c < chunks; ++c)
            if (keeps_p2[static_cast<std::size_t>(c)]) words.push_back(static_cast<std::uint16_t>(codes[static_cast<std::size_t>(i * chunks + c)] >> 16));
    }
    return salient_binary_matrix(m, n, std::move(blocks), std::move(source), r.split, std::move(words), table);
}

LOWBIT_END_NAMESPACE
