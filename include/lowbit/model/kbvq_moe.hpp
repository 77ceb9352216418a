#pragma once
/// \file model/kbvq_moe.hpp
/// KBVQ-MoE (docs/sources.md §5, a RECONSTRUCTION: the paper's equations were not available) as a
/// pipeline on a routed-expert `llama_model` (Qwen3-MoE). Per MoE layer and projection type (w1,
/// w2, w3), every expert weight W_e `[m x n]` becomes
///
///     Ŵ_e = diag(γ_e)·(C_e·Bₛ + R̂_e) + β_e·u_eᵀ
///
/// with three switchable components:
/// - **IDRE** (`kbvq_config::idre`): KLT-guided joint SVD of the row-stacked experts in the metric
///   of the layer's input covariance Σ (the sum of the experts' routed-token Hessians) —
///   `joint_svd_klt` (lowrank.hpp), then `idre_decompose` rounds the shared input basis Bₛ `[r x n]`
///   to fp16, refits each expert's coefficients C_e `[m x r]` to it in the Σ-metric and rounds them
///   to fp16. The residual R_e = W_e − C_e·Bₛ is what gets quantized. Off: R_e = W_e (no C, no Bₛ).
/// - **Residual quantizer** (`kbvq_config::residual`): `vq` — one codebook of K = 2^index_bits
///   codewords of dimension d per layer and projection type, *shared by the experts*, from
///   Hessian-diagonal-weighted k-means (`weighted_kmeans`, vq.hpp) over the experts' row-normalised
///   d-vectors (per-row fp16 scale s_i = RMS of the residual row), codewords fp16
///   (`shared_codebook_vq`); `scalar` — per-row asymmetric min–max round-to-nearest at
///   `scalar_bits` (fp16 α, μ), the equal-bits scalar ablation; `none` — the residual is dropped
///   (IDRE alone; requires `idre`).
/// - **BCOS** (`kbvq_config::bcos`): per output channel, the least-squares affine correction of the
///   expert's output on its routed calibration tokens (`fit_bcos`). The model format has no bias on
///   expert linears, so the intercept is carried by the input's mean direction u = μ_x/‖μ_x‖²
///   (E[uᵀx] = 1 on the calibration tokens): y ≈ γ ⊙ ŷ + β·(uᵀx), (γ, β) the per-channel least
///   squares (never worse than γ = 1, β = 0 on the calibration tokens). γ is folded into C_e's rows
///   and the residual's row scales (re-rounded to fp16, no extra bits); β and u are stored in fp16.
///   Off: γ = 1, β = 0.
/// Attention linears (wq, wk, wv, wo) are quantized exactly as `quantize_moe`'s plain GPTQ rows:
/// per-row asymmetric `attention_bits` grid, GPTQ (damping, activation order) on Hessians captured
/// on the partially quantized model, stored in the packed int4 container (counted at 4 bits + 32
/// per row) — so a KBVQ row differs from the `gptq` row at the same width only in its experts.
/// Router, norms, embedding and classifier stay FP32 (not counted, as everywhere in lowbit).
///
/// Calibration: layer by layer on the partially quantized model — the Hessians of every linear
/// (`capture_layer_hessians`, plain routed-token Hessians) and the routed inputs of every expert
/// (`capture_expert_inputs`) come from the model whose blocks < l are already quantized, before
/// block l is touched.
///
/// Storage and bits (everything stored is counted; `kbvq_expert_bits`): per expert linear
/// `[m x n]` of a layer with E experts: IDRE 16·m·r (C_e) + 16·r·n/E (its share of Bₛ); VQ
/// (m·n/d)·index_bits (codes) + 16·m (row scales) + 16·K·d/E (its share of the codebook); scalar
/// m·n·b + 32·m; BCOS 16·m (β) + 16·n (u). With the VQ residual every expert linear is a "kbvq_vq"
/// record (model/moe_experts.hpp) storing exactly the counted pieces — indices packed at index_bits,
/// fp16 row scales, C_e, β, u, and a reference to the layer's Bₛ and codebook, which the file stores
/// once per layer and projection type — and runs as `kbvq_expert_linear` (Bₛx per call, C_e, a
/// lookup-table or row-decoding VQ GEMV, β·(uᵀx)) with no dense copy of Ŵ_e. The scalar-residual and
/// no-residual ablations are still *stored and run as a dense FP32 record* of Ŵ_e (a dequantized
/// fallback, as MXFP4): `linear_record::dense_bits` carries the counted bits, the file holds 32 bits
/// per weight. Ŵ_e is assembled in double from exactly the fp16 / integer pieces the counted format
/// would store (the error figure `expert_output_error` uses it for every residual). Saving and
/// reloading (`save_quantized_model` /
/// `load_quantized_model`) is bit-identical.
///
/// Threads: none. Deterministic for a seed (`kbvq_config::seed`: k-means++ seeding).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/moe_experts.hpp>
#include <lowbit/model/moe_recipes.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/types.hpp>
#include <lowbit/vq.hpp>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------

