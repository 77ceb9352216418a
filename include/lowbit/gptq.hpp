#pragma once
/// \file gptq.hpp
/// GPTQ (Frantar et al. 2022; sources.md §1.1): quantize a linear layer's weights column by column
/// with second-order error feedback so that the layer-output error tr(ΔHΔᵀ) stays small.
///
/// Notation: W `[m x n]` (rows = output channels, columns = input channels), calibration inputs X
/// `[tokens x n]`, Hessian H = (2/N) Σ_t a_t x_t x_tᵀ (`gptq_hessian`, a_t = 1 unless per-token weights
/// are given — MoEQuant's affinity-guided Hessian uses the gate score a_t).
///
/// Solver (`gptq_quantize`), all in double precision:
/// 1. Dead columns (H_jj = 0): H_jj ← 1 and W_:j ← 0.
/// 2. Optional activation order: process columns by diag(H) descending (stable), un-permute at the end.
/// 3. Damping H ← H + λ·mean(diag H)·I (λ = `damp`, 0.01 by default). If the Cholesky factorisation
///    fails (a pivot ≤ 1e-12·mean diag) λ is multiplied by 10 (0 → 0.01) up to `max_damp_retries` times;
///    then `numeric_error`.
/// 4. U = upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), from the lower Cholesky factor of the
///    index-reversed H: U = J L̃⁻¹ J (2n³/3 flops instead of inverse + second factorisation).
/// 5. Columns in blocks of B = `block_size` (128): for column j, q_j = Quant(w_j),
///    e_j = (w_j − q_j)/U_jj, the rest of the block −= e_j U_{j, j+1:}; after the block the later columns
///    −= E U_{block, later} (one GEMM).
/// The column quantizer is any `GroupQuantizer` (concepts.hpp); granularity `per_row` fits it once on
/// the whole row, `per_group{G, tail}` every G processed columns (with act order, groups are runs of
/// G *processed* columns, as in the reference GPTQ). Each group is fitted on its weights as updated by
/// all previous columns (blocks are cut so that a group never straddles a block boundary after its
/// start). `zero_pad` tails are fitted padded with zero columns.
/// Static groups (`gptq_options::static_groups`, reference GPTQ's `static_groups=True`): the
/// parameters of every group of G contiguous ORIGINAL columns are fitted before the sweep on the
/// original W (dead columns zeroed), and processed column j is rounded with the parameters of group
/// ⌊order[j]/G⌋ — so with act order the groups stay contiguous in the stored matrix and can be packed
/// per group (`pack_gptq_grouped_int4`). `hessian_weighted_fit` passes diag(H) of the group's columns
/// to the quantizer's `fit(block, importance)` (rtn_quantizer: clip search minimising
/// Σ_j H_jj·(w_ij − q_ij)²).
///
/// Loss: `loss` = Σ_j ‖w_j − q_j‖²/U_jj² (w_j updated) — the GPTQ proxy. It equals exactly
/// tr(Δ H_d Δᵀ), Δ = W − Q, H_d the damped Hessian (since W − Q = E U and H_d = U⁻¹U⁻ᵀ); tested.
///
/// Complexity: O(n³) for the factorisation, O(m n²) for the updates, plus the quantizer's cost.
/// Memory: W, U and H in double (3·8·max(m,n)·n bytes).
///
/// Compile time: TRA-GPTQ (`tra_gptq_quantize`) and the Cholesky preparation shared with `gptq_quantize`
/// are function templates with one defaulted, unused parameter (`template <class = void>`; call them as
/// ordinary functions), so their Eigen decompositions and solvers are compiled only in a translation unit
/// that calls them (docs/compile_time.md).

#include <lowbit/asym_ternary.hpp>
#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/salient_ternary.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Running-mean accumulator of the GPTQ Hessian H = (2/N) Σ_t a_t x_t x_tᵀ over calibration tokens.
///
/// `add(x)` with x `[t x n]` updates H ← H·N/(N+t) + (2/(N+t))·xᵀx (double accumulators), N += t.
/// `add(x, a)` weights token r by a(r) ≥ 0 (N still counts tokens). O(t n²) per call.
class gptq_hessian {
public:
    /// An accumulator for n input channels (n ≥ 1). \throws invalid_argument if n < 1.
    explicit gptq_hessian(Eigen::Index n) : h_(matrix_d::Zero(n >= 1 ? n : 0, n >= 1 ? n : 0)) {
        detail::require(n >= 1, "gptq_hessian", "number of input channels must be >= 1");
    }

    /// Adds the tokens (rows) of `x` `[t x n]`. \throws shape_error (columns ≠ n, empty), numeric_error (NaN/Inf).
    void add(const cref_matrix_f& x) { add_impl(x, nullptr); }

    /// Adds the rows of `x` weighted by `weights` (length t, finite, ≥ 0; e.g. MoE gate affinities).
    /// \throws as above, shape_error (length), invalid_argument (negative weight).
    void add(const cref_matrix_f& x, const cref_vector_f& weights) {
        detail::require_dim(weights.size(), x.rows(), "gptq_hessian::add", "length of 'weights'");
        detail::require_finite(weights, "gptq_hessian::add", "weights");
        detail::require((weights.array() >= 0.0f).all(), "gptq_hessian::add", "'weights' must be >= 0");
        add_impl(x, &weights);
    }

    /// H `[n x n]` (zero before the first `add`).
    [[nodiscard]] const matrix_d& matrix() const noexcept { return h_; }
    /// Number of tokens added so far.
    [[nodiscard]] Eigen::Index tokens() const noexcept { return n_; }

private:
    void add_impl(const cref_matrix_f& x, const cref_vector_f* w) {
        detail::require_nonempty(x, "gptq_hessian::add", "x");
        detail::require_dim(x.cols(), h_.cols(), "gptq_hessian::add", "columns of 'x'");
        detail::require_finite(x, "gptq_hessian::add", "x");
        const Eigen::Index t = x.rows();
        Eigen::MatrixXd xd = x.cast<double>();
        if (w)
            for (Eigen::Index r = 0; r < t; ++r) xd.row(r) *= std::sqrt(static_cast<double>((*w)(r)));
        const double total = static_cast<double>(n_ + t);
        h_ *= static_cast<double>(n_) / total;
        Eigen::MatrixXd g = Eigen::MatrixXd::Zero(xd.cols(), xd.cols());
        g.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose(), 2.0 / total);
        g.triangularView<Eigen::StrictlyUpper>() = g.transpose();
        h_ += g;
        n_ += t;
    }

    matrix_d h_;
    Eigen::Index n_ = 0;
};

