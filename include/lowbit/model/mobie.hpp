#pragma once
/// \file model/mobie.hpp
/// MoBiE (docs/sources.md §4, a RECONSTRUCTION: the paper's equations were not available) as a
/// pipeline on a routed-expert `llama_model` (Qwen3-MoE): binary weights for every block linear,
/// router, norms, embedding and classifier float. Three switchable components:
/// - **CEJD** (cross-expert joint decomposition, `mobie_config::cejd`): per MoE layer and projection
///   type (w1, w2, w3), the joint SVD of the column-stacked experts `[W_1 … W_E] = U Σ [V_1ᵀ … V_Eᵀ]`
///   (`joint_svd_shared_left`, lowrank.hpp); the shared backbone G = U_k Σ_k `[m x k]` is stored in
///   fp16 once per layer and type, each expert stores only its factor F_e `[k x n]` (re-fitted to the
///   fp16 G by least squares), binarized. W_e ≈ G·(μ 1ᵀ + diag(α)·B_e). Off: each expert is binarized
///   directly (plain per-expert binarization).
/// - **GLAS** (global loss-aligned saliency, `mobie_config::glas`): one reverse pass over the
///   calibration windows on the float model (`calibration_gradients`, model/backward.hpp) gives
///   g = ∂L/∂W of every linear (for a CEJD factor g_F = Gᵀ g_W). Each binarized entry's squared error
///   is weighted by `ω_ij = c_i/u_j² · (1 + κ|g_ij w_ij| / mean|g w|)` = `glas_saliency/w_ij²` (moe.hpp;
///   u_j the diagonal of the upper Cholesky factor of H⁻¹, c_i = ‖G_:i‖² for a CEJD factor, else 1):
///   the per-row (μ, α) minimise Σ_j ω_ij (w_ij − μ − α b_ij)² (weighted ARB alternation), and GPTQ
///   processes columns by GLAS column saliency Σ_i ω_ij w_ij² descending. Off: ARB-LLM (μ, α)
///   (`binary_quantizer<arb>`) and GPTQ activation order (diag H).
/// - **NGES** (null-space guided expert-shift suppression, `mobie_config::nges`): the expert's GPTQ
///   Hessian is replaced by `H + η·mean(diag H)·Q_k Q_kᵀ` (`nges_penalized_hessian`, moe.hpp), Q_k the
///   top-k eigenvectors of its routed-token input Gram (k = ⌈nges_rank·n⌉), i.e. the objective gains
///   η'‖ΔW Q_k‖²: the error is pushed towards the approximate null space of the expert's inputs, so
///   its output — and the next layer's router input — moves less. Experts only.
/// Every linear is solved by GPTQ (binary columns, per-row μ, α) on Hessians captured layer by layer
/// on the partially quantized model (`capture_layer_hessians`, plain routed-token Hessians).
///
/// Storage and bits (`mobie_result`): per-row α, μ and the shared bases in fp16 (counted at 16 bits),
/// binary codes at 1 bit. Attention linears and non-CEJD experts are `binary1` packed records (they
/// run lowbit's packed binary kernels). A CEJD expert counts `k·n` code bits + `32·k` (its α, μ) +
/// `16·m·k/E` (its share of G) and stores exactly that: a "cejd_binary1" record (model/moe_experts.hpp)
/// holding the packed binary factor (α, μ) and a reference to the layer's G, which the file stores once
/// per layer and projection type; it runs as `cejd_expert_linear` — the packed binary kernel, then the
/// shared fp16 basis — with no dense copy of G·F̂_e. Saving and
/// reloading (`save_quantized_model` / `load_quantized_model`) is bit-identical.
///
/// Threads: none. Deterministic (no random numbers).
///
/// Compile time: `quantize_mobie` and its solvers are function templates with one defaulted, unused
/// parameter (`template <class = void>`; call them as ordinary functions), so their Eigen decompositions
/// and solvers are compiled only in a translation unit that calls them (docs/compile_time.md).

#include <lowbit/binary.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/model/backward.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/moe_experts.hpp>
#include <lowbit/model/moe_recipes.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/moe.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------

/// CEJD result with an fp16 shared basis: `W_e ≈ basis · factors[e]`.
struct cejd_factors {
    matrix_f basis;                 ///< (m, k) shared G = U_k Σ_k, every entry fp16-exact
    std::vector<matrix_f> factors;  ///< per expert (k, n): least-squares F_e = (GᵀG)⁻¹Gᵀ W_e for the fp16 G
};

