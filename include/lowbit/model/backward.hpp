#pragma once
/// \file model/backward.hpp
/// Reverse pass of lowbit's own forward pass (model/llama.hpp): gradients of the calibration loss
/// (mean next-token NLL over the windows of the model's perplexity protocol) with respect to every
/// block linear's weight, every MoE router, and the residual stream after every block.
///
/// What is differentiated (the same graph as `forward`, recomputed in double precision):
/// token embedding → per block: RMSNorm → wq/wk/wv (+ biases) → per-head q/k RMSNorm (Qwen3) →
/// RoPE (interleaved or rotate-half) → causal grouped-query softmax attention → wo → residual →
/// RMSNorm → dense SwiGLU FFN, or the routed MoE FFN (router logits → softmax → top-k →
/// renormalised gates, each expert's SwiGLU, gate-weighted sum) → residual; final RMSNorm →
/// classifier → log-softmax. The top-k *selection* is piecewise constant (its derivative is zero
/// almost everywhere); the gates are differentiated through the softmax (and the renormalisation
/// when `norm_topk_prob`), which reaches the router weights and the router's input.
///
/// Linear layers are differentiated through their effective weight (`effective_weight`: the
/// operator applied to the identity), so a partially quantized model gives the gradients at its
/// dequantized weights; activation fake-quantization inside an operator is not modelled (the
/// operator is treated as the linear map it realises on the identity). The exact SiLU, exp and
/// rsqrt are used even if the model carries approximate `nonlinear_ops`.
///
/// Precision and cost: everything in double; per window of T tokens, about three times the FLOPs of
/// a forward pass plus T²·n_heads for the attention probabilities it keeps. Memory: the activations
/// of one window (O(L·T·(dim + hidden·top_k) + L·n_heads·T²) doubles) plus one double gradient per
/// block linear. No threads; deterministic.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// The weight `[out x in]` a linear operator realises, in double: W = (op(I))ᵀ with I the identity of
/// its input width. Exact for dense and weight-only quantized operators; O(in²·out).
[[nodiscard]] inline matrix_d effective_weight(const linear_operator& op) {
    const matrix_f eye = matrix_f::Identity(op.in_features(), op.in_features());
    matrix_f y;
    op.apply(eye, y);
    return y.transpose().cast<double>();
}

/// Gradients of one block.
struct block_gradients {
    /// dL/dW `[out x in]` of wq, wk, wv, wo, w1, w2, w3 (index = `linear_slot`); the FFN slots of an
    /// MoE block are empty.
    std::array<matrix_d, linear_slots> linear;
    /// dL/dW of expert e's w1 (gate), w2 (down), w3 (up) (index = `expert_slot_index`); MoE blocks only.
    std::vector<std::array<matrix_d, 3>> experts;
    /// dL/d router `[n_experts x dim]`; MoE blocks only.
    matrix_d router;
};

/// Result of `calibration_gradients`.
struct model_gradients {
    double loss = 0;         ///< mean NLL (nats) over every scored token
    long long scored = 0;    ///< scored predictions
    int windows = 0;         ///< windows processed
    std::vector<block_gradients> blocks; ///< per block

    /// dL/dW of the linear named by `id` `[out x in]`. \throws invalid_argument (no such linear).
    [[nodiscard]] const matrix_d& weight(const linear_id& id) const {
        constexpr const char* where = "model_gradients::weight";
        detail::require(id.layer >= 0 && id.layer < static_cast<int>(blocks.size()), where, "layer out of range");
        const auto& b = blocks[static_cast<std::size_t>(id.layer)];
        const matrix_d* g = nullptr;
        if (id.expert >= 0) {
            const int k = expert_slot_index(id.slot);
            detail::require(id.expert < static_cast<int>(b.experts.size()) && k >= 0, where,
                            "no gradient for '" + id.name() + "'");
            g = &b.experts[static_cast<std::size_t>(id.expert)][static_cast<std::size_t>(k)];
        } else {
            const int s = static_cast<int>(id.slot);
            detail::require(s >= 0 && s < linear_slots, where, "slot out of range");
            g = &b.linear[static_cast<std::size_t>(s)];
        }
        detail::require(g->size() > 0, where, "no gradient for '" + id.name() + "'");
        return *g;
    }
};