/// GPTQ settings (reference defaults).
struct gptq_options {
    Eigen::Index block_size = 128; ///< B ≥ 1: columns per lazy-update block
    double damp = 0.01;            ///< λ ≥ 0, relative to mean(diag H) (TWLA uses 0.1)
    int max_damp_retries = 5;      ///< retries with λ·10 after a failed Cholesky (≥ 0)
    bool act_order = false;        ///< process columns by diag(H) descending
    /// Fit each group with its input Gram matrix (the undamped H/2 of the group's columns, processing
    /// order): E2M-ATQ's stage 2 ("manifold relocation", sources.md §2.3) with the layer's S instead of
    /// S = I. Needs a `GramAwareGroupQuantizer` (else `invalid_argument`). Costs O(rows·g²) per group fit.
    bool gram_fit = false;
    /// `per_group` only: fit every group of G contiguous ORIGINAL columns up front on the original W
    /// (dead columns zeroed), then quantize each processed column with the parameters of its original
    /// group (reference GPTQ's `static_groups=True`). With act order this keeps groups contiguous in
    /// the stored matrix, so a grouped result can be packed per group. Default: dynamic groups.
    bool static_groups = false;
    /// Pass diag(H) of the group's columns (undamped, dead columns 1, zero-padded columns 0) to the
    /// quantizer's fit as importance: `quantizer.fit(block, importance)` must exist (rtn_quantizer:
    /// the clip search then minimises Σ_j H_jj·(w_ij − q_ij)² per row). Default off.
    bool hessian_weighted_fit = false;

    /// Throws `invalid_argument` naming the bad field.
    void validate(const char* where) const {
        detail::require(block_size >= 1, where, "block_size must be >= 1");
        detail::require(std::isfinite(damp) && damp >= 0.0, where, "damp must be finite and >= 0");
        detail::require(max_damp_retries >= 0, where, "max_damp_retries must be >= 0");
    }
};

/// Result of a GPTQ run with a quantizer whose per-group parameters have type `Params`.
template <class Params>
struct gptq_result {
    matrix_f weights;                  ///< (m, n) dequantized weights, original column order
    /// One per group, in processing order; with `gptq_options::static_groups` in ORIGINAL column
    /// order (params[g] belongs to groups[g]).
    std::vector<Params> params;
    /// The groups, in processing coordinates (see `order`); with `static_groups` in ORIGINAL column
    /// coordinates (original column c belongs to group c / G).
    std::vector<column_group> groups;
    bool static_groups = false;        ///< `groups`/`params` are in original coordinates
    std::vector<Eigen::Index> order;   ///< processed column p is original column order[p]
    double loss = 0.0;                 ///< Σ_j ‖w_j − q_j‖²/U_jj² = tr(Δ H_damped Δᵀ)
    double damp = 0.0;                 ///< λ used (after retries)
    int damp_retries = 0;              ///< failed factorisations before success
};