/// CEJD (RECON, sources.md §4.2): `joint_svd_shared_left(experts, k)`, G rounded to fp16, then each
/// factor re-fitted to the rounded G by least squares (double). k = m is lossless up to float
/// rounding (G square and invertible). \throws as joint_svd_shared_left; numeric_error if GᵀG is
/// singular. Complexity: one SVD of `[m x E·n]` + O(E·(k²n + kmn)).
template <class = void>
[[nodiscard]] cejd_factors cejd_decompose(std::span<const matrix_f> experts, Eigen::Index k) {
    const joint_left_basis j = joint_svd_shared_left(experts, k);
    cejd_factors out;
    out.basis = j.basis;
    for (Eigen::Index i = 0; i < out.basis.size(); ++i) out.basis.data()[i] = detail::round_fp16(out.basis.data()[i]);
    const Eigen::MatrixXd g = out.basis.cast<double>();
    const Eigen::LDLT<Eigen::MatrixXd> gram(g.transpose() * g);
    detail::require<numeric_error>(gram.info() == Eigen::Success && gram.isPositive(), "cejd_decompose",
                                   "the shared basis is singular");
    for (const matrix_f& w : experts)
        out.factors.push_back(matrix_f(gram.solve(g.transpose() * w.cast<double>()).cast<float>()));
    return out;
}

/// The diagonal u_j of the upper Cholesky factor U of H_d⁻¹ (H_d⁻¹ = UᵀU), H_d = H with dead
/// columns (H_jj = 0) set to 1, plus damp·mean(diag H)·I — GPTQ's factor in the original column
/// order. \throws shape_error (non-square, empty), numeric_error (NaN/Inf, not positive definite).
/// O(n³).
template <class = void>
[[nodiscard]] vector_f gptq_u_diagonal(const Eigen::Ref<const matrix_d>& h, double damp) {
    constexpr const char* where = "gptq_u_diagonal";
    detail::require_nonempty(h, where, "h");
    detail::require_dim(h.cols(), h.rows(), where, "h cols (must be square)");
    detail::require_finite(h, where, "h");
    Eigen::MatrixXd hd = h;
    const Eigen::Index n = hd.rows();
    for (Eigen::Index j = 0; j < n; ++j)
        if (hd(j, j) == 0.0) hd(j, j) = 1.0;
    hd.diagonal().array() += damp * hd.diagonal().mean();
    const Eigen::LLT<Eigen::MatrixXd> l1(hd);
    detail::require<numeric_error>(l1.info() == Eigen::Success, where, "H is not positive definite after damping");
    const Eigen::MatrixXd inv = l1.solve(Eigen::MatrixXd::Identity(n, n));
    const Eigen::LLT<Eigen::MatrixXd> l2(0.5 * (inv + inv.transpose()));
    detail::require<numeric_error>(l2.info() == Eigen::Success, where, "H⁻¹ is not positive definite");
    const Eigen::MatrixXd lm = l2.matrixL();
    return lm.diagonal().cast<float>(); // H⁻¹ = L Lᵀ = UᵀU with U = Lᵀ: u_jj = L_jj
}

/// GLAS error weights `ω_ij = c_i/u_j² · (1 + κ|g_ij w_ij| / mean|g w|)` (so ω_ij w_ij² =
/// `glas_saliency(w, u, g, κ)` scaled by c_i). `row_weight` c `[m]` may be empty (all 1).
/// κ = 0 or g = 0 give the local OBS weights 1/u_j². \throws shape_error (sizes), numeric_error
/// (NaN/Inf), invalid_argument (u_j ≤ 0, κ < 0, c < 0). O(m n).
template <class = void>
[[nodiscard]] matrix_d glas_error_weights(const cref_matrix_f& w, const cref_vector_f& u_diag,
                                          const Eigen::Ref<const matrix_d>& grad, double kappa,
                                          const cref_vector_f& row_weight = vector_f()) {
    constexpr const char* where = "glas_error_weights";
    detail::check_glas_arguments(w, u_diag, grad, kappa, where);
    if (row_weight.size()) {
        detail::require_dim(row_weight.size(), w.rows(), where, "row_weight size (must equal w rows)");
        detail::require_finite(row_weight, where, "row_weight");
        detail::require(row_weight.minCoeff() >= 0.0f, where, "argument 'row_weight' must be >= 0");
    }
    double mean_gw = 0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index j = 0; j < w.cols(); ++j) mean_gw += std::fabs(grad(i, j) * static_cast<double>(w(i, j)));
    mean_gw /= static_cast<double>(w.size());
    matrix_d om(w.rows(), w.cols());
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        const double c = row_weight.size() ? static_cast<double>(row_weight(i)) : 1.0;
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            const double u = u_diag(j);
            const double global = mean_gw > 0 ? kappa * std::fabs(grad(i, j) * static_cast<double>(w(i, j))) / mean_gw : 0.0;
            om(i, j) = c / (u * u) * (1.0 + global);
        }
    }
    return om;
}

