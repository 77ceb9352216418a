#pragma once
/// \file model/scale_tuning.hpp
/// End-to-end tuning of quantization parameters (EfficientQAT's "E2E-QP"): with every block linear's
/// integer codes fixed, the per-row (or per-group) scales α and offsets μ of its dequantized weight
/// W_q = α·t + μ are moved by Adam along the gradient of the calibration loss (mean next-token NLL,
/// `calibration_gradients`, model/backward.hpp). The codes, the bits and the kernels do not change;
/// only the fp16 scales and offsets a quantized model stores do. Optionally (`code_lr` > 0) the codes
/// move too, through real latents and the straight-through gradient (quantization-aware training on
/// the calibration text: EfficientQAT's Block-AP idea applied to the whole model at once), still within
/// each format's code set, so the bits and kernels stay the same.
///
/// Gradient. A linear runs y = W_q·T(x), T the operator's orthogonal input transform (a recipe's
/// Hadamard and learned rotation; identity if none), so its effective weight is W_eff = W_q·T and
/// dL/dW_q = dL/dW_eff·Tᵀ: row i of dL/dW_q is T applied to row i of dL/dW_eff (what
/// `tunable_linear::input_transform` does). With G' = dL/dW_q and a group g of row i (columns J):
///   dL/dα_ig = Σ_{j∈J} G'_ij·t_ij,   dL/dμ_ig = Σ_{j∈J} G'_ij.
/// Activation quantization inside an operator is not differentiated (backward.hpp: the operator is
/// the linear map it realises on the identity).
///
/// Step. Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-12) with a per-group step
/// `lr`·|α⁰_ig| for both α_ig and μ_ig (α⁰: the value before tuning), so the relative change per
/// step is at most about `lr` whatever the layer's scale. The model's operators are rebuilt after each
/// step with the values rounded to fp16 (what the model stores), so every loss reported is the loss of
/// a storable model. Each step takes the next minibatch of calibration windows; windows held out at the
/// end of the calibration tokens decide at the end whether the tuned values are kept (tuning never
/// returns a model worse on them than its input). Tuning on a few fixed windows overfits: on
/// llama-21M-en, 20 steps on the same 4 windows cut their loss from 3.18 to 2.70 nats and left the dev
/// perplexity unchanged (28.84 → 28.78).
///
/// Cost per step: one `calibration_gradients` over `windows` windows (about three forward passes in
/// double per window; 9.5 s for 4 windows of 512 tokens of llama-21M-en on one core) plus O(rows·cols)
/// per linear for the gradient sums and one operator rebuild; plus two held-out evaluations.
/// Deterministic; no threads.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/model/backward.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// One block linear whose weight is affine over fixed integer codes: W_q(i, j) = α_ig·t_ij + μ_ig,
/// g = j / group_cols. The operator realised is W_q after `input_transform`.
struct tunable_linear {
    linear_id id;                 ///< the model's linear
    matrix_i8 codes;              ///< t `[rows x cols]`
    Eigen::Index group_cols = 0;  ///< columns per (α, μ) pair; cols (or 0): one pair per row
    vector_f scale;               ///< α, rows·groups values, row-major (index i·groups + g); finite, ≠ 0
    vector_f offset;              ///< μ, same count, or empty (no offset: μ = 0, not tuned)
    /// T applied to every row of a `[k x cols]` matrix in place (the operator's input transform, the
    /// one its activations go through); empty: identity.
    std::function<void(Eigen::Ref<matrix_f>)> input_transform;
    /// The code set, for code tuning (`scale_tuning_options::code_lr` > 0): row i's codes may take the
    /// values c + code_shift_i, c ∈ [code_min, code_max] and c ≠ 0 unless `zero_code` (binary: {−1, 1}).
    /// code_min == code_max (the default): the codes stay fixed whatever `code_lr` is.
    int code_min = 0, code_max = 0;
    bool zero_code = true;  ///< false: 0 is not a code (sign binary)
    vector_f code_shift;    ///< per-row shift of the code set (rows values, whole numbers) or empty (0)
    /// Bumped by the tuner whenever it changes `codes` (a step that flips one, the restore): a rebuild
    /// that re-packs codes can skip the work while the revision it last packed is current.
    std::uint64_t code_revision = 0;

    /// True if the code set has more than one value (the codes can be tuned).
    [[nodiscard]] bool codes_tunable() const { return code_max > code_min; }

