#pragma once
/// \file quantized_linear.hpp
/// The quantized linear layer downstream engines instantiate: y = x·Wᵀ computed as
///
///     x̃ = R(x)                  online rotation (a `RowTransform`: x ↦ x·Q), or none
///     y  = K(W̃, A(x̃))           the kernel of the weight storage and the activation policy
///        + (x̃·Bᵀ)·Aᵀ            optional low-rank correction L = A·B (PSP, SVD compensation)
///
/// with the weights stored as W̃ = W·Q (the rotation folded offline, so (xQ)(WQ)ᵀ = x Wᵀ).
///
/// Policies (template parameters of `quantized_linear<Weights, Activation, Rotation>`):
/// - Weights: `packed_matrix<F>` (pack.hpp: codes t ∈ format, per-row α, optional per-row μ;
///   w_ij = α_i·t_ij + μ_i) and `grouped_int4_matrix` (per-group α, μ) run by the gemm.hpp kernels, or
///   `dense_weights` (FP32 or a dequantized weight, Eigen GEMM).
/// - Activation: `act_fp32` (no activation quantization), `act_int{bits}` (symmetric per-token
///   integers; packed weights: inside the integer kernel; dense weights: quantize-dequantize then
///   GEMM, the same grid), `act_fake<Q>` (any callable `matrix_f → matrix_f`, e.g.
///   `per_token_fake_quant` or an MX quantize-dequantize, applied before a dense GEMM).
/// - Rotation: `no_rotation` or any `RowTransform` (hadamard_transform, kronecker rotations, ...).
/// An unsupported (Weights, Activation) pair is refused at compile time by `linear_kernel`'s
/// primary template.
///
/// `storage_bits()` counts what the layer stores for its weights: packed codes, scales, offsets and
/// low-rank factors (32 bits per float). The rotation is not counted (a seeded Hadamard transform is
/// regenerated from its width and seed).

#include <lowbit/concepts.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/detail/low_rank_factors.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/types.hpp>

#include <optional>
#include <type_traits>
#include <utility>

LOWBIT_BEGIN_NAMESPACE

/// Rotation policy: the identity (no online rotation).
struct no_rotation {};

/// Weight storage policy: a dense float `[out x in]` matrix (FP32 or dequantized), Eigen GEMM.
struct dense_weights {
    matrix_f w; ///< (out, in)
};

/// Activation policy: any callable mapping `[tokens x in]` to its fake-quantized value of the same
/// shape (e.g. `per_token_fake_quant`, an MX quantize-dequantize), applied before a dense GEMM.
template <class Q>
struct act_fake {
    Q quantize; ///< the transform
};

namespace detail {

template <class W>
inline Eigen::Index weight_rows(const W& w) {
    if constexpr (std::is_same_v<W, dense_weights>) return w.w.rows();
    else return w.rows();
}
template <class W>
inline Eigen::Index weight_cols(const W& w) {
    if constexpr (std::is_same_v<W, dense_weights>) return w.w.cols();
    else return w.cols();
}
template <class W>
inline double weight_bits(const W& w) {
    if constexpr (std::is_same_v<W, dense_weights>) return 32.0 * static_cast<double>(w.w.size());
    else return w.bits_per_weight() * static_cast<double>(w.rows()) * static_cast<double>(w.cols());
}

/// Symmetric per-token quantize-dequantize with the grid of gemm.hpp's `quantize_activations`.
inline matrix_f int_fake_quantize(const cref_matrix_f& x, int bits) {
    const quantized_activations q = quantize_activations(x, bits);
    matrix_f out(x.rows(), x.cols());
    for (Eigen::Index k = 0; k < x.rows(); ++k)
        for (Eigen::Index j = 0; j < x.cols(); ++j)
            out(k, j) = q.scale(k) * static_cast<float>(q.q(k, j));
    return out;
}

} // namespace detail

/// Kernel of a (Weights, Activation) pair: `run(w, act, x, y)` computes y = A(x)·Wᵀ (x `[tokens x in]`,
/// y resized to `[tokens x out]`; a y of that shape is reused).
/// The primary template refuses pairs lowbit has no kernel for.
template <class Weights, class Activation>
struct linear_kernel {
    static_assert(detail::dependent_false<Weights, Activation>,
                  "lowbit: no linear kernel for this (weights, activation) pair: packed weights take act_fp32 or "
                  "act_int; dense weights take act_fp32, act_int or act_fake<Q>");
};

