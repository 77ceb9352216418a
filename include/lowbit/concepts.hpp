#pragma once
/// \file concepts.hpp
/// The concepts that connect lowbit's layers. Each is a requirement block; a type models it by
/// providing the members, no registration needed.
///
/// ```
/// concept GroupQuantizer<Q> {
///     typename Q::params;                                   // per-row parameters of one column group
///     Q::params fit(cref_matrix_f block) const;             // block: [rows x g] weights of one group
///     void round_column(const Q::params&, cref_vector_f col, // col: (rows) one column of that group
///                       Eigen::Ref<vector_f> out) const;    // out(i): value of col(i) after quantization
///                                                           //         with row i's parameters
/// }
/// ```
/// Solvers that quantize column by column with error feedback (GPTQ) call `fit` once per column
/// group — on the group's weights as updated so far — then `round_column` for every column of the
/// group. Group width and tail handling come from the solver's granularity, not the quantizer.
///
/// `RowTransform` is what rotations model (hadamard.hpp, kronecker.hpp, orthogonal.hpp) and what
/// `quantized_linear` accepts as its online rotation.
///
/// `PartRunner` is what `gemm_parallel(w, x, act, pool)` splits its output rows over:
/// `lowbit::thread_pool` (thread_pool.hpp) or any caller-owned pool with the same two members.

#include <lowbit/config.hpp>
#include <lowbit/types.hpp>

#include <concepts>

LOWBIT_BEGIN_NAMESPACE

/// A per-row element quantizer a column-wise solver can drive (see the file comment).
template <class Q>
concept GroupQuantizer = requires(const Q& q, const cref_matrix_f& block, const typename Q::params& p,
                                  const cref_vector_f& col, Eigen::Ref<vector_f> out) {
    typename Q::params;
    { q.fit(block) } -> std::same_as<typename Q::params>;
    { q.round_column(p, col, out) } -> std::same_as<void>;
};

/// A `GroupQuantizer` whose fit can also weight the error by the group's input Gram matrix:
/// `fit_with_gram(block, gram)` with `gram` `[g x g]` = XᵀX/N over the group's input columns (symmetric PSD,
/// finite; zero rows/columns for padding columns), so that the fitted parameters minimise the group's
/// layer-output error e·S·eᵀ instead of the plain ‖e‖² (E2M-ATQ's stage 2, sources.md §2.3). GPTQ
/// (gptq.hpp) passes the undamped H/2 of the group's columns (processing order) to such quantizers
/// when `gptq_options::gram_fit` is set.
template <class Q>
concept GramAwareGroupQuantizer =
    GroupQuantizer<Q> && requires(const Q& q, const cref_matrix_f& block, const Eigen::Ref<const matrix_d>& gram) {
        { q.fit_with_gram(block, gram) } -> std::same_as<typename Q::params>;
    };

/// A linear map applied to the rows of a row-major float matrix in place (x ↦ x·Q), of width `dim()`.
/// Models: `dense_rotation`, `hadamard_transform`, `kronecker_rotation`, `givens_rotation`.
template <class T>
concept RowTransform = requires(const T& t, Eigen::Ref<matrix_f> m) {
    { t.dim() } -> std::convertible_to<Eigen::Index>;
    { t.apply_rows(m) } -> std::same_as<void>;
};

/// Runs a job in parts: `p.run(job)` calls job(part, n) once for every part < n = p.size() (in any
/// order, on any threads) and returns when all have finished, rethrowing an exception of a part.
/// Models: `thread_pool` (thread_pool.hpp); a caller's own pool with the same members.
template <class P>
concept PartRunner = requires(P& p, void (*job)(int, int)) {
    { p.size() } -> std::convertible_to<int>;
    p.run(job);
};

LOWBIT_END_NAMESPACE