/// `GroupQuantizer` (per_row only): binary μ + α·sign(x − μ) whose per-row (μ, α) minimise the
/// weighted error Σ_j ω_ij (w_ij − μ − α b_ij)², b = sign(w − μ): start from the ω-weighted mean and
/// mean |w − μ|, then `iters` alternations of (μ, α) ← weighted 2×2 least squares for the current b
/// and b ← sign(w − μ), keeping the best iterate (so never worse than the start). `weights` `[m x n]`
/// must be in the column order GPTQ processes (no act order). Rows with Σω = 0 use ω = 1.
struct weighted_binary_quantizer {
    matrix_d weights; ///< ω (m, n), ≥ 0
    int iters = 15;   ///< alternations, ≥ 0

    /// Per-row parameters.
    struct params {
        vector_f mean;   ///< (rows) μ
        vector_f alpha0; ///< (rows) α
    };

    /// Fits every row of `block` (the whole `[m x n]` matrix). \throws shape_error if it is not ω's shape.
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        detail::require_dim(block.rows(), weights.rows(), "weighted_binary_quantizer", "block rows");
        detail::require_dim(block.cols(), weights.cols(), "weighted_binary_quantizer", "block cols (per_row only)");
        const Eigen::Index n = block.cols();
        params p{vector_f(block.rows()), vector_f(block.rows())};
        for (Eigen::Index i = 0; i < block.rows(); ++i) {
            double sw = weights.row(i).sum();
            const bool uniform = !(sw > 0);
            auto om = [&](Eigen::Index j) { return uniform ? 1.0 : weights(i, j); };
            if (uniform) sw = static_cast<double>(n);
            auto err = [&](double mu, double a) {
                double e = 0;
                for (Eigen::Index j = 0; j < n; ++j) {
                    const double x = block(i, j), r = x - mu - a * (x - mu >= 0 ? 1.0 : -1.0);
                    e += om(j) * r * r;
                }
                return e;
            };
            double mu = 0, a = 0;
            for (Eigen::Index j = 0; j < n; ++j) mu += om(j) * block(i, j);
            mu /= sw;
            for (Eigen::Index j = 0; j < n; ++j) a += om(j) * std::fabs(block(i, j) - mu);
            a /= sw;
            double best = err(mu, a);
            for (int it = 0; it < iters; ++it) {
                double sb = 0, sx = 0, sbx = 0;
                for (Eigen::Index j = 0; j < n; ++j) {
                    const double x = block(i, j), b = x - mu >= 0 ? 1.0 : -1.0;
                    sb += om(j) * b;
                    sx += om(j) * x;
                    sbx += om(j) * b * x;
                }
                const double det = sw * sw - sb * sb;
                if (!(det > 1e-12 * sw * sw)) break;
                const double mu2 = (sw * sx - sb * sbx) / det, a2 = (sw * sbx - sb * sx) / det;
                if (!(a2 > 0)) break;
                const double e2 = err(mu2, a2);
                if (!(e2 < best * (1 - 1e-12))) break;
                best = e2;
                mu = mu2;
                a = a2;
            }
            p.mean(i) = static_cast<float>(mu);
            p.alpha0(i) = static_cast<float>(a);
        }
        return p;
    }

    /// μ + α·sign(x − μ) per row.
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i)
            out(i) = p.mean(i) + p.alpha0(i) * detail::sign_code(static_cast<double>(col(i)) - p.mean(i));
    }
};