namespace detail {

/// The prepared problem: weights and the Cholesky factor in processing order.
struct gptq_problem {
    Eigen::MatrixXd w;                // (m, n) processing order, column-major
    Eigen::MatrixXd u;                // (n, n) upper factor of H_d⁻¹
    Eigen::MatrixXd h;                // (n, n) undamped H (dead columns fixed), processing order
    std::vector<Eigen::Index> order;  // processing position → original column
    double damp = 0.0;
    int retries = 0;
};

inline void check_gptq_inputs(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h, const gptq_options& opt,
                              const char* where) {
    opt.validate(where);
    require_nonempty(w, where, "w");
    require_finite(w, where, "w");
    require_dim(h.rows(), w.cols(), where, "rows of 'h'");
    require_dim(h.cols(), w.cols(), where, "columns of 'h'");
    require_finite(h, where, "h");
}

/// Steps 1–4 of the file comment.
template <class = void>
gptq_problem gptq_prepare(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h_in, const gptq_options& opt,
                                 const char* where) {
    const Eigen::Index n = w.cols();
    gptq_problem p;
    Eigen::MatrixXd h = h_in;
    Eigen::MatrixXd w0 = w.cast<double>();
    for (Eigen::Index j = 0; j < n; ++j)
        if (h(j, j) == 0.0) {
            h(j, j) = 1.0;
            w0.col(j).setZero();
        }
    p.order.resize(static_cast<std::size_t>(n));
    std::iota(p.order.begin(), p.order.end(), Eigen::Index{0});
    if (opt.act_order)
        std::stable_sort(p.order.begin(), p.order.end(), [&](Eigen::Index a, Eigen::Index b) { return h(a, a) > h(b, b); });
    p.w.resize(w.rows(), n);
    p.h.resize(n, n);
    for (Eigen::Index j = 0; j < n; ++j) {
        const Eigen::Index oj = p.order[static_cast<std::size_t>(j)];
        p.w.col(j) = w0.col(oj);
        for (Eigen::Index i = 0; i < n; ++i) p.h(i, j) = h(p.order[static_cast<std::size_t>(i)], oj);
    }
    const double mean_diag = p.h.diagonal().mean();
    double lambda = opt.damp;
    for (int attempt = 0;; ++attempt) {
        // Reversed, damped H: Hr(i, j) = H(n−1−i, n−1−j) + λ·mean·δ_ij.
        Eigen::MatrixXd hr = p.h.reverse();
        hr.diagonal().array() += lambda * mean_diag;
        Eigen::LLT<Eigen::MatrixXd> llt(hr);
        bool ok = llt.info() == Eigen::Success && mean_diag > 0.0;
        if (ok) {
            const auto l = llt.matrixLLT().diagonal();
            for (Eigen::Index i = 0; i < n && ok; ++i) ok = l(i) * l(i) > 1e-12 * mean_diag && std::isfinite(l(i));
        }
        if (ok) {
            Eigen::MatrixXd linv = Eigen::MatrixXd::Identity(n, n);
            llt.matrixL().solveInPlace(linv);
            p.u = linv.reverse();
            ok = p.u.allFinite();
        }
        if (ok) {
            p.damp = lambda;
            p.retries = attempt;
            return p;
        }
        if (attempt >= opt.max_damp_retries)
            throw numeric_error(std::string("lowbit: ") + where +
                                ": the damped Hessian is not positive definite after " + std::to_string(attempt) +
                                " retries (last damp " + std::to_string(lambda) + ")");
        lambda = lambda == 0.0 ? 0.01 : lambda * 10.0;
    }
}

/// Blocks [s, e) of at most B columns, cut before any group that would start inside a block and
/// end after it (so a group's fit sees all updates from earlier columns).
inline std::vector<std::pair<Eigen::Index, Eigen::Index>> gptq_blocks(Eigen::Index n, Eigen::Index b,
                                                                      const std::vector<column_group>& groups) {
    std::vector<std::pair<Eigen::Index, Eigen::Index>> out;
    std::size_t g = 0;
    for (Eigen::Index s = 0; s < n;) {
        Eigen::Index e = std::min(n, s + b);
        while (g < groups.size() && groups[g].begin < e) {
            if (groups[g].begin > s && groups[g].begin + groups[g].width > e) {
                e = groups[g].begin;
                break;
            }
            ++g;
        }
        out.emplace_back(s, e);
        s = e;
    }
    return out;
}

/// Step 5 with a column policy `col(W1, s, j, out)`: `W1` the current block (columns s…), j the
/// processed column, `out` (m) receives q_j. `begin_block(W1, s, e)` is called at each block start.
/// Returns the loss and writes Q (processing order) into `q`.
template <class BeginBlock, class Column>
inline double gptq_sweep(gptq_problem& p, const std::vector<std::pair<Eigen::Index, Eigen::Index>>& blocks,
                         Eigen::MatrixXd& q, BeginBlock&& begin_block, Column&& column) {
    const Eigen::Index m = p.w.rows(), n = p.w.cols();
    q.resize(m, n);
    double loss = 0.0;
    vector_f colf(m), outf(m);
    for (const auto& [s, e] : blocks) {
        const Eigen::Index bw = e - s;
        Eigen::MatrixXd w1 = p.w.middleCols(s, bw);
        Eigen::MatrixXd err(m, bw);
        begin_block(w1, s, e);
        for (Eigen::Index k = 0; k < bw; ++k) {
            const Eigen::Index j = s + k;
            colf = w1.col(k).cast<float>();
            column(w1, s, j, colf, outf);
            q.col(j) = outf.cast<double>();
            const double d = p.u(j, j);
            err.col(k) = (w1.col(k) - q.col(j)) / d;
            loss += err.col(k).squaredNorm();
            if (k + 1 < bw) w1.rightCols(bw - k - 1).noalias() -= err.col(k) * p.u.row(j).segment(j + 1, bw - k - 1);
        }
        if (e < n) p.w.rightCols(n - e).noalias() -= err * p.u.block(s, e, bw, n - e);
    }
    return loss;
}

/// Q back in original column order, the order and damping into a result (`gptq_result`, TRA-GPTQ's, BiLLM's).
template <class Result>
inline void gptq_finish(Result& r, const gptq_problem& p, const Eigen::MatrixXd& q) {
    r.weights.resize(q.rows(), q.cols());
    for (Eigen::Index j = 0; j < q.cols(); ++j) r.weights.col(p.order[static_cast<std::size_t>(j)]) = q.col(j).cast<float>();
    r.order = p.order;
    r.damp = p.damp;
    r.damp_retries = p.retries;
}

} // namespace detail