/// Options of `calibration_gradients`.
struct gradient_options {
    int window = -1;      ///< window length (tokens); −1: the perplexity protocol's default
    int max_windows = -1; ///< at most this many windows (< 0: all)
    bool weights = true;  ///< accumulate weight and router gradients (false: loss and output gradients only)
    /// Optional: called per window with dL/d(residual stream after block `layer`) `[T x dim]` (the
    /// window's input rows; L is the mean NLL over all windows' scored tokens), from the last block
    /// to the first.
    std::function<void(int window, int layer, const matrix_d& grad)> on_output_grad;
};

namespace detail {

/// Weights of a model in double (effective weights of every linear).
struct double_weights {
    struct block {
        std::array<matrix_d, linear_slots> w;
        std::vector<std::array<matrix_d, 3>> experts;
        matrix_d router;
    };
    std::vector<block> blocks;
    matrix_d classifier;
    matrix_d embedding;
};

template <class = void> // compiled only where called (docs/compile_time.md)
double_weights to_double(const llama_model& m) {
    double_weights d;
    d.embedding = m.token_embedding.cast<double>();
    d.classifier = effective_weight(*m.classifier);
    d.blocks.resize(m.blocks.size());
    for (std::size_t l = 0; l < m.blocks.size(); ++l) {
        const auto& b = m.blocks[l];
        auto& o = d.blocks[l];
        for (int s = 0; s < linear_slots; ++s)
            if (b.linear[static_cast<std::size_t>(s)]) o.w[static_cast<std::size_t>(s)] = effective_weight(*b.linear[static_cast<std::size_t>(s)]);
        if (b.is_moe()) {
            o.router = b.router.cast<double>();
            o.experts.resize(b.experts.size());
            for (std::size_t e = 0; e < b.experts.size(); ++e)
                for (std::size_t k = 0; k < 3; ++k) o.experts[e][k] = effective_weight(*b.experts[e][k]);
        }
    }
    return d;
}

/// RMSNorm of each row (width `width` chunks of `x`), out = w ⊙ x·r; returns r per (row, chunk).
template <class = void> // compiled only where called (docs/compile_time.md)
matrix_d rms_fwd(const matrix_d& x, const vector_f& w, double eps, Eigen::Index width, matrix_d& out) {
    const Eigen::Index chunks = x.cols() / width;
    matrix_d r(x.rows(), chunks);
    out.resize(x.rows(), x.cols());
    for (Eigen::Index t = 0; t < x.rows(); ++t)
        for (Eigen::Index c = 0; c < chunks; ++c) {
            const auto seg = x.row(t).segment(c * width, width);
            const double inv = 1.0 / std::sqrt(seg.squaredNorm() / static_cast<double>(width) + eps);
            r(t, c) = inv;
            for (Eigen::Index j = 0; j < width; ++j) out(t, c * width + j) = static_cast<double>(w(j)) * inv * seg(j);
        }
    return r;
}

/// Reverse of rms_fwd: dx from dy (x, r as in the forward pass).
template <class = void> // compiled only where called (docs/compile_time.md)
matrix_d rms_bwd(const matrix_d& x, const matrix_d& r, const vector_f& w, Eigen::Index width, const matrix_d& dy) {
    matrix_d dx(x.rows(), x.cols());
    const Eigen::Index chunks = x.cols() / width;
    for (Eigen::Index t = 0; t < x.rows(); ++t)
        for (Eigen::Index c = 0; c < chunks; ++c) {
            const double inv = r(t, c);
            double dot = 0;
            for (Eigen::Index j = 0; j < width; ++j)
                dot += static_cast<double>(w(j)) * dy(t, c * width + j) * x(t, c * width + j);
            const double k = inv * inv * inv * dot / static_cast<double>(width);
            for (Eigen::Index j = 0; j < width; ++j)
                dx(t, c * width + j) = static_cast<double>(w(j)) * dy(t, c * width + j) * inv - k * x(t, c * width + j);
        }
    return dx;
}

/// RoPE (sign = +1) or its transpose (sign = −1) in place, positions 0..T−1, angles in double.
template <class = void> // compiled only where called (docs/compile_time.md)
void rope_d(matrix_d& m, int head_size, double theta, rope_layout layout, double sign) {
    const Eigen::Index half = head_size / 2;
    for (Eigen::Index k = 0; k < half; ++k) {
        const double freq = 1.0 / std::pow(theta, static_cast<double>(2 * k) / head_size);
        for (Eigen::Index t = 0; t < m.rows(); ++t) {
            const double ang = static_cast<double>(t) * freq;
            const double c = std::cos(ang), s = sign * std::sin(ang);
            for (Eigen::Index h0 = 0; h0 < m.cols(); h0 += head_size) {
                const Eigen::Index i = layout == rope_layout::interleaved ? h0 + 2 * k : h0 + k;
                const Eigen::Index j = layout == rope_layout::interleaved ? i + 1 : i + half;
                const double a = m(t, i), b = m(t, j);
                m(t, i) = a * c - b * s;
                m(t, j) = a * s + b * c;
            }
        }
    }
}

inline double sigmoid_d(double a) { return 1.0 / (1.0 + std::exp(-a)); }

/// Forward + reverse pass of one window: `in` are the input tokens, `targets[t]` the token predicted
/// at row t (−1: not scored). Adds scale·dL/dW into `g` (when `weights`) and returns the summed NLL.
/// `shift` (optional, for finite-difference checks) is added to the residual stream after block
/// `shift_layer` in the forward pass.
template <class = void> // compiled only where called (docs/compile_time.md)
double window_pass(const llama_model& m, const double_weights& dw, std::span<const int> in,
                          std::span<const int> targets, double scale, model_gradients* g, bool weights,
                          const std::function<void(int, const matrix_d&)>& on_output_grad, int shift_layer = -1,
                          const matrix_d* shift = nullptr) {
    const auto& c = m.config;
    const auto T = static_cast<Eigen::Index>(in.size());
    const int L = c.n_layers, hs = c.head_size(), group = c.n_heads / c.n_kv_heads;
    const double eps = c.norm_eps, att_scale = 1.0 / std::sqrt(static_cast<double>(hs));
    struct expert_cache {
        std::vector<Eigen::Index> rows;
        std::vector<double> gates;
        matrix_d xin, a1, a3, h, y;
    };
    struct layer_cache {
        matrix_d xin, r1, n1, q_raw, k_raw, rq, rk, q, k, v, att, xmid, r2, n2;
        std::vector<matrix_d> p;
        matrix_d a1, a3, h;              // dense FFN
        matrix_d logits;                 // MoE
        std::vector<std::vector<int>> sel;
        std::vector<std::vector<double>> gate;
        std::vector<expert_cache> ex;
    };
    std::vector<layer_cache> lc(static_cast<std::size_t>(L));
    matrix_d x(T, c.dim);
    for (Eigen::Index t = 0; t < T; ++t) x.row(t) = dw.embedding.row(in[static_cast<std::size_t>(t)]);
    auto silu = [](double a) { return a * sigmoid_d(a); };
    for (int l = 0; l < L; ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        const auto& w = dw.blocks[static_cast<std::size_t>(l)];
        auto& s = lc[static_cast<std::size_t>(l)];
        s.xin = x;
        s.r1 = rms_fwd(x, b.rms_att, eps, c.dim, s.n1);
        s.q_raw = s.n1 * w.w[0].transpose();
        s.k_raw = s.n1 * w.w[1].transpose();
        s.v = s.n1 * w.w[2].transpose();
        if (b.q_bias.size()) s.q_raw.rowwise() += b.q_bias.transpose().cast<double>();
        if (b.k_bias.size()) s.k_raw.rowwise() += b.k_bias.transpose().cast<double>();
        if (b.v_bias.size()) s.v.rowwise() += b.v_bias.transpose().cast<double>();
        if (b.q_norm.size()) s.rq = rms_fwd(s.q_raw, b.q_norm, eps, hs, s.q);
        else s.q = s.q_raw;
        if (b.k_norm.size()) s.rk = rms_fwd(s.k_raw, b.k_norm, eps, hs, s.k);
        else s.k = s.k_raw;
        rope_d(s.q, hs, c.rope_theta, c.rope, 1.0);
        rope_d(s.k, hs, c.rope_theta, c.rope, 1.0);
        s.att.resize(T, c.q_dim());
        s.p.resize(static_cast<std::size_t>(c.n_heads));
        for (int h = 0; h < c.n_heads; ++h) {
            const int kvh = h / group;
            matrix_d sc = att_scale * (s.q.middleCols(h * hs, hs) * s.k.middleCols(kvh * hs, hs).transpose());
            for (Eigen::Index t = 0; t < T; ++t) {
                const double mx = sc.row(t).head(t + 1).maxCoeff();
                double sum = 0;
                for (Eigen::Index u = 0; u <= t; ++u) sum += sc(t, u) = std::exp(sc(t, u) - mx);
                for (Eigen::Index u = 0; u <= t; ++u) sc(t, u) /= sum;
                for (Eigen::Index u = t + 1; u < T; ++u) sc(t, u) = 0;
            }
            s.att.middleCols(h * hs, hs) = sc * s.v.middleCols(kvh * hs, hs);
            s.p[static_cast<std::size_t>(h)] = std::move(sc);
        }
        x += s.att * w.w[3].transpose();
        s.xmid = x;
        s.r2 = rms_fwd(x, b.rms_ffn, eps, c.dim, s.n2);
        if (!b.is_moe()) {
            s.a1 = s.n2 * w.w[4].transpose();
            s.a3 = s.n2 * w.w[6].transpose();
            s.h = s.a1.unaryExpr(silu).cwiseProduct(s.a3);
            x += s.h * w.w[5].transpose();
        } else {
            const int E = static_cast<int>(b.experts.size()), K = c.n_experts_per_token;
            // Routing decided as the float forward does (float logits, float softmax, ties by index).
            const matrix_f lf = s.n2.template cast<float>() * b.router.transpose();
            s.logits = s.n2 * w.router.transpose();
            s.sel.assign(static_cast<std::size_t>(T), {});
            s.gate.assign(static_cast<std::size_t>(T), {});
            s.ex.assign(static_cast<std::size_t>(E), {});
            std::vector<int> sel;
            std::vector<float> wts;
            for (Eigen::Index t = 0; t < T; ++t) {
                detail::route_top_k(lf.row(t).data(), E, K, c.norm_topk_prob, sel, wts);
                // gates in double from the double logits
                const double mx = s.logits.row(t).maxCoeff();
                std::vector<double> pe(static_cast<std::size_t>(E));
                double sum = 0;
                for (int e = 0; e < E; ++e) sum += pe[static_cast<std::size_t>(e)] = std::exp(s.logits(t, e) - mx);
                double ssel = 0;
                for (int e : sel) ssel += pe[static_cast<std::size_t>(e)];
                auto& gt = s.gate[static_cast<std::size_t>(t)];
                for (int e : sel) gt.push_back(pe[static_cast<std::size_t>(e)] / (c.norm_topk_prob ? ssel : sum));
                s.sel[static_cast<std::size_t>(t)] = sel;
                for (std::size_t i = 0; i < sel.size(); ++i) {
                    auto& ec = s.ex[static_cast<std::size_t>(sel[i])];
                    ec.rows.push_back(t);
                    ec.gates.push_back(gt[i]);
                }
            }
            for (int e = 0; e < E; ++e) {
                auto& ec = s.ex[static_cast<std::size_t>(e)];
                if (ec.rows.empty()) continue;
                const auto R = static_cast<Eigen::Index>(ec.rows.size());
                const auto& ew = w.experts[static_cast<std::size_t>(e)];
                ec.xin.resize(R, c.dim);
                for (Eigen::Index i = 0; i < R; ++i) ec.xin.row(i) = s.n2.row(ec.rows[static_cast<std::size_t>(i)]);
                ec.a1 = ec.xin * ew[0].transpose();
                ec.a3 = ec.xin * ew[2].transpose();
                ec.h = ec.a1.unaryExpr(silu).cwiseProduct(ec.a3);
                ec.y = ec.h * ew[1].transpose();
                for (Eigen::Index i = 0; i < R; ++i) x.row(ec.rows[static_cast<std::size_t>(i)]) += ec.gates[static_cast<std::size_t>(i)] * ec.y.row(i);
            }
        }
        if (shift && l == shift_layer) x += *shift;
    }
    // Final norm, classifier, NLL.
    matrix_d nf;
    const matrix_d rf = rms_fwd(x, m.rms_final, eps, c.dim, nf);
    const matrix_d logits = nf * dw.classifier.transpose();
    double nll = 0;
    matrix_d dlog = matrix_d::Zero(T, logits.cols());
    for (Eigen::Index t = 0; t < T; ++t) {
        const int target = targets[static_cast<std::size_t>(t)];
        if (target < 0) continue;
        const double mx = logits.row(t).maxCoeff();
        const double lse = mx + std::log((logits.row(t).array() - mx).exp().sum());
        nll += lse - logits(t, target);
        dlog.row(t) = (logits.row(t).array() - lse).exp() * scale;
        dlog(t, target) -= scale;
    }
    if (!g && !on_output_grad) return nll;
    matrix_d dx = rms_bwd(x, rf, m.rms_final, c.dim, dlog * dw.classifier);
    auto dsilu = [](double a) {
        const double sg = sigmoid_d(a);
        return sg * (1.0 + a * (1.0 - sg));
    };
    for (int l = L - 1; l >= 0; --l) {
        if (on_output_grad) on_output_grad(l, dx);
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        const auto& w = dw.blocks[static_cast<std::size_t>(l)];
        auto& s = lc[static_cast<std::size_t>(l)];
        block_gradients* gb = (g && weights) ? &g->blocks[static_cast<std::size_t>(l)] : nullptr;
        matrix_d dn2 = matrix_d::Zero(T, c.dim);
        if (!b.is_moe()) {
            const matrix_d dh = dx * w.w[5];
            const matrix_d da1 = dh.cwiseProduct(s.a3).cwiseProduct(s.a1.unaryExpr(dsilu));
            const matrix_d da3 = dh.cwiseProduct(s.a1.unaryExpr(silu));
            if (gb) {
                gb->linear[5].noalias() += dx.transpose() * s.h;
                gb->linear[4].noalias() += da1.transpose() * s.n2;
                gb->linear[6].noalias() += da3.transpose() * s.n2;
            }
            dn2 = da1 * w.w[4] + da3 * w.w[6];
        } else {
            const int E = static_cast<int>(b.experts.size());
            // dL/dgate per (token, selected expert)
            std::vector<std::vector<double>> dgate(static_cast<std::size_t>(T));
            for (Eigen::Index t = 0; t < T; ++t) dgate[static_cast<std::size_t>(t)].assign(s.sel[static_cast<std::size_t>(t)].size(), 0.0);
            for (int e = 0; e < E; ++e) {
                auto& ec = s.ex[static_cast<std::size_t>(e)];
                if (ec.rows.empty()) continue;
                const auto R = static_cast<Eigen::Index>(ec.rows.size());
                const auto& ew = w.experts[static_cast<std::size_t>(e)];
                matrix_d dy(R, c.dim);
                for (Eigen::Index i = 0; i < R; ++i) {
                    const Eigen::Index t = ec.rows[static_cast<std::size_t>(i)];
                    dy.row(i) = ec.gates[static_cast<std::size_t>(i)] * dx.row(t);
                    const auto& st = s.sel[static_cast<std::size_t>(t)];
                    const auto pos = static_cast<std::size_t>(std::find(st.begin(), st.end(), e) - st.begin());
                    dgate[static_cast<std::size_t>(t)][pos] = dx.row(t).dot(ec.y.row(i));
                }
                const matrix_d dh = dy * ew[1];
                const matrix_d da1 = dh.cwiseProduct(ec.a3).cwiseProduct(ec.a1.unaryExpr(dsilu));
                const matrix_d da3 = dh.cwiseProduct(ec.a1.unaryExpr(silu));
                if (gb) {
                    auto& ge = gb->experts[static_cast<std::size_t>(e)];
                    ge[1].noalias() += dy.transpose() * ec.h;
                    ge[0].noalias() += da1.transpose() * ec.xin;
                    ge[2].noalias() += da3.transpose() * ec.xin;
                }
                const matrix_d dxin = da1 * ew[0] + da3 * ew[2];
                for (Eigen::Index i = 0; i < R; ++i) dn2.row(ec.rows[static_cast<std::size_t>(i)]) += dxin.row(i);
            }
            // Router: gates → logits.
            matrix_d dz = matrix_d::Zero(T, E);
            for (Eigen::Index t = 0; t < T; ++t) {
                const auto& st = s.sel[static_cast<std::size_t>(t)];
                const auto& gt = s.gate[static_cast<std::size_t>(t)];
                const auto& dg = dgate[static_cast<std::size_t>(t)];
                if (c.norm_topk_prob) {
                    double dot = 0;
                    for (std::size_t i = 0; i < st.size(); ++i) dot += gt[i] * dg[i];
                    for (std::size_t i = 0; i < st.size(); ++i) dz(t, st[i]) = gt[i] * (dg[i] - dot);
                } else {
                    const double mx = s.logits.row(t).maxCoeff();
                    vector_d p = (s.logits.row(t).array() - mx).exp().transpose();
                    p /= p.sum();
                    double dot = 0;
                    for (std::size_t i = 0; i < st.size(); ++i) dot += p(st[i]) * dg[i];
                    for (int e = 0; e < E; ++e) dz(t, e) = -p(e) * dot;
                    for (std::size_t i = 0; i < st.size(); ++i) dz(t, st[i]) += p(st[i]) * dg[i];
                }
            }
            if (gb) gb->router.noalias() += dz.transpose() * s.n2;
            dn2 += dz * w.router;
        }
        matrix_d dxm = dx + rms_bwd(s.xmid, s.r2, b.rms_ffn, c.dim, dn2);
        // Attention.
        const matrix_d datt = dxm * w.w[3];
        if (gb) gb->linear[3].noalias() += dxm.transpose() * s.att;
        matrix_d dq = matrix_d::Zero(T, c.q_dim()), dk = matrix_d::Zero(T, c.kv_dim()), dv = matrix_d::Zero(T, c.kv_dim());
        for (int h = 0; h < c.n_heads; ++h) {
            const int kvh = h / group;
            const auto& P = s.p[static_cast<std::size_t>(h)];
            const matrix_d dO = datt.middleCols(h * hs, hs);
            const matrix_d dP = dO * s.v.middleCols(kvh * hs, hs).transpose();
            dv.middleCols(kvh * hs, hs).noalias() += P.transpose() * dO;
            matrix_d dS = P.cwiseProduct(dP);
            const vector_d rs = dS.rowwise().sum();
            dS -= P.cwiseProduct(rs.replicate(1, T));
            dS *= att_scale;
            dq.middleCols(h * hs, hs).noalias() += dS * s.k.middleCols(kvh * hs, hs);
            dk.middleCols(kvh * hs, hs).noalias() += dS.transpose() * s.q.middleCols(h * hs, hs);
        }
        rope_d(dq, hs, c.rope_theta, c.rope, -1.0);
        rope_d(dk, hs, c.rope_theta, c.rope, -1.0);
        if (b.q_norm.size()) dq = rms_bwd(s.q_raw, s.rq, b.q_norm, hs, dq);
        if (b.k_norm.size()) dk = rms_bwd(s.k_raw, s.rk, b.k_norm, hs, dk);
        if (gb) {
            gb->linear[0].noalias() += dq.transpose() * s.n1;
            gb->linear[1].noalias() += dk.transpose() * s.n1;
            gb->linear[2].noalias() += dv.transpose() * s.n1;
        }
        const matrix_d dn1 = dq * w.w[0] + dk * w.w[1] + dv * w.w[2];
        dx = dxm + rms_bwd(s.xin, s.r1, b.rms_att, c.dim, dn1);
    }
    return nll;
}

/// Input tokens and targets of one window of the perplexity protocol (see `perplexity`).
inline void window_io(const llama_model& m, std::span<const int> win, std::vector<int>& in, std::vector<int>& tg) {
    const bool bos = m.config.bos_token >= 0;
    in.clear();
    tg.clear();
    if (bos) {
        in.push_back(m.config.bos_token);
        in.insert(in.end(), win.begin(), win.end() - 1);
        tg.assign(win.begin(), win.end());
    } else {
        in.assign(win.begin(), win.end() - 1);
        tg.assign(win.begin() + 1, win.end());
    }
}

inline std::vector<std::pair<std::size_t, std::size_t>> gradient_windows(const llama_model& m, std::span<const int> tokens,
                                                                         int window, int max_windows, const char* where) {
    const bool bos = m.config.bos_token >= 0;
    if (window < 0) window = bos ? m.config.seq_len - 1 : std::min(512, m.config.seq_len);
    const int max_w = bos ? m.config.seq_len - 1 : m.config.seq_len;
    require(window >= (bos ? 1 : 2) && window <= max_w, where,
            "window must lie in [" + std::string(bos ? "1" : "2") + ", " + std::to_string(max_w) + "]");
    check_tokens(m, tokens, where);
    auto wins = perplexity_windows(tokens.size(), static_cast<std::size_t>(window), !bos, max_windows);
    require<shape_error>(!wins.empty(), where, "argument 'tokens' holds no window of " + std::to_string(window) + " tokens");
    return wins;
}

} // namespace detail