static_assert(GroupQuantizer<weighted_binary_quantizer>);

/// A binarized matrix: GPTQ's dequantized weights and the per-row parameters (not yet fp16-rounded).
struct binary_solution {
    matrix_f weights; ///< (m, n) μ_i + α_i b_ij, original column order
    vector_f mean;    ///< (m) μ
    vector_f alpha;   ///< (m) α
};

/// GPTQ binarization of `w` `[m x n]` with Hessian `h` `[n x n]`. Without `omega`: ARB-LLM (μ, α)
/// (`binary_quantizer<arb>{arb{iters}}`) and activation order. With `omega` `[m x n]` (GLAS):
/// `weighted_binary_quantizer` and columns processed by Σ_i ω_ij w_ij² descending (stable).
/// \throws as gptq_quantize, shape_error (ω's shape). O(n³ + m n² + m n·iters).
template <class = void>
[[nodiscard]] binary_solution mobie_binarize(const cref_matrix_f& w, const Eigen::Ref<const matrix_d>& h,
                                             const matrix_d* omega, double damp = 0.01, int iters = 15) {
    constexpr const char* where = "mobie_binarize";
    gptq_options go;
    go.damp = damp;
    binary_solution s;
    if (!omega) {
        go.act_order = true;
        auto r = gptq_quantize(w, h, binary_quantizer<arb>{arb{iters}}, per_row{}, go);
        s.weights = std::move(r.weights);
        s.mean = r.params.front().mean;
        s.alpha = r.params.front().alpha0;
        return s;
    }
    detail::require_dim(omega->rows(), w.rows(), where, "omega rows");
    detail::require_dim(omega->cols(), w.cols(), where, "omega cols");
    const Eigen::Index m = w.rows(), n = w.cols();
    std::vector<double> col_sal(static_cast<std::size_t>(n), 0.0);
    for (Eigen::Index i = 0; i < m; ++i)
        for (Eigen::Index j = 0; j < n; ++j)
            col_sal[static_cast<std::size_t>(j)] += (*omega)(i, j) * static_cast<double>(w(i, j)) * w(i, j);
    std::vector<Eigen::Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Eigen::Index{0});
    std::stable_sort(order.begin(), order.end(), [&](Eigen::Index a, Eigen::Index b) {
        return col_sal[static_cast<std::size_t>(a)] > col_sal[static_cast<std::size_t>(b)];
    });
    matrix_f wp(m, n);
    matrix_d hp(n, n), op(m, n);
    for (Eigen::Index j = 0; j < n; ++j) {
        const Eigen::Index oj = order[static_cast<std::size_t>(j)];
        wp.col(j) = w.col(oj);
        op.col(j) = omega->col(oj);
        for (Eigen::Index i = 0; i < n; ++i) hp(i, j) = h(order[static_cast<std::size_t>(i)], oj);
    }
    go.act_order = false;
    auto r = gptq_quantize(wp, hp, weighted_binary_quantizer{op, iters}, per_row{}, go);
    s.weights.resize(m, n);
    for (Eigen::Index j = 0; j < n; ++j) s.weights.col(order[static_cast<std::size_t>(j)]) = r.weights.col(j);
    s.mean = r.params.front().mean;
    s.alpha = r.params.front().alpha0;
    return s;
}

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

/// Configuration of `quantize_mobie`. All three components on is MoBiE; each off is an ablation;
/// all off is plain per-linear binarization (ARB + GPTQ).
struct mobie_config {
    std::string name = "mobie-w1"; ///< recipe name saved with the model
    bool cejd = true;          ///< cross-expert joint decomposition (shared fp16 basis, binary factors)
    double cejd_rank = 1.0;    ///< k = round(cejd_rank·m) basis columns, in (0, 1]; 1 = lossless before binarization
    bool glas = true;          ///< gradient-weighted binarization error and GPTQ order
    double glas_kappa = 1.0;   ///< κ of the global term
    bool nges = true;          ///< null-space penalty on the expert Hessians
    double nges_rank = 0.25;   ///< k = ceil(nges_rank·n) top input directions, in [0, 1]
    double nges_eta = 10.0;    ///< η ≥ 0 (relative to mean diag H)
    int arb_iters = 15;        ///< (μ, α) refinement rounds
    double damp = 0.01;        ///< GPTQ damping λ
    int calib_window = -1;     ///< calibration window (tokens; −1: the perplexity protocol's)
    int calib_windows = -1;    ///< at most this many calibration windows (< 0: all)
    /// Progress callback, one line per block.
    std::function<void(const std::string&)> progress;
};