/// GPTQ of `w` `[m x n]` with Hessian `h` `[n x n]` (e.g. `gptq_hessian::matrix()`), column quantizer
/// `quantizer` (any `GroupQuantizer`) at granularity `gran` (`per_row` or `per_group{G, tail}`).
///
/// \returns dequantized weights (original column order), the per-group parameters, the loss.
/// \throws shape_error (empty w, h not n×n, G not dividing n under tail_policy::error),
///         numeric_error (NaN/Inf in w or h; H not positive definite after the damping retries),
///         invalid_argument (options, G < 1).
/// Complexity O(n³ + m n²) plus the quantizer's fits and roundings.
template <GroupQuantizer Q, class G = per_row>
[[nodiscard]] gptq_result<typename Q::params> gptq_quantize(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h,
                                                             const Q& quantizer, const G& gran = G{},
                                                             const gptq_options& opt = {}) {
    static_assert(std::is_same_v<G, per_row> || std::is_same_v<G, per_group>,
                  "lowbit: gptq_quantize: granularity must be per_row or per_group");
    constexpr const char* where = "gptq_quantize";
    detail::check_gptq_inputs(w, h, opt, where);
    if constexpr (!GramAwareGroupQuantizer<Q>)
        detail::require(!opt.gram_fit, where, "gram_fit needs a quantizer with fit_with_gram(block, gram) (GramAwareGroupQuantizer)");
    constexpr bool weighted = requires(const Q& qq, const cref_matrix_f& b, const cref_vector_f& imp) {
        { qq.fit(b, imp) } -> std::same_as<typename Q::params>;
    };
    detail::require(!opt.hessian_weighted_fit || weighted, where,
                    "hessian_weighted_fit needs a quantizer with fit(block, importance) (e.g. rtn_quantizer)");
    gptq_result<typename Q::params> r;
    r.groups = column_groups(w.cols(), gran, where);
    r.static_groups = opt.static_groups;
    auto p = detail::gptq_prepare(w, h, opt, where);
    // Fits `blk` (m x padded_width), importance = diag H of processing columns pcols (pad: 0).
    auto fit = [&](const matrix_f& blk, const std::vector<Eigen::Index>& pcols) {
        if constexpr (GramAwareGroupQuantizer<Q>) {
            if (opt.gram_fit) { // S = H/2 of the group's columns (undamped), zero for padding columns
                matrix_d gram = matrix_d::Zero(blk.cols(), blk.cols());
                for (std::size_t a = 0; a < pcols.size(); ++a)
                    for (std::size_t b = 0; b < pcols.size(); ++b)
                        gram(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(b)) = 0.5 * p.h(pcols[a], pcols[b]);
                return quantizer.fit_with_gram(blk, gram);
            }
        }
        if constexpr (weighted) {
            if (opt.hessian_weighted_fit) {
                vector_f imp = vector_f::Zero(blk.cols());
                for (std::size_t c = 0; c < pcols.size(); ++c)
                    imp(static_cast<Eigen::Index>(c)) = static_cast<float>(p.h(pcols[c], pcols[c]));
                return quantizer.fit(blk, imp);
            }
        }
        return quantizer.fit(blk);
    };
    Eigen::MatrixXd q;
    if (opt.static_groups) {
        // Original column c sits at processing position pos[c]; fit each original group on the
        // original (dead-zeroed) W, which p.w still holds before the sweep.
        const Eigen::Index n = w.cols();
        std::vector<Eigen::Index> pos(static_cast<std::size_t>(n)), group_of(static_cast<std::size_t>(n));
        for (Eigen::Index j = 0; j < n; ++j) pos[static_cast<std::size_t>(p.order[static_cast<std::size_t>(j)])] = j;
        for (std::size_t g = 0; g < r.groups.size(); ++g) {
            const column_group& cg = r.groups[g];
            matrix_f blk = matrix_f::Zero(w.rows(), cg.padded_width);
            std::vector<Eigen::Index> pcols;
            for (Eigen::Index c = cg.begin; c < cg.begin + cg.width; ++c) {
                const Eigen::Index pj = pos[static_cast<std::size_t>(c)];
                blk.col(c - cg.begin) = p.w.col(pj).cast<float>();
                pcols.push_back(pj);
                group_of[static_cast<std::size_t>(c)] = static_cast<Eigen::Index>(g);
            }
            r.params.push_back(fit(blk, pcols));
        }
        const auto blocks = detail::gptq_blocks(n, opt.block_size, {});
        r.loss = detail::gptq_sweep(
            p, blocks, q, [](const Eigen::MatrixXd&, Eigen::Index, Eigen::Index) {},
            [&](const Eigen::MatrixXd&, Eigen::Index, Eigen::Index j, const vector_f& col, vector_f& out) {
                const Eigen::Index g = group_of[static_cast<std::size_t>(p.order[static_cast<std::size_t>(j)])];
                quantizer.round_column(r.params[static_cast<std::size_t>(g)], col, out);
            });
        detail::gptq_finish(r, p, q);
        return r;
    }
    const auto blocks = detail::gptq_blocks(w.cols(), opt.block_size, r.groups);
    std::size_t next_group = 0;
    r.loss = detail::gptq_sweep(
        p, blocks, q, [](const Eigen::MatrixXd&, Eigen::Index, Eigen::Index) {},
        [&](const Eigen::MatrixXd& w1, Eigen::Index s, Eigen::Index j, const vector_f& col, vector_f& out) {
            if (next_group < r.groups.size() && r.groups[next_group].begin == j) {
                const column_group& cg = r.groups[next_group];
                // The group lies inside this block (gptq_blocks), or starts it and continues in
                // columns that already received every earlier update (p.w beyond the block).
                matrix_f blk = matrix_f::Zero(w1.rows(), cg.padded_width);
                const Eigen::Index in_block = std::min(cg.width, w1.cols() - (j - s));
                blk.leftCols(in_block) = w1.middleCols(j - s, in_block).cast<float>();
                if (in_block < cg.width)
                    blk.middleCols(in_block, cg.width - in_block) =
                        p.w.middleCols(j + in_block, cg.width - in_block).cast<float>();
                std::vector<Eigen::Index> pcols(static_cast<std::size_t>(cg.width));
                std::iota(pcols.begin(), pcols.end(), j);
                r.params.push_back(fit(blk, pcols));
                ++next_group;
            }
            quantizer.round_column(r.params.back(), col, out);
        });
    detail::gptq_finish(r, p, q);
    return r;
}

// ---------------------------------------------------------------------------------------------
// TRA-GPTQ: grouped salient / non-salient ternary GPTQ around E2M-ATQ (TWLA, sources.md §2.4)
// ---------------------------------------------------------------------------------------------

/// TRA-GPTQ settings (TWLA defaults).
struct tra_gptq_options {
    gptq_options gptq{128, 0.1, 5, false, false, false, false}; ///< block 128, damp 0.1 (TWLA's percdamp)
    Eigen::Index salient_candidates = 64;  ///< top-scored columns considered; k = 1 … candidates − 1
    int quantile_steps = 81;               ///< break points at the 10 %, …, 90 % quantiles (≥ 1)
    e2m_atq atq{};                         ///< final E2M-ATQ fits (order is set per group: 2, 2, 1, 1)
    bool keep_codes = false;               ///< return the four E2M-ATQ fits of every block

    /// Throws `invalid_argument` naming the bad field.
    void validate(const char* where) const {
        gptq.validate(where);
        detail::require(salient_candidates >= 1, where, "salient_candidates must be >= 1");
        detail::require(quantile_steps >= 1, where, "quantile_steps must be >= 1");
        atq.validate(where);
    }
};

/// What TRA-GPTQ chose for one block of columns (processing coordinates).
struct tra_gptq_block {
    Eigen::Index begin = 0;             ///< first processed column
    Eigen::Index width = 0;             ///< columns
    std::vector<Eigen::Index> salient;  ///< salient columns (block-relative), best score first
    double salient_break = 0.0;         ///< break point on Ω inside the salient columns
    double nonsalient_break = 0.0;      ///< break point on Ω inside the other columns
    std::vector<asym_ternary_rows> fits; ///< the 4 fits (salient ≤, salient >, rest ≤, rest >) if kept
};

/// Result of `tra_gptq_quantize`.
struct tra_gptq_result {
    matrix_f weights;                  ///< (m, n) dequantized weights, original column order
    std::vector<tra_gptq_block> blocks; ///< per block choices (and fits with `keep_codes`)
    std::vector<Eigen::Index> order;   ///< processed column p is original column order[p]
    double loss = 0.0;                 ///< Σ_j ‖w_j − q_j‖²/U_jj² = tr(Δ H_damped Δᵀ)
    double damp = 0.0;                 ///< λ used
    int damp_retries = 0;              ///< failed factorisations before success
};

