#pragma once
/// \file detail/salient_gemm.hpp
/// The fp32-activation GEMM driver shared by the salient packed layouts (salient_binary.hpp,
/// salient_ternary.hpp): checks, the gather of x into packed column order, and the choice between
/// the per-token row kernels (tokens in groups of `salient_token_group`) and, from
/// `salient_batched_tokens` tokens on a vector path, 64 rows decoded to float at a time and multiplied
/// with all tokens by Eigen. The layouts supply their row kernels.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Buffers of `gemm_into` for a salient layout (a call of a shape seen before allocates nothing).
struct salient_workspace {
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x_packed; ///< tokens × padded cols
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> decoded;  ///< ≤ 64 × padded cols
    std::vector<float> dots;                                                        ///< per-token results
    std::vector<float> row;                                                         ///< one decoded row (scalar path)
};

namespace detail {

/// Tokens one row-kernel call shares a decoded weight vector with.
inline constexpr int salient_token_group = 4;
/// From this many tokens on, a vector path decodes 64 rows at a time and multiplies them by Eigen.
inline constexpr Eigen::Index salient_batched_tokens = 8;

/// Checks x and y for `w` (rows(), cols(), padded_cols(), source()), resolves the ISA and gathers x into
/// `ws.x_packed` (packed column order, zeros on padding). Returns the resolved path.
/// \throws shape_error (x.cols() ≠ cols, empty x, y of the wrong shape), numeric_error (NaN/Inf in
///         x), invalid_argument (an ISA this CPU lacks).
template <class W>
inline kernel_isa salient_gemm_start(const W& w, const cref_matrix_f& x, const Eigen::Ref<matrix_f>& y, salient_workspace& ws,
                                     kernel_isa isa, const char* where) {
    require_dim(x.cols(), w.cols(), where, "x.cols()");
    require_nonempty(x, where, "x");
    require_finite(x, where, "x");
    require_dim(y.rows(), x.rows(), where, "y.rows()");
    require_dim(y.cols(), w.rows(), where, "y.cols()");
    const kernel_isa path = resolve_isa(isa, where);
    const Eigen::Index tokens = x.rows(), np = w.padded_cols();
    ws.x_packed.resize(tokens, np);
    const auto& src = w.source();
    for (Eigen::Index k = 0; k < tokens; ++k)
        for (Eigen::Index p = 0; p < np; ++p) {
            const std::int32_t s = src[static_cast<std::size_t>(p)];
            ws.x_packed(k, p) = s >= 0 ? x(k, s) : 0.0f;
        }
    return path;
}

/// y = X·Wᵀ from `ws.x_packed` (after `salient_gemm_start`). `vector` true: the path's kernels
/// `decode_row(i, dst)` (row i in packed order, padded_cols() floats) and `dot_rows(r0, r1, xp, nt, out,
/// ldo)` (out[k·ldo + i − r0] = Σ_p w_ip·xp[k][p], nt ≤ salient_token_group) run; false: the scalar
/// reference (`w.decode_row_scalar`, then float sums in column order).
template <class W, class DecodeRow, class DotRows>
inline void salient_gemm_run(const W& w, Eigen::Ref<matrix_f> y, salient_workspace& ws, bool vector, DecodeRow&& decode_row,
                             DotRows&& dot_rows) {
    const Eigen::Index tokens = ws.x_packed.rows(), rows = w.rows(), np = w.padded_cols();
    if (tokens >= salient_batched_tokens && vector) {
        constexpr Eigen::Index block_rows = 64;
        ws.decoded.resize(std::min(block_rows, rows), np);
        for (Eigen::Index r0 = 0; r0 < rows; r0 += block_rows) {
            const Eigen::Index nr = std::min(block_rows, rows - r0);
            for (Eigen::Index i = 0; i < nr; ++i) decode_row(r0 + i, ws.decoded.row(i).data());
            y.middleCols(r0, nr).noalias() = ws.x_packed * ws.decoded.topRows(nr).transpose();
        }
        return;
    }
    constexpr int group = salient_token_group;
    ws.dots.resize(static_cast<std::size_t>(rows) * group);
    std::vector<float>& row = ws.row;
    for (Eigen::Index k0 = 0; k0 < tokens; k0 += group) {
        const int nt = static_cast<int>(std::min<Eigen::Index>(group, tokens - k0));
        const float* xp[group] = {};
        for (int k = 0; k < nt; ++k) xp[k] = ws.x_packed.row(k0 + k).data();
        float* d = ws.dots.data();
        if (vector) {
            dot_rows(Eigen::Index{0}, rows, static_cast<const float* const*>(xp), nt, d, rows);
        } else {
            row.resize(static_cast<std::size_t>(np));
            for (Eigen::Index i = 0; i < rows; ++i) {
                w.decode_row_scalar(i, row.data());
                for (int k = 0; k < nt; ++k) {
                    float acc = 0.0f;
                    for (Eigen::Index p = 0; p < np; ++p) acc += row[static_cast<std::size_t>(p)] * xp[k][p];
                    d[k * rows + i] = acc;
                }
            }
        }
        for (int k = 0; k < nt; ++k)
            for (Eigen::Index i = 0; i < rows; ++i) y(k0 + k, i) = d[k * rows + i];
    }
}

/// `gemm(w, x, act, isa)` of a salient layout W: its `gemm_into` with a fresh workspace.
template <class W>
[[nodiscard]] inline matrix_f salient_gemm(const W& w, const cref_matrix_f& x, act_fp32 act, kernel_isa isa) {
    salient_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

/// `linear_kernel` of a salient layout W with fp32 activations: its `gemm_into`, workspace local to the call.
template <class W>
struct salient_linear_fp32 {
    static void run(const W& w, const act_fp32& act, const cref_matrix_f& x, matrix_f& y) {
        y.resize(x.rows(), w.rows());
        salient_workspace ws;
        gemm_into(w, x, act, y, ws);
    }
};

/// `linear_kernel` of a salient layout W with symmetric per-token integer activations: quantize-dequantize
/// on the grid of gemm.hpp's `quantize_activations`, then the fp32 kernel.
template <class W>
struct salient_linear_int {
    static void run(const W& w, const act_int& act, const cref_matrix_f& x, matrix_f& y) {
        const matrix_f xq = int_fake_quantize(x, act.bits);
        salient_linear_fp32<W>::run(w, act_fp32{}, xq, y);
    }
};

} // namespace detail

LOWBIT_END_NAMESPACE