/// Loss and gradients of the calibration loss L = mean next-token NLL over the windows of the
/// model's perplexity protocol (`perplexity`: BOS-prefixed windows for llama2.c models, plain
/// windows from position 0 for Hugging Face models), with respect to every block linear's
/// (effective) weight and every router, plus dL/d(block output) through `opt.on_output_grad`.
/// The loss equals `log(perplexity(m, tokens, window, max_windows).perplexity)` up to float rounding
/// of the forward pass. \throws invalid_argument (window, token out of range), shape_error (no
/// window). Complexity: see the file comment; one double copy of every weight.
template <class = void>
[[nodiscard]] model_gradients calibration_gradients(const llama_model& m, std::span<const int> tokens,
                                                           const gradient_options& opt = {}) {
    constexpr const char* where = "calibration_gradients";
    const auto wins = detail::gradient_windows(m, tokens, opt.window, opt.max_windows, where);
    const detail::double_weights dw = detail::to_double(m);
    model_gradients g;
    g.blocks.resize(m.blocks.size());
    for (std::size_t l = 0; l < m.blocks.size(); ++l) {
        auto& gb = g.blocks[l];
        const auto& w = dw.blocks[l];
        if (!opt.weights) break;
        for (int s = 0; s < linear_slots; ++s)
            if (w.w[static_cast<std::size_t>(s)].size())
                gb.linear[static_cast<std::size_t>(s)] = matrix_d::Zero(w.w[static_cast<std::size_t>(s)].rows(), w.w[static_cast<std::size_t>(s)].cols());
        if (m.blocks[l].is_moe()) {
            gb.router = matrix_d::Zero(w.router.rows(), w.router.cols());
            gb.experts.resize(w.experts.size());
            for (std::size_t e = 0; e < w.experts.size(); ++e)
                for (std::size_t k = 0; k < 3; ++k) gb.experts[e][k] = matrix_d::Zero(w.experts[e][k].rows(), w.experts[e][k].cols());
        }
    }
    long long scored = 0;
    for (const auto& [a, b] : wins) scored += static_cast<long long>(b - a - (m.config.bos_token >= 0 ? 0 : 1));
    const double scale = 1.0 / static_cast<double>(scored);
    std::vector<int> in, tg;
    double total = 0;
    for (std::size_t w = 0; w < wins.size(); ++w) {
        detail::window_io(m, tokens.subspan(wins[w].first, wins[w].second - wins[w].first), in, tg);
        std::function<void(int, const matrix_d&)> cb;
        if (opt.on_output_grad) cb = [&](int l, const matrix_d& d) { opt.on_output_grad(static_cast<int>(w), l, d); };
        total += detail::window_pass(m, dw, in, tg, scale, &g, opt.weights, cb);
    }
    g.loss = total / static_cast<double>(scored);
    g.scored = scored;
    g.windows = static_cast<int>(wins.size());
    return g;
}