    /// The allowed code of row i nearest to the real number `u` (ties away from zero; binary: u − shift ≥ 0
    /// gives +1). O(1).
    [[nodiscard]] std::int8_t nearest_code(Eigen::Index i, float u) const {
        const float s = code_shift.size() ? code_shift(i) : 0.0f, v = u - s;
        float c = std::fmin(std::fmax(std::round(v), static_cast<float>(code_min)), static_cast<float>(code_max));
        if (!zero_code && c == 0.0f) c = v >= 0.0f ? 1.0f : -1.0f;
        return static_cast<std::int8_t>(c + s);
    }

    /// Groups per row.
    [[nodiscard]] Eigen::Index groups() const {
        const Eigen::Index g = group_cols > 0 ? group_cols : codes.cols();
        return g > 0 ? (codes.cols() + g - 1) / g : 0;
    }
};

/// Rebuilds the operator of `layer` from its current `scale` and `offset` (already fp16-rounded).
using tunable_rebuild = std::function<std::shared_ptr<const linear_operator>(const tunable_linear& layer)>;

/// Options of `tune_quantization_scales`.
struct scale_tuning_options {
    int steps = 40;      ///< Adam steps, each on the next `windows` calibration windows (cyclically); 0: nothing happens
    double lr = 2e-3;    ///< step size relative to each group's initial |α| (> 0, finite)
    int window = -1;     ///< calibration window (tokens); −1: the perplexity protocol's default
    int windows = 4;     ///< calibration windows per step (≥ 1)
    /// Windows held out at the end of the calibration tokens (≥ 1): the loss on them decides whether
    /// the tuned values are kept (they are only if it drops); they are never trained on.
    int holdout_windows = 4;
    /// Code tuning (0: off, the codes stay fixed): each tunable linear (`tunable_linear::codes_tunable`)
    /// keeps a real latent u per weight, started at its code and moved along the straight-through
    /// gradient d_ij = dL/du_ij = α_ig·G'_ij by Adam whose second moment is shared by a row (the mean of
    /// d_ij² over row i): a weight whose gradient is the row's RMS moves this many code units per step,
    /// one with a larger gradient faster (per-weight Adam would move every latent at the same speed and
    /// flip codes in waves). The code is the allowed code nearest to u (`nearest_code`), so it changes
    /// once its latent has crossed half-way to the next code; u is kept within half a code of the code
    /// set. Same bits and formats; the rebuild gets the new codes.
    double code_lr = 0.0;
    /// Called once per step ("scale tuning: step 3/40, windows 8-11, loss 3.35120, 12.3 s") and at the
    /// end with the held-out losses.
    std::function<void(const std::string&)> progress;
};

/// Result of `tune_quantization_scales`.
struct scale_tuning_result {
    std::vector<double> loss;      ///< loss (nats) of each step's own windows, before its update
    double holdout_before = 0;     ///< held-out loss of the untuned values
    double holdout_after = 0;      ///< held-out loss of the tuned values
    bool kept = false;             ///< true if the tuned values were kept (holdout_after < holdout_before)
    int tuned_linears = 0;         ///< linears tuned
    long long parameters = 0;      ///< scalars tuned: α and μ, plus one latent per code with code tuning
    long long codes_changed = 0;   ///< codes that differ from the input's at the end (code tuning; 0 if not kept)
};

namespace detail {
/// G' = dL/dW_q `[rows x cols]` of one tunable linear: rows of dL/dW_eff through its input transform.
[[nodiscard]] inline matrix_f transformed_gradient(const tunable_linear& t, const matrix_d& grad_eff, const char* where) {
    detail::require_dim(grad_eff.rows(), t.codes.rows(), where, "rows of the gradient");
    detail::require_dim(grad_eff.cols(), t.codes.cols(), where, "columns of the gradient");
    matrix_f g = grad_eff.cast<float>();
    if (t.input_transform) t.input_transform(g);
    return g;
}

/// dL/dα and dL/dμ from G' (see `scale_gradients`).
[[nodiscard]] inline std::pair<vector_d, vector_d> scale_sums(const tunable_linear& t, const matrix_f& g) {
    const Eigen::Index ng = t.groups(), gc = t.group_cols > 0 ? t.group_cols : t.codes.cols();
    vector_d da = vector_d::Zero(t.codes.rows() * ng);
    vector_d dm = t.offset.size() ? vector_d(vector_d::Zero(t.codes.rows() * ng)) : vector_d();
    for (Eigen::Index i = 0; i < t.codes.rows(); ++i)
        for (Eigen::Index k = 0; k < ng; ++k) {
            const Eigen::Index j0 = k * gc, j1 = std::min(t.codes.cols(), j0 + gc);
            double sa = 0, sm = 0;
            for (Eigen::Index j = j0; j < j1; ++j) {
                sa += static_cast<double>(g(i, j)) * static_cast<double>(t.codes(i, j));
                sm += static_cast<double>(g(i, j));
            }
            da(i * ng + k) = sa;
            if (dm.size()) dm(i * ng + k) = sm;
        }
    return {std::move(da), std::move(dm)};
}

/// In place: G'_ij ← α_ig·G'_ij, the straight-through gradient of the codes.
inline void scale_code_gradient(const tunable_linear& t, matrix_f& g) {
    const Eigen::Index ng = t.groups(), gc = t.group_cols > 0 ? t.group_cols : t.codes.cols();
    for (Eigen::Index i = 0; i < g.rows(); ++i)
        for (Eigen::Index k = 0; k < ng; ++k) {
            const Eigen::Index j0 = k * gc, j1 = std::min(g.cols(), j0 + gc);
            g.row(i).segment(j0, j1 - j0) *= t.scale(i * ng + k);
        }
}
} // namespace detail