/// IDRE with fp16 storage: `W_e ≈ coefficients[e] · basis`.
struct idre_factors {
    matrix_f basis;                     ///< (r, n) shared Bₛ, every entry fp16-exact
    std::vector<matrix_f> coefficients; ///< per expert (m, r), fp16-exact, refitted to the fp16 Bₛ
};

/// IDRE (RECON §5.2): `joint_svd_klt(experts, covariance, rank, damping)`, Bₛ rounded to fp16, then
/// every expert's coefficients refitted to the rounded basis in the damped Σ-metric,
/// C_e = W_e Σ_d Bₛᵀ (Bₛ Σ_d Bₛᵀ)⁻¹ (Σ_d = Σ + damping·mean(diag Σ)·I, in double), and rounded to
/// fp16. rank = n reproduces every expert up to fp16 rounding of C_e (relative ~1e-3 times the
/// conditioning of Bₛ). \throws as joint_svd_klt (invalid_argument: empty list or rank outside
/// [1, min(E·m, n)]; shape_error; numeric_error: singular Σ without damping), numeric_error if
/// Bₛ Σ_d Bₛᵀ is singular. Complexity: one SVD of `[E·m x n]` + O(n³ + E·(m n² + m n r)).
template <class = void>
[[nodiscard]] idre_factors idre_decompose(std::span<const matrix_f> experts, const Eigen::Ref<const matrix_d>& covariance,
                                                 Eigen::Index rank, double damping) {
    const joint_input_basis j = joint_svd_klt(experts, covariance, rank, damping);
    idre_factors out;
    out.basis = j.basis;
    for (Eigen::Index i = 0; i < out.basis.size(); ++i) out.basis.data()[i] = detail::round_fp16(out.basis.data()[i]);
    Eigen::MatrixXd sd = 0.5 * (covariance + covariance.transpose());
    sd.diagonal().array() += damping * sd.diagonal().mean();
    const Eigen::MatrixXd b = out.basis.cast<double>();
    const Eigen::MatrixXd sbt = sd * b.transpose(); // [n x r]
    const Eigen::LDLT<Eigen::MatrixXd> gram(b * sbt);
    detail::require<numeric_error>(gram.info() == Eigen::Success && gram.isPositive() && gram.vectorD().minCoeff() > 0,
                                   "idre_decompose", "the shared basis is singular in the covariance metric");
    for (const matrix_f& w : experts) {
        matrix_f c = gram.solve((w.cast<double>() * sbt).transpose()).transpose().cast<float>();
        for (Eigen::Index i = 0; i < c.size(); ++i) c.data()[i] = detail::round_fp16(c.data()[i]);
        out.coefficients.push_back(std::move(c));
    }
    return out;
}

/// Vector quantization of several same-shape matrices with one shared codebook.
struct shared_vq {
    matrix_f codebook;                             ///< (K, d), every entry fp16-exact
    std::vector<std::vector<std::uint32_t>> codes; ///< per matrix, m·n/d codes in `to_vectors` order
    std::vector<vector_f> row_scale;               ///< per matrix (m) s_i, fp16-exact (0 for a zero row)

    /// The normalised decoded matrix `[rows x cols]` of matrix `e` (codewords only, no row scale).
    /// \throws as vq_decode / from_vectors.
    [[nodiscard]] matrix_f decode_normalised(std::size_t e, Eigen::Index rows, Eigen::Index cols) const {
        return from_vectors(vq_decode(codes.at(e), codebook), rows, cols);
    }
};