/// What `quantize_mobie` measured (besides `moe_expert_result`'s model, bits and routing counts).
struct mobie_result : moe_expert_result {
    double gradient_seconds = 0; ///< the GLAS reverse pass (0 without GLAS)
    /// Per block (NaN for dense blocks): sqrt(Σ‖ΔW Q_k‖²_F / Σ‖W Q_k‖²_F) over the calibrated expert
    /// linears, ΔW = W − Ŵ (Ŵ the weight the layer runs), Q_k as NGES's (computed with or without NGES).
    std::vector<double> null_space_error;
};

/// The `recipe` a `quantize_mobie` model is saved and rebuilt with (binary weights, FP32 activations;
/// the records' formats — `binary1` or `cejd_binary1` — select each operator).
[[nodiscard]] inline recipe mobie_recipe(const mobie_config& c) {
    recipe r;
    r.name = c.name;
    r.description = std::string("MoBiE binary experts (") + (c.cejd ? "CEJD " : "") + (c.glas ? "GLAS " : "") +
                    (c.nges ? "NGES " : "") + "GPTQ)";
    r.weights = weight_scheme::arb_binary;
    r.solver = solver_kind::gptq;
    r.damp = c.damp;
    r.act_order = true;
    return r;
}

/// Counted bits of one CEJD expert linear: `k·n` code bits, `32·k` for its fp16 α and μ, and
/// `16·m·k/E` for its share of the fp16 basis G `[m x k]` shared by E experts.
[[nodiscard]] inline double cejd_expert_bits(Eigen::Index m, Eigen::Index n, Eigen::Index k, int experts) {
    return static_cast<double>(k) * static_cast<double>(n) + 32.0 * static_cast<double>(k) +
           16.0 * static_cast<double>(m) * static_cast<double>(k) / static_cast<double>(experts);
}

namespace detail {

/// The "cejd_binary1" record of one CEJD expert `[rows x n]`: the packed binary factor `[k x n]`
/// (fp16 α, μ) and the group `shared` ({"basis": G `[rows x k]`}) held by `experts` records under `key`.
inline linear_record cejd_record(const packed_matrix<binary1>& factor, Eigen::Index rows,
                                 std::shared_ptr<const expert_tensor_map> shared, std::string key, int experts) {
    linear_record rec = packed_record(factor);
    rec.format = "cejd_binary1";
    rec.rows = rows;
    rec.expert.shared_key = std::move(key);
    rec.expert.shared = std::move(shared);
    rec.expert.shared_by = experts;
    return rec;
}

/// μ + α·t with fp16-rounded (μ, α) and codes t = sign(q − μ) of a solution; returns the codes.
inline matrix_i8 binary_codes_rounded(binary_solution& s) {
    const matrix_i8 t = affine_codes(s.weights, s.mean, s.alpha, -1, 1, true);
    round_fp16(s.alpha);
    round_fp16(s.mean);
    return t;
}

/// Dequantized μ_i + α_i t_ij (double).
inline Eigen::MatrixXd binary_dequantize(const matrix_i8& t, const vector_f& mu, const vector_f& alpha) {
    Eigen::MatrixXd d(t.rows(), t.cols());
    for (Eigen::Index i = 0; i < t.rows(); ++i)
        for (Eigen::Index j = 0; j < t.cols(); ++j)
            d(i, j) = static_cast<double>(mu(i)) + static_cast<double>(alpha(i)) * t(i, j);
    return d;
}

/// Top-k eigenvectors `[n x k]` of a symmetric matrix.
template <class = void>
Eigen::MatrixXd top_eigenvectors(const matrix_d& s, Eigen::Index k) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(Eigen::MatrixXd(0.5 * (s + s.transpose())));
    return es.eigenvectors().rightCols(k);
}

} // namespace detail