namespace detail {

/// The GPTQ sweep of TRA-GPTQ and BiLLM (billm.hpp): every block's values are fixed at its start by
/// `fit(p, W1, Ω, s)` (W1 the block's current weights `[m x bw]` in float, Ω_ij = W1_ij²/U_jj², s its
/// first processed column; returns the block's `[m x bw]` values), then GPTQ's error feedback. Fills
/// `r.loss` and, through `gptq_finish`, `weights` (original order), `order`, `damp`, `damp_retries`.
template <class Result, class Fit>
void fixed_block_gptq(Result& r, const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h, const gptq_options& opt,
                      const char* where, Fit&& fit) {
    check_gptq_inputs(w, h, opt, where);
    auto p = gptq_prepare(w, h, opt, where);
    const auto blocks = gptq_blocks(w.cols(), opt.block_size, {});
    matrix_f qblock;
    Eigen::MatrixXd q;
    r.loss = gptq_sweep(
        p, blocks, q,
        [&](const Eigen::MatrixXd& w1, Eigen::Index s, Eigen::Index e) {
            const Eigen::Index bw = e - s;
            matrix_f omega(w1.rows(), bw);
            for (Eigen::Index j = 0; j < bw; ++j) {
                const double d = p.u(s + j, s + j);
                omega.col(j) = (w1.col(j).array().square() / (d * d)).cast<float>().matrix();
            }
            qblock = fit(static_cast<const gptq_problem&>(p), matrix_f(w1.cast<float>()), omega, s);
        },
        [&](const Eigen::MatrixXd&, Eigen::Index s, Eigen::Index j, const vector_f&, vector_f& out) {
            out = qblock.col(j - s);
        });
    gptq_finish(r, p, q);
}

/// Greedy residual ternary approximation of `v` restricted to `mask`: `terms` successive E2M-ATQ
/// stage-1 initialisations (steps 1–3: μ = mean, Δ = 0.75·mean|c|, t, α) each on the previous residual,
/// no alternation (the BiLLM/TWLA mask-search approximation). Zero outside the mask.
template <class = void>
matrix_f tra_greedy_ternary(const matrix_f& v, const group_mask& mask, int terms, const matrix_d& eye) {
    e2m_atq cfg;
    cfg.order = 1;
    cfg.stage1_iters = 0;
    cfg.relocate = false;
    matrix_f approx = matrix_f::Zero(v.rows(), v.cols());
    matrix_f resid = v;
    for (int k = 0; k < terms; ++k) {
        const matrix_f d = fit_e2m_atq(resid, mask, eye, cfg).dequantize();
        approx += d;
        resid -= d;
    }
    return approx;
}

/// Σ over masked entries of (approx − v)².
inline double masked_sse(const matrix_f& v, const matrix_f& approx, const group_mask& mask) {
    double e = 0.0;
    for (Eigen::Index i = 0; i < v.rows(); ++i)
        for (Eigen::Index j = 0; j < v.cols(); ++j)
            if (mask(i, j)) {
                const double d = static_cast<double>(approx(i, j)) - static_cast<double>(v(i, j));
                e += d * d;
            }
    return e;
}

/// Linear-interpolation quantile (torch.quantile's default) of sorted values at q ∈ [0, 1].
inline double linear_quantile(const std::vector<double>& sorted, double q) {
    const double pos = q * static_cast<double>(sorted.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
    return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

/// The four masks of one block and the choices that produced them (steps b–d of sources.md §2.4).
struct tra_partition_result {
    std::array<group_mask, 4> masks;   // salient ≤ bp, salient > bp, rest ≤ bp', rest > bp'
    std::vector<Eigen::Index> salient; // block-relative columns
    double salient_break = 0.0, nonsalient_break = 0.0;
};

/// Splits the entries of `region` by a break point on Ω chosen among the quantile_steps quantiles
/// (10 %…90 %) of the region's non-zero Ω values; `score(lo, hi)` rates a split (lower is better; the
/// first best wins). With no non-zero value the whole region goes to the first side.
template <class Score>
inline double tra_split(const matrix_f& omega, const group_mask& region, int steps, group_mask& lo, group_mask& hi,
                        Score&& score) {
    std::vector<double> vals;
    for (Eigen::Index i = 0; i < omega.rows(); ++i)
        for (Eigen::Index j = 0; j < omega.cols(); ++j)
            if (region(i, j) && omega(i, j) != 0.0f) vals.push_back(omega(i, j));
    auto apply = [&](double bp, group_mask& a, group_mask& b) {
        a = region.array() && (omega.array().cast<double>() <= bp);
        b = region.array() && !(omega.array().cast<double>() <= bp);
    };
    if (vals.empty()) {
        lo = region;
        hi = group_mask::Constant(region.rows(), region.cols(), false);
        return 0.0;
    }
    std::sort(vals.begin(), vals.end());
    double best = std::numeric_limits<double>::infinity(), best_bp = vals.back();
    group_mask a, b;
    for (int k = 0; k < steps; ++k) {
        const double q = steps == 1 ? 0.5 : 0.1 + 0.8 * static_cast<double>(k) / static_cast<double>(steps - 1);
        const double bp = linear_quantile(vals, q);
        apply(bp, a, b);
        const double e = score(a, b);
        if (e < best) {
            best = e;
            best_bp = bp;
        }
    }
    apply(best_bp, lo, hi);
    return best_bp;
}

/// Steps b–d for one block: Ω = W1²/U_jj² (`omega`), S of the block's columns (`s`).
template <class = void>
tra_partition_result tra_partition(const matrix_f& omega, const matrix_d& s, const tra_gptq_options& opt) {
    const Eigen::Index m = omega.rows(), bw = omega.cols();
    const matrix_d eye = matrix_d::Identity(bw, bw);
    tra_partition_result r;
    // b. salient columns: top-k of score_j = Σ_i Ω_ij, k = 1 … K−1, K = min(candidates, width).
    std::vector<Eigen::Index> cols(static_cast<std::size_t>(bw));
    std::iota(cols.begin(), cols.end(), Eigen::Index{0});
    const Eigen::VectorXd score = omega.cast<double>().colwise().sum().transpose();
    std::stable_sort(cols.begin(), cols.end(), [&](Eigen::Index a, Eigen::Index b) { return score(a) > score(b); });
    const Eigen::Index kmax = std::min(opt.salient_candidates, bw) - 1;
    Eigen::Index best_k = 0;
    double best_e = std::numeric_limits<double>::infinity();
    // Whole columns: fit the column subsets directly (same values as masks, half the work).
    matrix_f sorted_cols(m, bw);
    for (Eigen::Index c = 0; c < bw; ++c) sorted_cols.col(c) = omega.col(cols[static_cast<std::size_t>(c)]);
    for (Eigen::Index k = 1; k <= kmax; ++k) {
        const matrix_f top = sorted_cols.leftCols(k), other = sorted_cols.rightCols(bw - k);
        const group_mask all_top = group_mask::Constant(m, k, true), all_other = group_mask::Constant(m, bw - k, true);
        const double e = masked_sse(top, tra_greedy_ternary(top, all_top, 2, eye.topLeftCorner(k, k)), all_top) +
                         masked_sse(other, tra_greedy_ternary(other, all_other, 2, eye.topLeftCorner(bw - k, bw - k)),
                                        all_other);
        if (e < best_e) {
            best_e = e;
            best_k = k;
        }
    }
    r.salient.assign(cols.begin(), cols.begin() + best_k);
    // The splits work on the column subsets (entries outside a subset are in no candidate group).
    std::vector<Eigen::Index> rest_cols;
    {
        std::vector<bool> is_sal(static_cast<std::size_t>(bw), false);
        for (Eigen::Index c : r.salient) is_sal[static_cast<std::size_t>(c)] = true;
        for (Eigen::Index c = 0; c < bw; ++c)
            if (!is_sal[static_cast<std::size_t>(c)]) rest_cols.push_back(c);
    }
    auto columns = [&](const std::vector<Eigen::Index>& idx) {
        matrix_f out(m, static_cast<Eigen::Index>(idx.size()));
        for (std::size_t c = 0; c < idx.size(); ++c) out.col(static_cast<Eigen::Index>(c)) = omega.col(idx[c]);
        return out;
    };
    auto scatter = [&](const std::vector<Eigen::Index>& idx, const group_mask& part, group_mask& full) {
        for (std::size_t c = 0; c < idx.size(); ++c) full.col(idx[c]) = part.col(static_cast<Eigen::Index>(c));
    };
    for (auto& mk : r.masks) mk = group_mask::Constant(m, bw, false);
    // c. salient split: each side a greedy order-2 ternary, criterion MSE.
    {
        const matrix_f os = columns(r.salient);
        const Eigen::Index k = os.cols();
        const matrix_d eye_k = matrix_d::Identity(k, k);
        group_mask lo, hi;
        r.salient_break = tra_split(os, group_mask::Constant(m, k, true), opt.quantile_steps, lo, hi,
                                    [&](const group_mask& a, const group_mask& b) {
                                        return masked_sse(os, tra_greedy_ternary(os, a, 2, eye_k), a) +
                                               masked_sse(os, tra_greedy_ternary(os, b, 2, eye_k), b);
                                    });
        scatter(r.salient, lo, r.masks[0]);
        scatter(r.salient, hi, r.masks[1]);
    }
    // d. non-salient split: each side a greedy order-1 ternary, criterion tr(Δ S Δᵀ) (Δ is zero
    //    outside the non-salient columns, so S restricted to them suffices).
    {
        const matrix_f orr = columns(rest_cols);
        const Eigen::Index k = orr.cols();
        const matrix_d eye_k = matrix_d::Identity(k, k);
        Eigen::MatrixXd s_rest(k, k);
        for (Eigen::Index i = 0; i < k; ++i)
            for (Eigen::Index j = 0; j < k; ++j)
                s_rest(i, j) = s(rest_cols[static_cast<std::size_t>(i)], rest_cols[static_cast<std::size_t>(j)]);
        group_mask lo, hi;
        r.nonsalient_break = tra_split(orr, group_mask::Constant(m, k, true), opt.quantile_steps, lo, hi,
                                       [&](const group_mask& a, const group_mask& b) {
                                           const Eigen::MatrixXd d =
                                               (tra_greedy_ternary(orr, a, 1, eye_k) + tra_greedy_ternary(orr, b, 1, eye_k) - orr)
                                                   .cast<double>();
                                           return (d * s_rest).cwiseProduct(d).sum();
                                       });
        scatter(rest_cols, lo, r.masks[2]);
        scatter(rest_cols, hi, r.masks[3]);
    }
    return r;
}

} // namespace detail

/// TRA-GPTQ (TWLA, sources.md §2.4) of `w` `[m x n]` with Hessian `h` `[n x n]`.
///
/// Per block of B columns (processing order; act order optional): Ω = W²/U_jj² of the block at its
/// start; salient columns = the top-k by Σ_i Ω_ij with k ∈ 1…K−1 minimising the greedy 2-term
/// ternary MSE of Ω on both sides; the salient entries split by an Ω break point (one of the
/// 10…90 % quantiles) minimising the greedy order-2 MSE; the other entries split likewise with order
/// 1 and criterion tr(ΔSΔᵀ); each of the four groups fitted by E2M-ATQ (orders 2, 2, 1, 1) on W with
/// S = H/2 of the block (undamped, = XᵀX/N); then GPTQ error feedback with these fixed values.
/// Reconstruction notes (docs/gptq.md): the greedy approximations use E2M-ATQ stage 1 with zero
/// iterations; quantiles interpolate linearly (torch.quantile).
///
/// \throws as `gptq_quantize`, plus invalid_argument for bad options.
/// Complexity per block: O(K·m·B) for the salient search, O(quantile_steps·m·B²) for the
/// non-salient criterion, O(m·B²) for stage 2; plus GPTQ's O(n³ + m n²).
template <class = void>
[[nodiscard]] tra_gptq_result tra_gptq_quantize(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h,
                                                       const tra_gptq_options& opt = {}) {
    constexpr const char* where = "tra_gptq_quantize";
    opt.validate(where);
    tra_gptq_result r;
    detail::fixed_block_gptq(r, w, h, opt.gptq, where,
                             [&](const detail::gptq_problem& p, const matrix_f& wf, const matrix_f& omega, Eigen::Index s) {
                                 const Eigen::Index bw = wf.cols();
                                 const matrix_d sblk = p.h.block(s, s, bw, bw) / 2.0;
                                 auto part = detail::tra_partition(omega, sblk, opt);
                                 tra_gptq_block info;
                                 info.begin = s;
                                 info.width = bw;
                                 info.salient = part.salient;
                                 info.salient_break = part.salient_break;
                                 info.nonsalient_break = part.nonsalient_break;
                                 matrix_f qblock = matrix_f::Zero(wf.rows(), bw);
                                 for (int g = 0; g < 4; ++g) {
                                     e2m_atq cfg = opt.atq;
                                     cfg.order = g < 2 ? 2 : 1;
                                     auto fit = fit_e2m_atq(wf, part.masks[static_cast<std::size_t>(g)], sblk, cfg);
                                     qblock += fit.dequantize();
                                     if (opt.keep_codes) info.fits.push_back(std::move(fit));
                                 }
                                 r.blocks.push_back(std::move(info));
                                 return qblock;
                             });
    return r;
}

/// The packed layout (salient_ternary.hpp) of a TRA-GPTQ result computed with
/// `tra_gptq_options::keep_codes`: per block its salient columns first (in `salient` order), then the
/// others in processing order, then padding; per weight the codes t₀ (and t₁ in salient columns) of
/// the fit whose mask holds it and the group bit (1: the "> break" fit); per row and block the
/// parameters μ, α₀, α₁ of the two salient fits and μ, α of the two other fits, each rounded once to
/// fp16. Its `dequantize()` equals `r.weights` up to that rounding: per weight, with S = |μ| + |α₀| +
/// |α₁| of its fit (α₁ = 0 outside the salient columns),
///     |Δw| ≤ (2⁻¹¹ + 2⁻²¹)·S + 2⁻²³
/// (fp16's relative half-ulp and half subnormal spacing per parameter, and the float rounding of both
/// sums), which the tests check.
/// \throws invalid_argument (no kept codes, fits of the wrong shape, a weight in no group or a code
///         outside {−1, 0, 1}), numeric_error (a parameter beyond fp16's range), as the matrix
///         constructor. O(rows·cols).
template <class = void>
[[nodiscard]] salient_ternary_matrix pack_tra(const tra_gptq_result& r) {
    constexpr const char* where = "pack_tra";
    const Eigen::Index m = r.weights.rows(), n = r.weights.cols();
    for (const auto& b : r.blocks) {
        detail::require(b.fits.size() == 4, where, "the result keeps no codes (tra_gptq_options::keep_codes)");
        for (const auto& f : b.fits)
            detail::require(f.mask.rows() == m && f.mask.cols() == b.width && f.codes[0].rows() == m &&
                                f.codes[0].cols() == b.width && f.codes[1].rows() == m && f.codes[1].cols() == b.width &&
                                f.mean.size() == m && f.alpha[0].size() == m && f.alpha[1].size() == m,
                            where, "a kept fit does not have the block's shape");
    }
    auto [blocks, source, packed_col] = detail::salient_packing_of(r.blocks, r.order);
    const auto nb = static_cast<Eigen::Index>(blocks.size());
    constexpr int np = salient_ternary_matrix::params_per_block;
    vector_f params(m * nb * np);
    std::vector<std::uint16_t> words;
    auto fp16 = [](float v) { return static_cast<float>(Eigen::half(v)); };
    for (Eigen::Index i = 0; i < m; ++i) {
        Eigen::Index p0 = 0;
        for (Eigen::Index bi = 0; bi < nb; ++bi) {
            const auto& b = r.blocks[static_cast<std::size_t>(bi)];
            const auto k = static_cast<Eigen::Index>(b.salient.size());
            const Eigen::Index chunks = (b.width + 15) / 16;
            for (Eigen::Index c = 0; c < chunks; ++c) {
                std::uint32_t plane[5] = {}; // P, N, G, P1, N1
                for (Eigen::Index l = 0; l < 16 && 16 * c + l < b.width; ++l) {
                    const Eigen::Index t = 16 * c + l, j = packed_col[static_cast<std::size_t>(p0 + t)];
                    const int first = t < k ? 0 : 2; // the salient fits, or the others
                    const int g = b.fits[static_cast<std::size_t>(first)].mask(i, j) ? 0 : b.fits[static_cast<std::size_t>(first) + 1].mask(i, j) ? 1 : -1;
                    detail::require(g >= 0, where, "a weight lies in no group of its column kind");
                    const auto& f = b.fits[static_cast<std::size_t>(first + g)];
                    const int t0 = f.codes[0](i, j), t1 = f.codes[1](i, j);
                    detail::require(t0 >= -1 && t0 <= 1 && t1 >= -1 && t1 <= 1 && (t < k || t1 == 0), where,
                                    "a code lies outside {-1, 0, 1} (or t1 != 0 outside the salient columns)");
                    plane[0] |= (t0 > 0 ? 1u : 0u) << l;
                    plane[1] |= (t0 < 0 ? 1u : 0u) << l;
                    plane[2] |= static_cast<std::uint32_t>(g) << l;
                    plane[3] |= (t1 > 0 ? 1u : 0u) << l;
                    plane[4] |= (t1 < 0 ? 1u : 0u) << l;
                }
                for (int q = 0; q < (16 * c < k ? 5 : 3); ++q) words.push_back(static_cast<std::uint16_t>(plane[q]));
            }
            float* p = params.data() + (i * nb + bi) * np;
            for (int g = 0; g < 2; ++g) {
                const auto& s = b.fits[static_cast<std::size_t>(g)];
                const auto& o = b.fits[static_cast<std::size_t>(2 + g)];
                p[3 * g] = fp16(s.mean(i));
                p[3 * g + 1] = fp16(s.alpha[0](i));
                p[3 * g + 2] = fp16(s.alpha[1](i));
                p[6 + 2 * g] = fp16(o.mean(i));
                p[6 + 2 * g + 1] = fp16(o.alpha[0](i));
            }
            p0 += chunks * 16;
        }
    }
    return salient_ternary_matrix(m, n, std::move(blocks), std::move(source), std::move(words), params);
}

/// The per-row scale α and offset μ of a per-row GPTQ result for packed format `Format`, such that
/// `r.weights(i, j) = α_i·t_ij + μ_i` with t in the format's code range:
/// - quantizers with `params{scale, zero}` (rtn_quantizer: w = s·(c − z), c ∈ [0, 2^bits)): α = s,
///   μ = s·(−code_min − z), i.e. t = c + code_min (int4: t = c − 8);
/// - quantizers with `params{mean, alpha0}` (e2m_atq_quantizer, binary_quantizer): α = α₀, μ = mean.
/// \throws invalid_argument unless the result has one column group (`per_row`).
template <class Format, class Params>
[[nodiscard]] std::pair<vector_f, vector_f> gptq_row_affine(const gptq_result<Params>& r) {
    static_assert(PackedFormat<Format>, "lowbit: gptq_row_affine: unknown packed format tag");
    detail::require(r.groups.size() == 1 && r.params.size() == 1, "pack_gptq",
                    "the GPTQ result has " + std::to_string(r.groups.size()) +
                        " column groups; packed matrices hold one scale per row (run gptq_quantize with per_row)");
    const Params& p = r.params.front();
    if constexpr (requires { p.scale; p.zero; }) {
        const vector_f mu = p.scale.array() * (static_cast<float>(-pack_format<Format>::code_min) - p.zero.array());
        return {p.scale, mu};
    } else if constexpr (requires { p.mean; p.alpha0; }) {
        return {p.alpha0, p.mean};
    } else {
        static_assert(detail::dependent_false<Params>,
                      "lowbit: pack_gptq: the quantizer's params have neither {scale, zero} nor {mean, alpha0}");
        return {};
    }
}

/// Packs a per-row GPTQ result into `packed_matrix<Format>` for the kernels of gemm.hpp: the codes are
/// recovered from `r.weights` (`recover_codes`, checked to lie on the grid) with the scales and offsets
/// of `gptq_row_affine`. The packed matrix dequantizes to `r.weights` up to float rounding of α·t + μ.
/// Pick the format that matches the quantizer: int4 for `rtn_quantizer{4, ...}`, ternary2 or
/// ternary_base3 for `e2m_atq_quantizer`, binary1 for `binary_quantizer`.
/// \throws invalid_argument for a grouped result or weights off the format's grid (wrong format).
/// O(rows·cols).
///
/// ```
/// auto res = lowbit::gptq_quantize(w, h.matrix(), lowbit::e2m_atq_quantizer{});
/// lowbit::packed_matrix<lowbit::ternary2> pw = lowbit::pack_gptq<lowbit::ternary2>(res);
/// lowbit::vector_f y = lowbit::gemv(pw, x); // y ≈ W x, int8 activations (gemm.hpp)
/// ```
template <class Format, class Params>
[[nodiscard]] packed_matrix<Format> pack_gptq(const gptq_result<Params>& r) {
    const auto [alpha, mu] = gptq_row_affine<Format>(r);
    return pack<Format>(recover_codes<Format>(r.weights, alpha, mu), alpha, mu);
}

/// Packs a static-group int4 GPTQ result into the grouped int4 format of the integer kernels
/// (pack.hpp `grouped_int4_matrix`, gemm.hpp `gemm`): the quantizer's params are `{scale, zero}`
/// with 4-bit codes c ∈ [0, 15] and value s·(c − z) (rtn_quantizer{4, ...}), the run used
/// `gptq_options::static_groups` with `per_group{G}`, G = `group_cols` ∈ {128, 256} (the last group
/// may be narrower: tail_policy::smaller_last).
/// The codes are the solver's own grid indices: c_ij = round(q_ij/s) + z of the group's (s, z) —
/// exact, since q_ij = s·(c − z) was produced on that grid (checked: |s·(c − z) − q| ≤ 1e-4·s, c ∈ [0, 15]).
/// Stored: t = c − 8, α = fp16(s), μ = fp16(s·(8 − z)), so the packed matrix dequantizes to r.weights
/// up to that rounding: |α·t + μ − q| ≤ 2^-11·(8·|s| + |s·(8 − z)|) + float rounding.
/// \throws invalid_argument (dynamic groups, G ∉ {128, 256}, weights off the grid or codes outside
///         [0, 15] — not a 4-bit run). O(rows·cols).
template <class Params>
[[nodiscard]] grouped_int4_matrix pack_gptq_grouped_int4(const gptq_result<Params>& r, Eigen::Index group_cols) {
    constexpr const char* where = "pack_gptq_grouped_int4";
    static_assert(requires(const Params& p) { p.scale; p.zero; },
                  "lowbit: pack_gptq_grouped_int4: the quantizer's params need {scale, zero} (rtn_quantizer)");
    detail::require(r.static_groups, where, "the GPTQ result has dynamic groups; run gptq_quantize with static_groups");
    detail::require(!r.groups.empty() && r.groups.size() == r.params.size(), where, "the GPTQ result has no groups");
    const Eigen::Index gc = group_cols, m = r.weights.rows(), n = r.weights.cols();
    detail::require(gc == 128 || gc == 256, where, "group size must be 128 or 256, got " + std::to_string(gc));
    const auto ng = static_cast<Eigen::Index>(r.groups.size());
    detail::require(ng == (n + gc - 1) / gc, where, "groups are not consecutive runs of G columns");
    matrix_i8 t(m, n);
    matrix_f alpha(m, ng), mu(m, ng);
    for (Eigen::Index g = 0; g < ng; ++g) {
        const Params& p = r.params[static_cast<std::size_t>(g)];
        const column_group& cg = r.groups[static_cast<std::size_t>(g)];
        detail::require(cg.begin == g * gc && cg.width == std::min(gc, n - g * gc), where,
                        "groups are not consecutive runs of G columns");
        for (Eigen::Index i = 0; i < m; ++i) {
            const double sc = static_cast<double>(p.scale(i)), z = static_cast<double>(p.zero(i));
            alpha(i, g) = static_cast<float>(Eigen::half(p.scale(i)));
            mu(i, g) = static_cast<float>(Eigen::half(static_cast<float>(sc * (8.0 - z))));
            for (Eigen::Index j = cg.begin; j < cg.begin + cg.width; ++j) {
                const double q = static_cast<double>(r.weights(i, j));
                const double c = std::nearbyint(q / sc) + z;
                detail::require(c >= 0.0 && c <= 15.0 && std::fabs(sc * (c - z) - q) <= 1e-4 * std::fabs(sc), where,
                                "weight (" + std::to_string(i) + ", " + std::to_string(j) +
                                    ") is not on its group's 4-bit grid (not an int4 run?)");
                t(i, j) = static_cast<std::int8_t>(static_cast<int>(c) - 8);
            }
        }
    }
    return pack_grouped_int4(t, gc, alpha, mu);
}

LOWBIT_END_NAMESPACE