/// dL/dα and dL/dμ of one tunable linear (each rows·groups values, index i·groups + g; dμ empty when the
/// linear has no offset) from dL/dW_eff `[rows x cols]` (what `model_gradients::weight` gives).
/// \throws shape_error (gradient shape).
[[nodiscard]] inline std::pair<vector_d, vector_d> scale_gradients(const tunable_linear& t, const matrix_d& grad_eff) {
    return detail::scale_sums(t, detail::transformed_gradient(t, grad_eff, "scale_gradients"));
}

/// The straight-through gradient of the codes of one tunable linear, dL/dt_ij = α_ig·G'_ij `[rows x cols]`
/// (the derivative of the loss with W_q = α·t + μ read as a function of real t), from dL/dW_eff.
/// \throws shape_error (gradient shape).
[[nodiscard]] inline matrix_f code_gradients(const tunable_linear& t, const matrix_d& grad_eff) {
    matrix_f g = detail::transformed_gradient(t, grad_eff, "code_gradients");
    detail::scale_code_gradient(t, g);
    return g;
}

/// Tunes the scales and offsets of `layers` (their operators in `m`) on `calib_tokens` as the file
/// comment describes: minibatches of `windows` consecutive windows of the perplexity protocol, in
/// order and cyclically, over all windows but the last `holdout_windows`; the tuned values are kept
/// only if the loss on those held-out windows drops, else `m` and `layers` are restored. On return `m`
/// runs, and `layers` hold, fp16 values.
/// \param rebuild   makes a layer's operator from its fp16 scale and offset (the model's own builder).
/// \throws invalid_argument (options; a layer with an empty, non-finite or zero scale, an offset of
///         the wrong count), shape_error (codes vs the model's linear; fewer than holdout_windows + 1
///         calibration windows), numeric_error (a non-finite loss or gradient).
template <class = void> // compiled only where called (docs/compile_time.md)
scale_tuning_result tune_quantization_scales(llama_model& m, std::vector<tunable_linear>& layers, const tunable_rebuild& rebuild,
                                             std::span<const int> calib_tokens, const scale_tuning_options& opt = {}) {
    constexpr const char* where = "tune_quantization_scales";
    detail::require(opt.steps >= 0, where, "steps must be >= 0");
    detail::require(std::isfinite(opt.lr) && opt.lr > 0, where, "lr must be finite and > 0");
    detail::require(opt.windows >= 1, where, "windows must be >= 1");
    detail::require(opt.holdout_windows >= 1, where, "holdout_windows must be >= 1");
    detail::require(std::isfinite(opt.code_lr) && opt.code_lr >= 0, where, "code_lr must be finite and >= 0");
    detail::require(static_cast<bool>(rebuild), where, "a rebuild function is required");
    scale_tuning_result res;
    res.tuned_linears = static_cast<int>(layers.size());
    struct state {
        vector_d a, mu, a0;       // master values (double), initial |α|
        vector_d ma, va, mm, vm;  // Adam moments
        vector_f init_a, init_mu; // the values before tuning
        matrix_f u, mu_u;         // code tuning: latents and their first Adam moments
        vector_f vu;              // code tuning: second moment per row (mean over the row)
        matrix_i8 init_codes;     // code tuning: the codes before tuning
    };
    std::vector<state> st(layers.size());
    for (std::size_t n = 0; n < layers.size(); ++n) {
        auto& t = layers[n];
        const std::string who = "linear '" + t.id.name() + "'";
        const auto& op = m.linear(t.id);
        if (t.codes.rows() != op.out_features() || t.codes.cols() != op.in_features())
            throw shape_error("lowbit: " + std::string(where) + ": " + who + " has " + std::to_string(t.codes.rows()) + "x" +
                              std::to_string(t.codes.cols()) + " codes, the model's operator is " +
                              std::to_string(op.out_features()) + "x" + std::to_string(op.in_features()));
        const Eigen::Index cnt = t.codes.rows() * t.groups();
        detail::require(t.scale.size() == cnt && cnt > 0, where, who + ": scale count must be rows x groups");
        detail::require(t.offset.size() == 0 || t.offset.size() == cnt, where, who + ": offset count must be 0 or rows x groups");
        detail::require(t.scale.allFinite() && (t.offset.size() == 0 || t.offset.allFinite()), where, who + ": non-finite scale or offset");
        auto& s = st[n];
        s.a = t.scale.cast<double>();
        s.a0 = s.a.cwiseAbs();
        detail::require(s.a0.minCoeff() > 0, where, who + ": a zero scale cannot be tuned relative to itself");
        s.mu = t.offset.cast<double>();
        s.ma = s.va = vector_d::Zero(cnt);
        s.mm = s.vm = vector_d::Zero(s.mu.size());
        s.init_a = t.scale;
        s.init_mu = t.offset;
        res.parameters += cnt + s.mu.size();
        if (opt.code_lr > 0 && t.codes_tunable()) {
            detail::require(t.code_shift.size() == 0 || t.code_shift.size() == t.codes.rows(), where,
                            who + ": code_shift count must be 0 or rows");
            for (Eigen::Index i = 0; i < t.codes.rows(); ++i)
                for (Eigen::Index j = 0; j < t.codes.cols(); ++j)
                    if (t.nearest_code(i, t.codes(i, j)) != t.codes(i, j))
                        throw invalid_argument("lowbit: " + std::string(where) + ": " + who + ": code " +
                                               std::to_string(t.codes(i, j)) + " at (" + std::to_string(i) + ", " +
                                               std::to_string(j) + ") is outside its code set");
            s.u = t.codes.cast<float>();
            s.mu_u = matrix_f::Zero(t.codes.rows(), t.codes.cols());
            s.vu = vector_f::Zero(t.codes.rows());
            s.init_codes = t.codes;
            res.parameters += t.codes.size();
        }
    }
    if (opt.steps == 0 || layers.empty()) return res;
    // the protocol's windows over the calibration tokens: training windows, then the held-out ones
    const auto wins = detail::gradient_windows(m, calib_tokens, opt.window, -1, where);
    const std::size_t hold = static_cast<std::size_t>(opt.holdout_windows);
    if (wins.size() <= hold)
        throw shape_error("lowbit: " + std::string(where) + ": the calibration tokens hold " + std::to_string(wins.size()) +
                          " windows; scale tuning needs more than holdout_windows (" + std::to_string(hold) + ")");
    const std::size_t train = wins.size() - hold, batch = std::min(train, static_cast<std::size_t>(opt.windows));
    const auto span_of = [&](std::size_t first, std::size_t count) {
        return calib_tokens.subspan(wins[first].first, wins[first + count - 1].second - wins[first].first);
    };
    gradient_options go;
    go.window = opt.window;
    go.max_windows = static_cast<int>(batch);
    gradient_options ho = go;
    ho.max_windows = static_cast<int>(hold);
    ho.weights = false;
    const auto holdout_loss = [&] {
        const double l = calibration_gradients(m, span_of(train, hold), ho).loss;
        detail::require<numeric_error>(std::isfinite(l), where, "non-finite held-out loss");
        return l;
    };
    const auto fp16 = [](const vector_d& v) { return vector_f(v.cast<float>().unaryExpr(&detail::round_fp16)); };
    const auto t0 = std::chrono::steady_clock::now();
    const auto secs = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    res.holdout_before = holdout_loss();
    constexpr double b1 = 0.9, b2 = 0.999;
    std::size_t next = 0;
    for (int step = 0; step < opt.steps; ++step) {
        if (next + batch > train) next = 0;
        const model_gradients g = calibration_gradients(m, span_of(next, batch), go);
        detail::require<numeric_error>(std::isfinite(g.loss), where, "non-finite calibration loss at step " + std::to_string(step + 1));
        res.loss.push_back(g.loss);
        const auto report = [&](long long flips) {
            if (!opt.progress) return;
            char line[200];
            const int n = std::snprintf(line, sizeof line, "scale tuning: step %d/%d, windows %zu-%zu, loss %.5f", step + 1,
                                        opt.steps, next, next + batch - 1, g.loss);
            if (opt.code_lr > 0)
                std::snprintf(line + n, sizeof line - static_cast<std::size_t>(n), ", %lld codes changed, %.1f s", flips, secs());
            else
                std::snprintf(line + n, sizeof line - static_cast<std::size_t>(n), ", %.1f s", secs());
            opt.progress(line);
        };
        const double c1 = 1.0 - std::pow(b1, step + 1), c2 = 1.0 - std::pow(b2, step + 1);
        long long flips = 0;
        for (std::size_t n = 0; n < layers.size(); ++n) {
            auto& t = layers[n];
            auto& s = st[n];
            matrix_f gq = detail::transformed_gradient(t, g.weight(t.id), where);
            const auto [da, dm] = detail::scale_sums(t, gq);
            detail::require<numeric_error>(da.allFinite() && dm.allFinite(), where, "non-finite gradient of '" + t.id.name() + "'");
            if (s.u.size()) { // codes: Adam on the latents with the straight-through gradient, then the nearest codes
                detail::scale_code_gradient(t, gq);
                const float f1 = static_cast<float>(c1), f2 = static_cast<float>(c2), lr = static_cast<float>(opt.code_lr);
                s.mu_u = b1 * s.mu_u.array() + (1 - b1) * gq.array();
                s.vu = b2 * s.vu.array() + (1 - b2) * gq.array().square().rowwise().mean();
                for (Eigen::Index i = 0; i < t.codes.rows(); ++i)
                    s.u.row(i) -= (lr / (std::sqrt(s.vu(i) / f2) + 1e-30f) / f1) * s.mu_u.row(i);
                const long long flips_before = flips;
                for (Eigen::Index i = 0; i < t.codes.rows(); ++i) {
                    const float sh = t.code_shift.size() ? t.code_shift(i) : 0.0f;
                    const float lo = static_cast<float>(t.code_min) + sh - 0.5f, hi = static_cast<float>(t.code_max) + sh + 0.5f;
                    for (Eigen::Index j = 0; j < t.codes.cols(); ++j) {
                        float& u = s.u(i, j);
                        u = std::fmin(std::fmax(u, lo), hi);
                        const std::int8_t c = t.nearest_code(i, u);
                        flips += c != t.codes(i, j);
                        t.codes(i, j) = c;
                    }
                }
                if (flips != flips_before) ++t.code_revision;
            }
            const auto adam = [&](vector_d& p, vector_d& mo, vector_d& ve, const vector_d& d) {
                mo = b1 * mo + (1 - b1) * d;
                ve = b2 * ve + (1 - b2) * d.cwiseProduct(d);
                for (Eigen::Index i = 0; i < p.size(); ++i)
                    p(i) -= opt.lr * s.a0(i) * (mo(i) / c1) / (std::sqrt(ve(i) / c2) + 1e-12);
            };
            adam(s.a, s.ma, s.va, da);
            if (s.mu.size()) adam(s.mu, s.mm, s.vm, dm);
            t.scale = fp16(s.a);
            if (s.mu.size()) t.offset = fp16(s.mu);
            m.set_linear(t.id, rebuild(t));
        }
        report(flips);
        next += batch;
    }
    res.holdout_after = holdout_loss();
    res.kept = res.holdout_after < res.holdout_before;
    if (!res.kept)
        for (std::size_t n = 0; n < layers.size(); ++n) {
            layers[n].scale = st[n].init_a;
            layers[n].offset = st[n].init_mu;
            if (st[n].init_codes.size()) {
                layers[n].codes = st[n].init_codes;
                ++layers[n].code_revision;
            }
            m.set_linear(layers[n].id, rebuild(layers[n]));
        }
    if (res.kept)
        for (std::size_t n = 0; n < layers.size(); ++n)
            if (st[n].init_codes.size()) res.codes_changed += (layers[n].codes.array() != st[n].init_codes.array()).count();
    if (opt.progress) {
        char line[240];
        std::snprintf(line, sizeof line,
                      "scale tuning: held-out loss %.5f -> %.5f over %zu windows: %s (%d linears, %lld parameters, %lld codes changed, %.1f s)",
                      res.holdout_before, res.holdout_after, hold, res.kept ? "kept" : "not kept, untuned values restored",
                      res.tuned_linears, res.parameters, res.codes_changed, secs());
        opt.progress(line);
    }
    return res;
}

LOWBIT_END_NAMESPACE