/// Quantizes every block linear of `fp32` to binary with MoBiE (see the file comment), block by
/// block on the partially quantized model: block l's Hessians from `calib_tokens`
/// (`capture_layer_hessians`, plain routed-token Hessians), GLAS gradients once from the float
/// model over the same windows. An expert no calibration token reaches gets H = I (no NGES).
/// \throws invalid_argument (non-dense input, options out of range), shape_error (no calibration
/// token), numeric_error (Hessian damping fails). Complexity per block: one forward pass over the
/// calibration windows, O(n³ + m n²) per linear, one eigendecomposition per expert and input width,
/// one SVD of `[m x E·n]` per projection type; GLAS adds one reverse pass (≈ 3 forward passes, double).
template <class = void>
[[nodiscard]] mobie_result quantize_mobie(const llama_model& fp32, std::span<const int> calib_tokens,
                                          const mobie_config& c) {
    constexpr const char* where = "quantize_mobie";
    detail::require<shape_error>(!calib_tokens.empty(), where, "MoBiE needs calibration tokens");
    detail::require(c.cejd_rank > 0 && c.cejd_rank <= 1, where, "cejd_rank must lie in (0, 1]");
    detail::require(c.nges_rank >= 0 && c.nges_rank <= 1, where, "nges_rank must lie in [0, 1]");
    detail::require(c.nges_eta >= 0 && std::isfinite(c.nges_eta), where, "nges_eta must be finite and >= 0");
    detail::require(c.glas_kappa >= 0 && std::isfinite(c.glas_kappa), where, "glas_kappa must be finite and >= 0");
    detail::require(c.arb_iters >= 0, where, "arb_iters must be >= 0");
    mobie_result res;
    res.q.spec = mobie_recipe(c);
    res.q.model = fp32;
    llama_model& m = res.q.model;
    const std::optional<hadamard_transform> none;
    std::optional<model_gradients> grads;
    if (c.glas) {
        const auto t0 = std::chrono::steady_clock::now();
        gradient_options go;
        go.window = c.calib_window;
        go.max_windows = c.calib_windows;
        grads = calibration_gradients(fp32, calib_tokens, go);
        res.gradient_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    detail::expert_bit_count experts;
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
        const auto t0 = std::chrono::steady_clock::now();
        const layer_calibration cal = capture_layer_hessians(m, l, calib_tokens, false, c.calib_window, c.calib_windows);
        auto hessian_of = [&](const std::string& key, Eigen::Index n, bool& calibrated) {
            const auto it = cal.hessians.find(key);
            calibrated = it != cal.hessians.end();
            return calibrated ? it->second.matrix() : matrix_d(matrix_d::Identity(n, n));
        };
        auto omega_of = [&](const matrix_f& w, const matrix_d& h, const matrix_d& g, const vector_f& row_weight) {
            return glas_error_weights(w, gptq_u_diagonal(h, c.damp), g, c.glas_kappa, row_weight);
        };
        auto packed_binary = [&](binary_solution s) {
            const matrix_i8 t = detail::binary_codes_rounded(s);
            return detail::packed_record(pack<binary1>(t, s.alpha, s.mean));
        };
        // attention (and dense FFN) linears
        for (const linear_id& id : m.block_linears(l)) {
            if (id.expert >= 0) continue;
            const matrix_f w = detail::dense_weight_of(m.linear(id), where);
            bool cal_ok = false;
            const matrix_d h = hessian_of(id.name(), w.cols(), cal_ok);
            std::optional<matrix_d> om;
            if (grads) om = omega_of(w, h, grads->weight(id), vector_f());
            linear_record rec = packed_binary(mobie_binarize(w, h, om ? &*om : nullptr, c.damp, c.arb_iters));
            m.set_linear(id, build_linear(res.q.spec, rec, none));
            res.q.records[id.name()] = std::move(rec);
        }
        double ns_err = 0, ns_ref = 0;
        const auto& blk = m.blocks[static_cast<std::size_t>(l)];
        if (blk.is_moe()) {
            const int E = static_cast<int>(blk.experts.size());
            // NGES directions per expert and input kind (w1/w3 share the normed hidden state; w2 its SwiGLU)
            std::map<std::string, Eigen::MatrixXd> q_cache;
            for (linear_slot slot : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) {
                std::vector<matrix_f> ws;
                std::vector<matrix_d> hs;
                std::vector<bool> calibrated;
                std::vector<Eigen::MatrixXd> qs;
                for (int e = 0; e < E; ++e) {
                    const linear_id id{l, slot, e};
                    ws.push_back(detail::dense_weight_of(m.linear(id), where));
                    bool ok = false;
                    hs.push_back(hessian_of(id.name(), ws.back().cols(), ok));
                    calibrated.push_back(ok);
                    const Eigen::Index n = ws.back().cols();
                    const Eigen::Index k = static_cast<Eigen::Index>(std::ceil(c.nges_rank * static_cast<double>(n)));
                    const std::string qkey = std::to_string(e) + (slot == linear_slot::w2 ? ".down" : ".up");
                    if (ok && k > 0) {
                        auto it = q_cache.find(qkey);
                        if (it == q_cache.end()) it = q_cache.emplace(qkey, detail::top_eigenvectors(hs.back(), k)).first;
                        qs.push_back(it->second);
                    } else {
                        qs.emplace_back();
                    }
                    if (c.nges && qs.back().size()) {
                        const double scale = c.nges_eta * hs.back().diagonal().mean();
                        hs.back() += scale * (qs.back() * qs.back().transpose());
                    }
                }
                const Eigen::Index rows = ws[0].rows(), cols = ws[0].cols();
                std::optional<cejd_factors> dec;
                Eigen::Index k = 0;
                if (c.cejd) {
                    k = std::max<Eigen::Index>(1, static_cast<Eigen::Index>(std::llround(c.cejd_rank * static_cast<double>(rows))));
                    k = std::min(k, std::min(rows, static_cast<Eigen::Index>(E) * cols));
                    dec = cejd_decompose(ws, k);
                }
                vector_f row_weight;
                std::shared_ptr<const expert_tensor_map> shared_basis; // G, held once by every expert's record and operator
                if (dec) {
                    row_weight = dec->basis.colwise().squaredNorm().transpose();
                    shared_basis = std::make_shared<const expert_tensor_map>(expert_tensor_map{{"basis", dec->basis}});
                }
                for (int e = 0; e < E; ++e) {
                    const linear_id id{l, slot, e};
                    const matrix_f& target = dec ? dec->factors[static_cast<std::size_t>(e)] : ws[static_cast<std::size_t>(e)];
                    std::optional<matrix_d> om;
                    if (grads) {
                        const matrix_d& gw = grads->weight(id);
                        const matrix_d g = dec ? matrix_d(dec->basis.cast<double>().transpose() * gw) : gw;
                        om = omega_of(target, hs[static_cast<std::size_t>(e)], g, row_weight);
                    }
                    binary_solution s = mobie_binarize(target, hs[static_cast<std::size_t>(e)], om ? &*om : nullptr, c.damp, c.arb_iters);
                    linear_record rec;
                    Eigen::MatrixXd w_hat;
                    if (dec) {
                        const matrix_i8 t = detail::binary_codes_rounded(s);
                        w_hat = dec->basis.cast<double>() * detail::binary_dequantize(t, s.mean, s.alpha);
                        rec = detail::cejd_record(pack<binary1>(t, s.alpha, s.mean), rows, shared_basis,
                                                  "layers." + std::to_string(l) + ".experts." + slot_name(slot) + ".cejd", E);
                    } else {
                        const matrix_i8 t = detail::binary_codes_rounded(s);
                        w_hat = detail::binary_dequantize(t, s.mean, s.alpha);
                        rec = detail::packed_record(pack<binary1>(t, s.alpha, s.mean));
                    }
                    const Eigen::MatrixXd& qk = qs[static_cast<std::size_t>(e)];
                    if (qk.size()) {
                        const Eigen::MatrixXd wd = ws[static_cast<std::size_t>(e)].cast<double>();
                        ns_err += ((wd - w_hat) * qk).squaredNorm();
                        ns_ref += (wd * qk).squaredNorm();
                    }
                    detail::install_expert_record(res, m, id, std::move(rec), experts);
                }
            }
        }
        res.null_space_error.push_back(ns_ref > 0 ? std::sqrt(ns_err / ns_ref) : std::numeric_limits<double>::quiet_NaN());
        detail::close_expert_block(res, cal.routed, l, t0, "binarized", c.name, c.progress);
    }
    detail::set_expert_bits(res, m, experts);
    return res;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template mobie_result quantize_mobie<>(const llama_model&, std::span<const int>, const mobie_config&);
#endif

LOWBIT_END_NAMESPACE