/// Shared-codebook VQ (KBVQ's residual quantizer, GPTVQ-style weights): every row i of matrix e is
/// normalised by s_i = fp16(RMS of the row); the d-vectors of all matrices (`to_vectors`) are
/// clustered together by `weighted_kmeans` with K = 2^index_bits and per-coordinate weights
/// h_e,j·s_i² (h_e = `importance[e]`, e.g. the Hessian diagonal; so the weighted distance is the
/// original-scale error); the centroids are rounded to fp16 and every vector is re-encoded to its
/// nearest fp16 codeword (`vq_encode`, same weights; ties to the lowest index). Decoded row i =
/// s_i · codewords. `importance` empty = all ones.
/// \throws invalid_argument (empty list, index_bits outside [1, 16], iterations < 0, K larger than
/// the number of vectors, negative importance), shape_error (shapes differ, cols not a multiple of
/// dim, importance length ≠ cols), numeric_error (NaN/Inf).
/// Complexity: O((iterations + 2)·N·K·d) for N = Σ m·n/d vectors.
template <class = void>
[[nodiscard]] shared_vq shared_codebook_vq(std::span<const matrix_f> mats, std::span<const vector_f> importance,
                                                  Eigen::Index dim, int index_bits, int iterations, std::uint64_t seed) {
    constexpr const char* where = "shared_codebook_vq";
    detail::require(!mats.empty(), where, "empty matrix list");
    detail::require(index_bits >= 1 && index_bits <= 16, where, "index_bits must lie in [1, 16]");
    detail::require(importance.empty() || importance.size() == mats.size(), where,
                    "importance must be empty or one vector per matrix");
    const Eigen::Index m = mats[0].rows(), n = mats[0].cols();
    for (const matrix_f& w : mats) {
        detail::require_dim(w.rows(), m, where, "matrix rows (all matrices must have the same shape)");
        detail::require_dim(w.cols(), n, where, "matrix cols (all matrices must have the same shape)");
        detail::require_finite(w, where, "matrix");
    }
    const Eigen::Index per = (dim >= 1 && n % dim == 0) ? m * n / dim : 0;
    const auto ne = static_cast<Eigen::Index>(mats.size());
    matrix_f points, weights;
    shared_vq out;
    for (Eigen::Index e = 0; e < ne; ++e) {
        const matrix_f& w = mats[static_cast<std::size_t>(e)];
        vector_f s(m);
        matrix_f normalised(m, n);
        for (Eigen::Index i = 0; i < m; ++i) {
            s(i) = detail::round_fp16(static_cast<float>(std::sqrt(w.row(i).cast<double>().squaredNorm() / static_cast<double>(n))));
            if (s(i) > 0) normalised.row(i) = w.row(i) / s(i);
            else normalised.row(i).setZero();
        }
        const matrix_f pts = to_vectors(normalised, dim); // throws for a bad dim
        const vector_f h = importance.empty() ? vector_f(vector_f::Ones(n)) : importance[static_cast<std::size_t>(e)];
        detail::require_dim(h.size(), n, where, "importance length (must equal cols)");
        matrix_f wts = column_importance_weights(h, m, dim);
        for (Eigen::Index i = 0; i < m; ++i) wts.middleRows(i * (n / dim), n / dim) *= s(i) * s(i);
        if (e == 0) {
            points.resize(ne * per, dim);
            weights.resize(ne * per, dim);
        }
        points.middleRows(e * per, per) = pts;
        weights.middleRows(e * per, per) = wts;
        out.row_scale.push_back(std::move(s));
    }
    kmeans_options ko;
    ko.codebook_size = Eigen::Index{1} << index_bits;
    ko.iterations = iterations;
    ko.seed = seed;
    out.codebook = weighted_kmeans(points, weights, ko).centroids;
    for (Eigen::Index i = 0; i < out.codebook.size(); ++i) out.codebook.data()[i] = detail::round_fp16(out.codebook.data()[i]);
    const std::vector<std::uint32_t> all = vq_encode(points, out.codebook, weights);
    for (Eigen::Index e = 0; e < ne; ++e)
        out.codes.emplace_back(all.begin() + e * per, all.begin() + (e + 1) * per);
    return out;
}

/// BCOS correction of one linear: corrected output `γ ⊙ ŷ + β·(uᵀx)`.
struct bcos_correction {
    vector_f gamma;     ///< (m) channel gains (folded into the row scales, then rounded to fp16)
    vector_f beta;      ///< (m) channel offsets, fp16-exact
    vector_f direction; ///< (n) u = μ_x/‖μ_x‖², fp16-exact (zero if the mean input is zero)

    /// Corrected outputs `[T x m]` from inputs x `[T x n]` and uncorrected outputs ŷ `[T x m]`.
    /// \throws shape_error on a size mismatch. O(T·(m + n)).
    [[nodiscard]] matrix_f apply(const cref_matrix_f& x, const cref_matrix_f& y_hat) const {
        detail::require_dim(y_hat.cols(), gamma.size(), "bcos_correction::apply", "y_hat cols (channels)");
        detail::require_dim(x.cols(), direction.size(), "bcos_correction::apply", "x cols (inputs)");
        detail::require_dim(x.rows(), y_hat.rows(), "bcos_correction::apply", "x rows (tokens)");
        const vector_f z = x * direction;
        return (y_hat * gamma.asDiagonal()) + z * beta.transpose();
    }
};