/// The calibration loss of `calibration_gradients` alone (double precision), for one window's worth
/// of `tokens` (the first window of the protocol), with `shift` `[T x dim]` (T = the window's input
/// rows) added to the residual stream after block `shift_layer` when given — the hook for
/// finite-difference checks of the output gradients. \throws as calibration_gradients, shape_error
/// (shift's shape).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] double calibration_loss(const llama_model& m, std::span<const int> tokens, int window = -1,
                                             int shift_layer = -1, const matrix_d* shift = nullptr) {
    constexpr const char* where = "calibration_loss";
    const auto wins = detail::gradient_windows(m, tokens, window, 1, where);
    std::vector<int> in, tg;
    detail::window_io(m, tokens.subspan(wins[0].first, wins[0].second - wins[0].first), in, tg);
    if (shift) {
        detail::require_dim(shift->rows(), static_cast<Eigen::Index>(in.size()), where, "rows of 'shift'");
        detail::require_dim(shift->cols(), static_cast<Eigen::Index>(m.config.dim), where, "columns of 'shift'");
    }
    const detail::double_weights dw = detail::to_double(m);
    return detail::window_pass(m, dw, in, tg, 1.0, nullptr, false, {}, shift_layer, shift) /
           static_cast<double>(tg.size());
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template model_gradients calibration_gradients<>(const llama_model&, std::span<const int>, const gradient_options&);
#endif

LOWBIT_END_NAMESPACE
