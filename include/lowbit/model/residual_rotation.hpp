#pragma once
/// \file model/residual_rotation.hpp
/// QuaRot's offline rotation of the residual stream (docs/sources.md, TORQ/QuaRot background),
/// folded into the weights so that the rotated model is an ordinary model: no operator runs at
/// inference time, and every format that stores plain weights (lowbit records, GGUF for llama.cpp)
/// carries it.
///
/// With an orthogonal Q `[dim x dim]` and the residual stream h (rows are tokens) replaced by h·Q:
/// - RMSNorm is invariant (‖h·Q‖ = ‖h‖), once its gain g is folded into the linears that read it:
///   W ← W·diag(g)·Q for wq, wk, wv, w1, w3, the router and every expert's w1, w3, and the
///   classifier (final norm); the gains become 1;
/// - the linears that write into the stream turn with it: W ← Qᵀ·W for wo and w2 (every expert's
///   w2 in an MoE block; the gate weights multiply outputs, so they commute);
/// - the token embedding E ← E·Q. A tied classifier becomes untied (it is C·diag(g)·Q, the
///   embedding E·Q).
/// The model's function is unchanged up to float rounding (logits within ~1e-4 of the original on
/// the checkpoints of the tests); what changes is the weights' distribution: a randomised Hadamard Q
/// spreads outlier channels over all of them, which lowers the error of per-row and per-block
/// quantizers. What it does not rotate: the inputs of wo and w2 (per-head and SwiGLU outputs) —
/// those need the online rotations of the recipes' `rotation` field.
///
/// Complexity: O(dim²·(Σ in/out of the touched linears + vocab)) multiply-adds.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/hadamard.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <cstdint>

LOWBIT_BEGIN_NAMESPACE

/// The randomised Hadamard rotation Q = diag(s)·H/√n of width `n` (`hadamard_transform` with seeded
/// signs; a Kronecker / random-orthogonal fallback where no Hadamard matrix of order n is known),
/// dense, in double. ‖QᵀQ − I‖_max ≤ 1e-12. \throws invalid_argument (n < 1 or no construction).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] matrix_d residual_rotation_matrix(Eigen::Index n, std::uint64_t seed) {
    hadamard_options o;
    o.randomized = true;
    o.seed = seed;
    return hadamard_transform(n, o).matrix();
}

/// The model `m` with its residual stream rotated by `q` (see the file comment): every block
/// linear that reads or writes the stream, the embedding, the classifier and the norm gains
/// (which become 1) are rewritten; attention, RoPE, q/k norms, biases of q/k/v and the
/// nonlinearities are untouched. Products are formed in double and rounded to float once.
/// \param q orthogonal `[dim x dim]` (checked: ‖QᵀQ − I‖_max ≤ 1e-6).
/// \throws invalid_argument (a block linear or the classifier is not an FP32 `dense_linear`: rotate
/// before quantizing), shape_error (q not dim × dim), numeric_error (q not orthogonal or not finite).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] llama_model rotate_residual_stream(const llama_model& m, const matrix_d& q) {
    constexpr const char* where = "rotate_residual_stream";
    const Eigen::Index dim = m.config.dim;
    detail::require_dim(q.rows(), dim, where, "rows of q");
    detail::require_dim(q.cols(), dim, where, "cols of q");
    detail::require_finite(q, where, "q");
    if (((q.transpose() * q) - matrix_d::Identity(dim, dim)).cwiseAbs().maxCoeff() > 1e-6)
        throw numeric_error("lowbit: rotate_residual_stream: q is not orthogonal (|QᵀQ − I| > 1e-6)");
    llama_model r = m;
    // reads the normed stream: W·diag(g)·Q
    auto read = [&](const matrix_f& w, const vector_f& g) -> matrix_f {
        return ((w.cast<double>() * g.cast<double>().asDiagonal()) * q).cast<float>();
    };
    // writes into the stream: Qᵀ·W
    auto write = [&](const matrix_f& w) -> matrix_f { return (q.transpose() * w.cast<double>()).cast<float>(); };
    auto dense = [&](const linear_operator& op) -> const matrix_f& { return detail::dense_weight_of(op, where); };
    const vector_f ones = vector_f::Ones(dim);
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        for (const auto& id : m.block_linears(l)) {
            const matrix_f& w = dense(m.linear(id));
            const bool attention = id.slot == linear_slot::wq || id.slot == linear_slot::wk || id.slot == linear_slot::wv;
            if (attention) r.set_linear(id, make_linear(dense_linear(read(w, b.rms_att))));
            else if (id.slot == linear_slot::w1 || id.slot == linear_slot::w3) r.set_linear(id, make_linear(dense_linear(read(w, b.rms_ffn))));
            else r.set_linear(id, make_linear(dense_linear(write(w)))); // wo, w2
        }
        auto& rb = r.blocks[static_cast<std::size_t>(l)];
        if (b.is_moe()) rb.router = read(b.router, b.rms_ffn);
        rb.rms_att = ones;
        rb.rms_ffn = ones;
    }
    r.token_embedding = (m.token_embedding.cast<double>() * q).cast<float>();
    r.classifier = make_linear(dense_linear(read(dense(*m.classifier), m.rms_final)));
    r.rms_final = ones;
    return r;
}

LOWBIT_END_NAMESPACE