/// Packed weights × fp32 or integer activations: the gemm.hpp kernels (ISA chosen once per call).
/// One token (decode) runs `gemv_into` straight into y: activations and dot products on the stack,
/// no allocation; more tokens run `gemm_into` with a workspace local to the call. Results are those
/// of `gemm(w, x, act)` bit for bit.
template <class F, class Act>
    requires(std::is_same_v<Act, act_fp32> || std::is_same_v<Act, act_int>)
struct linear_kernel<packed_matrix<F>, Act> {
    static void run(const packed_matrix<F>& w, const Act& act, const cref_matrix_f& x, matrix_f& y) {
        y.resize(x.rows(), w.rows());
        if (x.rows() == 1) {
            gemv_into(w, Eigen::Map<const vector_f>(x.data(), x.cols()), act, Eigen::Map<vector_f>(y.data(), w.rows()));
            return;
        }
        gemm_workspace ws;
        gemm_into(w, x, act, y, ws);
    }
};

/// Grouped int4 weights (per-group scale and offset) × fp32 or integer activations: gemm.hpp's
/// grouped kernels. One token with fp32 activations (decode) runs `gemv_into` straight into y (no
/// allocation); otherwise `gemm_into` with a workspace local to the call. Results are those of
/// `gemm(w, x, act)` bit for bit.
template <class Act>
    requires(std::is_same_v<Act, act_fp32> || std::is_same_v<Act, act_int>)
struct linear_kernel<grouped_int4_matrix, Act> {
    static void run(const grouped_int4_matrix& w, const Act& act, const cref_matrix_f& x, matrix_f& y) {
        y.resize(x.rows(), w.rows());
        if constexpr (std::is_same_v<Act, act_fp32>) {
            if (x.rows() == 1) {
                gemv_into(w, Eigen::Map<const vector_f>(x.data(), x.cols()), act, Eigen::Map<vector_f>(y.data(), w.rows()));
                return;
            }
        }
        gemm_workspace ws;
        gemm_into(w, x, act, y, ws);
    }
};

/// Dense weights × fp32 activations: Eigen GEMM.
template <>
struct linear_kernel<dense_weights, act_fp32> {
    template <class = void> // compiled only where called (docs/compile_time.md)
    static void run(const dense_weights& w, const act_fp32&, const cref_matrix_f& x, matrix_f& y) {
        y.resize(x.rows(), w.w.rows());
        y.noalias() = x * w.w.transpose();
    }
};

/// Dense weights × symmetric per-token integer activations: quantize-dequantize, then Eigen GEMM.
template <>
struct linear_kernel<dense_weights, act_int> {
    template <class = void> // compiled only where called (docs/compile_time.md)
    static void run(const dense_weights& w, const act_int& act, const cref_matrix_f& x, matrix_f& y) {
        const matrix_f xq = detail::int_fake_quantize(x, act.bits);
        y.resize(x.rows(), w.w.rows());
        y.noalias() = xq * w.w.transpose();
    }
};

/// Dense weights × a fake-quantizing activation transform.
template <class Q>
struct linear_kernel<dense_weights, act_fake<Q>> {
    template <class = void> // compiled only where called (docs/compile_time.md)
    static void run(const dense_weights& w, const act_fake<Q>& act, const cref_matrix_f& x, matrix_f& y) {
        const matrix_f xq = act.quantize(matrix_f(x));
        detail::require<shape_error>(xq.rows() == x.rows() && xq.cols() == x.cols(), "quantized_linear",
                                     "the activation transform changed the shape of x");
        y.resize(x.rows(), w.w.rows());
        y.noalias() = xq * w.w.transpose();
    }
};