/// BCOS fit (RECON §5.2, with the intercept carried by the mean input direction, see the file
/// comment): u = fp16(μ_x/‖μ_x‖²), z = x u; for every output channel k, (γ_k, β_k) minimise
/// Σ_t (y_tk − γ ŷ_tk − β z_t)² with y = x Wᵀ, ŷ = x Ŵᵀ (2×2 normal equations in double; if they
/// are singular, β = 0 and γ = Σyŷ/Σŷ², or γ = 1 when ŷ ≡ 0); β is rounded to fp16.
/// \throws shape_error (empty x, sizes disagree), numeric_error (NaN/Inf). O(T·m·n).
template <class = void>
[[nodiscard]] bcos_correction fit_bcos(const cref_matrix_f& x, const cref_matrix_f& w, const cref_matrix_f& w_hat) {
    constexpr const char* where = "fit_bcos";
    detail::require_nonempty(x, where, "x");
    detail::require_dim(w.cols(), x.cols(), where, "w cols (must equal x cols)");
    detail::require_dim(w_hat.rows(), w.rows(), where, "w_hat rows");
    detail::require_dim(w_hat.cols(), w.cols(), where, "w_hat cols");
    detail::require_finite(x, where, "x");
    detail::require_finite(w_hat, where, "w_hat");
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::VectorXd mu = xd.colwise().mean().transpose();
    const double mu2 = mu.squaredNorm();
    bcos_correction out{vector_f(w.rows()), vector_f(w.rows()), vector_f::Zero(x.cols())};
    if (mu2 > 0)
        for (Eigen::Index j = 0; j < mu.size(); ++j) out.direction(j) = detail::round_fp16(static_cast<float>(mu(j) / mu2));
    const Eigen::VectorXd z = xd * out.direction.cast<double>();
    const Eigen::MatrixXd y = xd * w.cast<double>().transpose(), yh = xd * w_hat.cast<double>().transpose();
    const double c = z.squaredNorm();
    for (Eigen::Index k = 0; k < w.rows(); ++k) {
        const double a = yh.col(k).squaredNorm(), b = yh.col(k).dot(z), p = y.col(k).dot(yh.col(k)), q = y.col(k).dot(z);
        const double det = a * c - b * b;
        double g = 1, be = 0;
        if (det > 1e-12 * a * c) {
            g = (p * c - q * b) / det;
            be = (a * q - b * p) / det;
        } else if (a > 0) {
            g = p / a;
        }
        out.gamma(k) = static_cast<float>(g);
        out.beta(k) = detail::round_fp16(static_cast<float>(be));
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

/// Residual quantizer of `quantize_kbvq_moe`.
enum class kbvq_residual {
    vq,     ///< shared-codebook vector quantization (`shared_codebook_vq`)
    scalar, ///< per-row asymmetric round-to-nearest at `scalar_bits`
    none    ///< dropped (IDRE alone)
};

/// Configuration of `quantize_kbvq_moe`. All components on (IDRE + VQ + BCOS) is KBVQ-MoE; see
/// `kbvq_preset` for the ~2 and ~3 bits-per-weight settings.
struct kbvq_config {
    std::string name = "kbvq-w2";          ///< recipe name saved with the model
    bool idre = true;                      ///< shared KLT-guided input basis (off: the residual is W_e)
    int idre_rank = 4;                     ///< r ≥ 1 shared directions per layer and projection type (≤ min(E·m, n))
    double idre_damping = 0.01;            ///< relative damping of Σ (≥ 0)
    kbvq_residual residual = kbvq_residual::vq; ///< residual quantizer
    int vq_dim = 4;                        ///< d: vector dimension (must divide every expert input width)
    int vq_index_bits = 8;                 ///< K = 2^index_bits codewords per layer and projection type, in [1, 16]
    int vq_iterations = 10;                ///< Lloyd iterations ≥ 0
    int scalar_bits = 2;                   ///< bits of the scalar residual grid, in [2, 8]
    bool bcos = true;                      ///< least-squares affine output correction, folded
    int attention_bits = 2;                ///< GPTQ grid bits of the attention linears, in [2, 4] (int4 container)
    double damp = 0.01;                    ///< GPTQ damping λ (attention)
    std::uint64_t seed = 0;                ///< k-means++ seed (mixed with layer and projection type)
    int calib_window = -1;                 ///< calibration window (tokens; −1: the perplexity protocol's)
    int calib_windows = -1;                ///< at most this many calibration windows (< 0: all)
    /// Progress callback, one line per block.
    std::function<void(const std::string&)> progress;
};

/// The ~`bits` setting (2 or 3): bits 2 → d = 4, K = 256 (2 index bits per weight), scalar ablation
/// 2 bits, attention GPTQ W2; bits 3 → d = 2, K = 64 (3 index bits per weight), scalar 3 bits,
/// attention GPTQ W3. IDRE rank 4, BCOS on. Name "kbvq-w<bits>". \throws invalid_argument otherwise.
[[nodiscard]] inline kbvq_config kbvq_preset(int bits) {
    detail::require(bits == 2 || bits == 3, "kbvq_preset", "bits must be 2 or 3");
    kbvq_config c;
    c.name = "kbvq-w" + std::to_string(bits);
    c.vq_dim = bits == 2 ? 4 : 2;
    c.vq_index_bits = bits == 2 ? 8 : 6;
    c.scalar_bits = bits;
    c.attention_bits = bits;
    return c;
}

/// Counted bits of one expert linear `[m x n]` of a layer with `experts` experts under `c` (see the
/// file comment): IDRE 16·m·r + 16·r·n/E; VQ (m·n/d)·index_bits + 16·m + 16·2^index_bits·d/E;
/// scalar m·n·b + 32·m; BCOS 16·(m + n). O(1).
[[nodiscard]] inline double kbvq_expert_bits(Eigen::Index m, Eigen::Index n, int experts, const kbvq_config& c) {
    const double md = static_cast<double>(m), nd = static_cast<double>(n), e = static_cast<double>(experts);
    double bits = 0;
    if (c.idre) bits += 16.0 * md * c.idre_rank + 16.0 * c.idre_rank * nd / e;
    if (c.residual == kbvq_residual::vq)
        bits += md * nd / c.vq_dim * c.vq_index_bits + 16.0 * md + 16.0 * std::ldexp(1.0, c.vq_index_bits) * c.vq_dim / e;
    else if (c.residual == kbvq_residual::scalar)
        bits += md * nd * c.scalar_bits + 32.0 * md;
    if (c.bcos) bits += 16.0 * (md + nd);
    return bits;
}

/// What `quantize_kbvq_moe` measured (besides `moe_expert_result`'s model, bits and routing counts).
struct kbvq_result : moe_expert_result {
    /// Per block (NaN for dense blocks): Σ‖X_e(W_e − Ŵ_e)ᵀ‖²_F / Σ‖X_e W_eᵀ‖²_F over the expert linears
    /// on their routed calibration inputs X_e (relative output error of the experts).
    std::vector<double> expert_output_error;
};

/// The `recipe` a `quantize_kbvq_moe` model is saved and rebuilt with (int4 attention records,
/// "kbvq_vq" or dense-fallback expert records, FP32 activations).
[[nodiscard]] inline recipe kbvq_recipe(const kbvq_config& c) {
    recipe r;
    r.name = c.name;
    const char* res = c.residual == kbvq_residual::vq ? "VQ" : c.residual == kbvq_residual::scalar ? "scalar RTN" : "no";
    r.description = std::string("KBVQ-MoE experts (") + (c.idre ? "IDRE + " : "") + res + " residual" +
                    (c.bcos ? " + BCOS" : "") + "), GPTQ W" + std::to_string(c.attention_bits) + " attention, int4 container";
    r.weights = weight_scheme::int4;
    r.solver = solver_kind::gptq;
    r.damp = c.damp;
    r.act_order = true;
    return r;
}

/// Routed calibration inputs of every expert of block `layer` (rows in window and token order):
/// `[e][0]` the input of w1 and w3 (normed hidden state), `[e][1]` the input of w2 (its SwiGLU
/// activation); empty matrices for an expert no token reaches and for a dense block. Same windows
/// and model state as `capture_layer_hessians`. \throws as capture_linear_inputs. Memory: the
/// routed rows, top_k·T·(dim + moe_hidden) floats.
template <class = void>
[[nodiscard]] std::vector<std::array<matrix_f, 2>> capture_expert_inputs(const llama_model& m, int layer,
                                                                               std::span<const int> tokens, int window = -1,
                                                                               int max_windows = -1) {
    const auto& b = m.blocks.at(static_cast<std::size_t>(layer));
    std::vector<std::array<std::vector<matrix_f>, 2>> parts(b.experts.size());
    forward_hooks hooks;
    hooks.on_expert_input = [&](int l, int e, linear_slot s, const matrix_f& x, const vector_f&, std::span<const Eigen::Index>) {
        if (l != layer || s == linear_slot::w3) return; // w3 sees w1's input
        parts[static_cast<std::size_t>(e)][s == linear_slot::w2 ? 1 : 0].push_back(x);
    };
    if (b.is_moe()) capture_linear_inputs(m, tokens, hooks, window, max_windows);
    std::vector<std::array<matrix_f, 2>> out(b.experts.size());
    for (std::size_t e = 0; e < parts.size(); ++e)
        for (int k = 0; k < 2; ++k) {
            const auto& ps = parts[e][static_cast<std::size_t>(k)];
            Eigen::Index rows = 0;
            for (const auto& p : ps) rows += p.rows();
            if (!rows) continue;
            matrix_f& x = out[e][static_cast<std::size_t>(k)];
            x.resize(rows, ps.front().cols());
            Eigen::Index at = 0;
            for (const auto& p : ps) {
                x.middleRows(at, p.rows()) = p;
                at += p.rows();
            }
        }
    return out;
}

namespace detail {

/// Checks a `kbvq_config` against a model. \throws invalid_argument / shape_error.
inline void check_kbvq_config(const llama_model& m, const kbvq_config& c, const char* where) {
    require(c.attention_bits >= 2 && c.attention_bits <= 4, where, "attention_bits must lie in [2, 4] (the int4 container)");
    require(!c.idre || c.idre_rank >= 1, where, "idre_rank must be >= 1");
    require(c.idre_damping >= 0 && std::isfinite(c.idre_damping), where, "idre_damping must be finite and >= 0");
    require(c.residual != kbvq_residual::none || c.idre, where, "residual 'none' needs idre (the expert would be zero)");
    require(c.vq_dim >= 1, where, "vq_dim must be >= 1");
    require(c.vq_index_bits >= 1 && c.vq_index_bits <= 16, where, "vq_index_bits must lie in [1, 16]");
    require(c.vq_iterations >= 0, where, "vq_iterations must be >= 0");
    require(c.scalar_bits >= 2 && c.scalar_bits <= 8, where, "scalar_bits must lie in [2, 8]");
    require(c.damp >= 0 && std::isfinite(c.damp), where, "damp must be finite and >= 0");
    if (c.residual == kbvq_residual::vq && m.config.n_experts > 0)
        for (int width : {m.config.dim, m.config.moe_hidden_dim})
            require<shape_error>(width % c.vq_dim == 0, where,
                                 "vq_dim (" + std::to_string(c.vq_dim) + ") must divide the expert input width " + std::to_string(width));
}

/// The stored pieces of one expert linear: Ŵ = C·B + diag(s)·Q + μ1ᵀ + β uᵀ.
struct kbvq_pieces {
    matrix_f coeff;  ///< (m, r) C, fp16-exact, or empty
    vector_f scale;  ///< (m) residual row scale s (VQ) or α (scalar), fp16-exact, or empty (no residual)
    vector_f offset; ///< (m) μ (scalar), fp16-exact, or empty
    matrix_f base;   ///< (m, n) Q: normalised codewords (VQ) or integer codes (scalar)
    vector_f beta;   ///< (m) BCOS β, fp16-exact, or empty
    vector_f dir;    ///< (n) BCOS u, fp16-exact, or empty
    std::vector<std::uint32_t> vq_codes; ///< (m·n/d) VQ indices of Q in `to_vectors` order (VQ), or empty

    /// Ŵ in double (basis: Bₛ `[r x n]`, ignored without coeff).
    template <class = void> // compiled only where called (docs/compile_time.md)
    [[nodiscard]] Eigen::MatrixXd dense(const matrix_f& basis, Eigen::Index m, Eigen::Index n) const {
        Eigen::MatrixXd w = Eigen::MatrixXd::Zero(m, n);
        if (coeff.size()) w += coeff.cast<double>() * basis.cast<double>();
        if (scale.size()) w += scale.cast<double>().asDiagonal() * base.cast<double>();
        if (offset.size()) w.colwise() += offset.cast<double>();
        if (beta.size()) w += beta.cast<double>() * dir.cast<double>().transpose();
        return w;
    }

    /// Folds BCOS: γ into C's rows, s and μ (re-rounded to fp16); stores β and u.
    void fold(const bcos_correction& b) {
        auto scale_rows = [&](auto& a) {
            for (Eigen::Index i = 0; i < a.rows(); ++i)
                for (Eigen::Index j = 0; j < a.cols(); ++j) a(i, j) = round_fp16(b.gamma(i) * a(i, j));
        };
        scale_rows(coeff);
        scale_rows(scale);
        scale_rows(offset);
        beta = b.beta;
        dir = b.direction;
    }
};

/// The "kbvq_vq" record (moe_experts.hpp) of one expert with a VQ residual: codes `p.vq_codes` packed
/// at `index_bits`, row scales, own C, β, u, and the group `shared` ({"codebook", "basis"}) held by
/// `experts` records under `key`.
inline linear_record kbvq_vq_record(const kbvq_pieces& p, Eigen::Index rows, Eigen::Index cols, int index_bits,
                                    std::shared_ptr<const expert_tensor_map> shared, std::string key, int experts) {
    linear_record rec;
    rec.format = "kbvq_vq";
    rec.rows = rows;
    rec.cols = cols;
    rec.codes = pack_vq_indices(p.vq_codes, index_bits);
    rec.scale = p.scale;
    if (p.coeff.size()) rec.expert.own.emplace("coeff", p.coeff);
    if (p.beta.size()) {
        rec.expert.own.emplace("beta", matrix_f(p.beta));
        rec.expert.own.emplace("direction", matrix_f(p.dir));
    }
    rec.expert.shared_key = std::move(key);
    rec.expert.shared = std::move(shared);
    rec.expert.shared_by = experts;
    return rec;
}

/// Per-row asymmetric b-bit round to nearest of `r` as pieces (codes t ∈ [−2^(b−1), 2^(b−1) − 1],
/// fp16 α, μ: value μ + α·t).
template <class = void>
void scalar_residual(const matrix_f& r, int bits, kbvq_pieces& p) {
    const rtn_quantizer rq{bits, int_mode::asymmetric};
    const auto prm = rq.fit(r);
    const matrix_f q = round_columns(rq, prm, r);
    const float half = static_cast<float>(1 << (bits - 1));
    p.scale = prm.scale;
    p.offset = prm.scale.array() * (half - prm.zero.array());
    p.base = affine_codes(q, p.offset, p.scale, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, false).cast<float>();
    round_fp16(p.scale);
    round_fp16(p.offset);
}

} // namespace detail

/// Quantizes every block linear of `fp32` with KBVQ-MoE (see the file comment), block by block on
/// the partially quantized model: attention linears by GPTQ at `attention_bits` (int4 records),
/// experts per projection type by IDRE → residual quantizer → BCOS ("kbvq_vq" records; the scalar and
/// no-residual ablations dense fallback records with counted bits). An expert no calibration token reaches gets the mean diagonal of the others as
/// importance (identity Σ if none is reached) and no BCOS correction (γ = 1, β = 0; its β and u
/// are still counted). \throws shape_error (no calibration token, vq_dim not dividing an expert
/// width), invalid_argument (non-dense input, options out of range, idre_rank > min(E·m, n), K
/// larger than the number of d-vectors of a projection type), numeric_error (singular Σ or
/// Hessian). Complexity per block: two forward passes over the calibration windows, GPTQ per
/// attention linear O(n³ + m n²), per projection type one SVD of `[E·m x n]` and k-means
/// O((iterations + 2)·E·m·n·K), BCOS O(T·m·n) per expert.
template <class = void>
[[nodiscard]] kbvq_result quantize_kbvq_moe(const llama_model& fp32, std::span<const int> calib_tokens,
                                                   const kbvq_config& c) {
    constexpr const char* where = "quantize_kbvq_moe";
    detail::require<shape_error>(!calib_tokens.empty(), where, "KBVQ-MoE needs calibration tokens");
    detail::check_kbvq_config(fp32, c, where);
    kbvq_result res;
    res.q.spec = kbvq_recipe(c);
    res.q.model = fp32;
    llama_model& m = res.q.model;
    const std::optional<hadamard_transform> none;
    moe_quant_config attention;
    attention.bits = c.attention_bits;
    attention.damp = c.damp;
    attention.act_order = true;
    detail::expert_bit_count experts;
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
        const auto t0 = std::chrono::steady_clock::now();
        const layer_calibration cal = capture_layer_hessians(m, l, calib_tokens, false, c.calib_window, c.calib_windows);
        const auto inputs = capture_expert_inputs(m, l, calib_tokens, c.calib_window, c.calib_windows);
        for (const linear_id& id : m.block_linears(l)) {
            if (id.expert >= 0) continue;
            const matrix_f w = detail::dense_weight_of(m.linear(id), where);
            const auto it = cal.hessians.find(id.name());
            const matrix_d h = it != cal.hessians.end() ? it->second.matrix() : matrix_d(matrix_d::Identity(w.cols(), w.cols()));
            linear_record rec = detail::quantize_grid_record(w, &h, attention);
            m.set_linear(id, build_linear(res.q.spec, rec, none));
            res.q.records[id.name()] = std::move(rec);
        }
        double err = 0, ref = 0;
        const auto& blk = m.blocks[static_cast<std::size_t>(l)];
        if (blk.is_moe()) {
            const int E = static_cast<int>(blk.experts.size());
            for (linear_slot slot : {linear_slot::w1, linear_slot::w2, linear_slot::w3}) {
                std::vector<matrix_f> ws;
                std::vector<matrix_d> hs(static_cast<std::size_t>(E));
                std::vector<bool> calibrated(static_cast<std::size_t>(E), false);
                for (int e = 0; e < E; ++e) {
                    const linear_id id{l, slot, e};
                    ws.push_back(detail::dense_weight_of(m.linear(id), where));
                    const auto it = cal.hessians.find(id.name());
                    if (it != cal.hessians.end()) {
                        hs[static_cast<std::size_t>(e)] = it->second.matrix();
                        calibrated[static_cast<std::size_t>(e)] = true;
                    }
                }
                const Eigen::Index rows = ws[0].rows(), cols = ws[0].cols();
                matrix_d sigma = matrix_d::Zero(cols, cols);
                for (int e = 0; e < E; ++e)
                    if (calibrated[static_cast<std::size_t>(e)]) sigma += hs[static_cast<std::size_t>(e)];
                if (!(sigma.trace() > 0)) sigma = matrix_d::Identity(cols, cols);
                const double mean_diag = sigma.diagonal().mean() / E;
                std::vector<vector_f> importance;
                for (int e = 0; e < E; ++e)
                    importance.push_back(calibrated[static_cast<std::size_t>(e)]
                                             ? vector_f(hs[static_cast<std::size_t>(e)].diagonal().cast<float>())
                                             : vector_f(vector_f::Constant(cols, static_cast<float>(mean_diag))));
                std::vector<detail::kbvq_pieces> pieces(static_cast<std::size_t>(E));
                std::optional<idre_factors> dec;
                std::vector<matrix_f> residuals = ws;
                std::shared_ptr<const expert_tensor_map> shared; // VQ: codebook (+ Bₛ), held once by the experts' records
                if (c.idre) {
                    dec = idre_decompose(ws, sigma, c.idre_rank, c.idre_damping);
                    for (int e = 0; e < E; ++e) {
                        const auto se = static_cast<std::size_t>(e);
                        pieces[se].coeff = dec->coefficients[se];
                        residuals[se] = (ws[se].cast<double>() - pieces[se].coeff.cast<double>() * dec->basis.cast<double>()).cast<float>();
                    }
                }
                if (c.residual == kbvq_residual::vq) {
                    const std::uint64_t seed = c.seed + 1000003ull * static_cast<std::uint64_t>(l) +
                                               static_cast<std::uint64_t>(expert_slot_index(slot));
                    const shared_vq vq = shared_codebook_vq(residuals, importance, c.vq_dim, c.vq_index_bits, c.vq_iterations, seed);
                    for (int e = 0; e < E; ++e) {
                        const auto se = static_cast<std::size_t>(e);
                        pieces[se].scale = vq.row_scale[se];
                        pieces[se].base = vq.decode_normalised(se, rows, cols);
                        pieces[se].vq_codes = vq.codes[se];
                    }
                    expert_tensor_map group{{"codebook", vq.codebook}};
                    if (dec) group.emplace("basis", dec->basis);
                    shared = std::make_shared<const expert_tensor_map>(std::move(group));
                } else if (c.residual == kbvq_residual::scalar) {
                    for (int e = 0; e < E; ++e) detail::scalar_residual(residuals[static_cast<std::size_t>(e)], c.scalar_bits, pieces[static_cast<std::size_t>(e)]);
                }
                const matrix_f basis = dec ? dec->basis : matrix_f();
                const double counted = kbvq_expert_bits(rows, cols, E, c);
                for (int e = 0; e < E; ++e) {
                    const auto se = static_cast<std::size_t>(e);
                    const matrix_f& x = inputs[se][slot == linear_slot::w2 ? 1 : 0];
                    auto& p = pieces[se];
                    if (c.bcos) {
                        if (x.rows()) {
                            p.fold(fit_bcos(x, ws[se], p.dense(basis, rows, cols).cast<float>()));
                        } else {
                            p.beta = vector_f::Zero(rows);
                            p.dir = vector_f::Zero(cols);
                        }
                    }
                    const matrix_f w_hat = p.dense(basis, rows, cols).cast<float>();
                    linear_record rec;
                    if (shared) {
                        rec = detail::kbvq_vq_record(p, rows, cols, c.vq_index_bits, shared,
                                                     "layers." + std::to_string(l) + ".experts." + slot_name(slot) + ".kbvq", E);
                    } else { // scalar residual or none: dense fallback with the counted bits
                        rec.format = "dense";
                        rec.rows = rows;
                        rec.cols = cols;
                        rec.dense = w_hat;
                        rec.dense_bits = counted / (static_cast<double>(rows) * static_cast<double>(cols));
                    }
                    if (x.rows()) {
                        const Eigen::MatrixXd xd = x.cast<double>();
                        err += (xd * (ws[se] - w_hat).cast<double>().transpose()).squaredNorm();
                        ref += (xd * ws[se].cast<double>().transpose()).squaredNorm();
                    }
                    const linear_id id{l, slot, e};
                    detail::install_expert_record(res, m, id, std::move(rec), experts);
                }
            }
        }
        res.expert_output_error.push_back(ref > 0 ? err / ref : std::numeric_limits<double>::quiet_NaN());
        detail::close_expert_block(res, cal.routed, l, t0, "quantized", c.name, c.progress);
    }
    detail::set_expert_bits(res, m, experts);
    return res;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template kbvq_result quantize_kbvq_moe<>(const llama_model&, std::span<const int>, const kbvq_config&);
#endif

LOWBIT_END_NAMESPACE