/// A quantized linear layer (see the file comment). Models model.hpp's `LinearOperator`.
///
/// \tparam Weights     `packed_matrix<F>`, `grouped_int4_matrix` or `dense_weights`, holding W·Q `[out x in]`.
/// \tparam Activation  `act_fp32`, `act_int`, or `act_fake<Q>`.
/// \tparam Rotation    `no_rotation` or a `RowTransform` of width in.
template <class Weights, class Activation = act_fp32, class Rotation = no_rotation>
class quantized_linear {
public:
    /// \param weights     W·Q `[out x in]` (non-empty).
    /// \param activation  the activation policy.
    /// \param rotation    the online rotation Q (`dim()` must equal in).
    /// \param correction  optional low-rank term L = a·b with a `[out x r]`, b `[r x in]` (in the rotated
    ///                    basis, like the weights).
    /// \throws shape_error when the rotation width or the correction's shapes disagree with the weights.
    quantized_linear(Weights weights, Activation activation = {}, Rotation rotation = {},
                     std::optional<low_rank> correction = std::nullopt)
        : w_(std::move(weights)), act_(std::move(activation)), rot_(std::move(rotation)), lr_(std::move(correction)) {
        constexpr const char* where = "quantized_linear";
        detail::require<shape_error>(detail::weight_rows(w_) > 0 && detail::weight_cols(w_) > 0, where,
                                     "argument 'weights' is empty");
        if constexpr (!std::is_same_v<Rotation, no_rotation>) {
            static_assert(RowTransform<Rotation>, "lowbit: quantized_linear: Rotation must be a RowTransform");
            detail::require_dim(rot_.dim(), detail::weight_cols(w_), where, "rotation width");
        }
        if (lr_) {
            detail::require_dim(lr_->a.rows(), detail::weight_rows(w_), where, "rows of the low-rank factor a");
            detail::require_dim(lr_->b.cols(), detail::weight_cols(w_), where, "columns of the low-rank factor b");
            detail::require_dim(lr_->b.rows(), lr_->a.cols(), where, "rank of the low-rank factors");
        }
        (void)linear_kernel<Weights, Activation>{}; // refuse unsupported pairs at construction
    }

    [[nodiscard]] Eigen::Index in_features() const { return detail::weight_cols(w_); }   ///< in
    [[nodiscard]] Eigen::Index out_features() const { return detail::weight_rows(w_); }  ///< out

    /// y = x·Wᵀ (rotation, activation policy, kernel, low-rank term); x is `[tokens x in]`, y is
    /// resized to `[tokens x out]` (reused when it has that shape). The rotated copy of x lives on the
    /// stack up to `rotation_stack_elems` entries (a decode step allocates nothing there).
    /// \throws shape_error if x has the wrong width; the kernels' errors (NaN/Inf activations).
    void apply(const matrix_f& x, matrix_f& y) const {
        detail::require_dim(x.cols(), in_features(), "quantized_linear::apply", "columns of x");
        if constexpr (std::is_same_v<Rotation, no_rotation>) {
            run(x, y);
        } else if (x.size() <= rotation_stack_elems) {
            alignas(64) float buf[rotation_stack_elems];
            Eigen::Map<matrix_f> xr(buf, x.rows(), x.cols());
            xr = x;
            rot_.apply_rows(xr);
            run(xr, y);
        } else {
            matrix_f xr = x;
            rot_.apply_rows(xr);
            run(xr, y);
        }
    }

    /// Most entries of x whose rotated copy `apply` keeps on the stack (16 KiB).
    static constexpr Eigen::Index rotation_stack_elems = 4096;

    /// Bits stored for the weights: codes + scales + offsets (+ 32 per low-rank factor entry).
    [[nodiscard]] double storage_bits() const {
        double bits = detail::weight_bits(w_);
        if (lr_) bits += 32.0 * static_cast<double>(lr_->a.size() + lr_->b.size());
        return bits;
    }

    [[nodiscard]] const Weights& weights() const { return w_; }                  ///< the stored W·Q
    [[nodiscard]] const Activation& activation() const { return act_; }          ///< activation policy
    [[nodiscard]] const Rotation& rotation() const { return rot_; }              ///< the rotation
    [[nodiscard]] const std::optional<low_rank>& correction() const { return lr_; } ///< low-rank term

private:
    void run(const cref_matrix_f& x, matrix_f& y) const {
        linear_kernel<Weights, Activation>::run(w_, act_, x, y);
        if (lr_) y.noalias() += (x * lr_->b.transpose()) * lr_->a.transpose();
    }

    Weights w_;
    Activation act_;
    Rotation rot_;
    std::optional<low_rank> lr_;
};

LOWBIT_END_NAMESPACE
