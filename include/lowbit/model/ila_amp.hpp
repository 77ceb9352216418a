#pragma once
/// \file model/ila_amp.hpp
/// ILA-AMP (TWLA's inter-layer aware activation mixed precision, docs/sources.md §2.5): one
/// activation bit-width per transformer block, chosen from candidates (default {2, 4, 6, 8}, the
/// largest being the baseline) under a mean-bit budget Σ_i b_i ≤ round(b̄·L), from NLL tables
/// measured on calibration text:
/// - NLL_base: every block at the baseline;
/// - single: Δ_i(b) = NLL(block i at b, the others at the baseline) − NLL_base (Δ_i(base) = 0);
/// - pair (i ≥ 1): P_i(b', b) = NLL(block i−1 at b', block i at b, the others at the baseline) − NLL_base,
///   interaction K_i(b', b) = P_i(b', b) − Δ_{i−1}(b') − Δ_i(b) (zero when either is at the baseline);
/// then the chain DP of bit_allocation.hpp minimises Σ Δ_i(b_i) + β Σ K_i(b_{i−1}, b_i).
///
/// `ila_amp_measure` builds the tables from any NLL oracle `nll(block_bits)`; `ila_amp_model_tables`
/// is that oracle for a `llama_model`: it swaps one or two blocks' linears for the operators a
/// caller-given builder makes at the requested width and scores the calibration windows with
/// `perplexity` (mean NLL). Cost: 1 + (K−1)·L + (K−1)²·(L−1) NLL evaluations (K candidates, L
/// blocks; 64 for K = 4, L = 6), each a forward pass over the calibration windows.
/// Calibration text only: the tables must never see the evaluation text.

#include <lowbit/bit_allocation.hpp>
#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// Options of the ILA-AMP tables and allocation.
struct ila_amp_options {
    std::vector<int> candidates{2, 4, 6, 8}; ///< candidate widths, distinct, each in 2..8; the largest is the baseline
    double mean_bits = 4.0;                  ///< target mean b̄: budget round(b̄·L); in [min, max] of the candidates
    double beta = 0.5;                       ///< interaction weight β ≥ 0
    /// Called once per NLL evaluation ("ila-amp NLL 5/64: block 1 at 4 bits: 3.2104 (Δ +0.0123)"); optional.
    std::function<void(const std::string&)> progress;
};

/// The measured ILA-AMP tables (see the file comment). Plain data.
struct ila_amp_tables {
    std::vector<int> candidates; ///< (K) candidate widths, ascending; candidates.back() is the baseline
    double nll_base = 0;         ///< NLL with every block at the baseline
    matrix_d single;             ///< (L, K) Δ_i(candidates[k]); the baseline column is 0
    std::vector<matrix_d> pair;  ///< L−1 matrices (K, K): pair[i−1](k', k) = P_i(candidates[k'], candidates[k])
    int evaluations = 0;         ///< NLL evaluations made (base included)
};

namespace detail {

/// Candidates sorted ascending after validation. \throws invalid_argument (empty, repeated, outside 2..8).
inline std::vector<int> ila_candidates(std::vector<int> c, const char* where) {
    require(!c.empty(), where, "the ILA-AMP candidate list is empty");
    std::sort(c.begin(), c.end());
    for (std::size_t i = 0; i < c.size(); ++i) {
        require(c[i] >= 2 && c[i] <= 8, where, "ILA-AMP candidate bit-widths must lie in 2..8, got " + std::to_string(c[i]));
        require(i == 0 || c[i] != c[i - 1], where, "ILA-AMP candidate " + std::to_string(c[i]) + " is given twice");
    }
    return c;
}

/// Validates mean bits and β against sorted candidates. \throws invalid_argument.
inline void check_ila_mean_beta(const std::vector<int>& c, double mean_bits, double beta, const char* where) {
    require(std::isfinite(mean_bits) && mean_bits >= c.front() && mean_bits <= c.back(), where,
            "ILA-AMP mean bits must lie in [smallest, largest candidate] = [" + std::to_string(c.front()) + ", " +
                std::to_string(c.back()) + "]");
    require(std::isfinite(beta) && beta >= 0, where, "ILA-AMP beta must be finite and >= 0");
}

inline std::string ila_real(double x, const char* fmt) {
    char b[48];
    std::snprintf(b, sizeof b, fmt, x);
    return b;
}

} // namespace detail

/// ILA-AMP tables from an NLL oracle: `nll(bits)` returns the calibration NLL with block i at `bits[i]`
/// (`bits` has `layers` entries). Calls it 1 + (K−1)·L + (K−1)²·(L−1) times, in this order: base, then
/// for i = 0..L−1 the single entries (candidates ascending), then for i = 1..L−1 the pair entries
/// (b' then b ascending); every value must be finite.
/// \throws invalid_argument (layers < 1, bad candidates), numeric_error (a non-finite NLL),
///         whatever `nll` throws.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] ila_amp_tables ila_amp_measure(int layers, const ila_amp_options& opt,
                                             const std::function<double(const std::vector<int>&)>& nll) {
    constexpr const char* where = "ila_amp_measure";
    detail::require(layers >= 1, where, "layers must be >= 1");
    detail::require(static_cast<bool>(nll), where, "argument 'nll' is empty");
    ila_amp_tables t;
    t.candidates = detail::ila_candidates(opt.candidates, where);
    const int K = static_cast<int>(t.candidates.size()), base = t.candidates.back();
    const int total = 1 + (K - 1) * layers + (K - 1) * (K - 1) * (layers - 1);
    std::vector<int> bits(static_cast<std::size_t>(layers), base);
    auto eval = [&](const std::string& what) {
        const double v = nll(bits);
        detail::require<numeric_error>(std::isfinite(v), where, "the NLL of " + what + " is not finite");
        ++t.evaluations;
        if (opt.progress)
            opt.progress("ila-amp NLL " + std::to_string(t.evaluations) + "/" + std::to_string(total) + ": " + what + ": " +
                         detail::ila_real(v, "%.5f") +
                         (t.evaluations > 1 ? " (Δ " + detail::ila_real(v - t.nll_base, "%+.5f") + ")" : ""));
        return v;
    };
    t.nll_base = eval("every block at " + std::to_string(base) + " bits");
    t.single = matrix_d::Zero(layers, K);
    for (int i = 0; i < layers; ++i)
        for (int k = 0; k + 1 < K; ++k) {
            bits[static_cast<std::size_t>(i)] = t.candidates[static_cast<std::size_t>(k)];
            t.single(i, k) = eval("block " + std::to_string(i) + " at " + std::to_string(bits[static_cast<std::size_t>(i)]) + " bits") -
                             t.nll_base;
            bits[static_cast<std::size_t>(i)] = base;
        }
    for (int i = 1; i < layers; ++i) {
        matrix_d p(K, K);
        for (int a = 0; a < K; ++a)
            for (int b = 0; b < K; ++b) {
                if (a == K - 1 || b == K - 1) { // one of the two at the baseline: the single entry, K_i = 0
                    p(a, b) = t.single(i - 1, a) + t.single(i, b);
                    continue;
                }
                bits[static_cast<std::size_t>(i - 1)] = t.candidates[static_cast<std::size_t>(a)];
                bits[static_cast<std::size_t>(i)] = t.candidates[static_cast<std::size_t>(b)];
                p(a, b) = eval("blocks " + std::to_string(i - 1) + ", " + std::to_string(i) + " at " +
                               std::to_string(bits[static_cast<std::size_t>(i - 1)]) + ", " +
                               std::to_string(bits[static_cast<std::size_t>(i)]) + " bits") -
                          t.nll_base;
                bits[static_cast<std::size_t>(i - 1)] = base;
                bits[static_cast<std::size_t>(i)] = base;
            }
        t.pair.push_back(std::move(p));
    }
    return t;
}

/// The DP problem of measured tables: single costs Δ, interactions K_i = P_i − Δ_{i−1} − Δ_i
/// (`interaction_terms`), budget round(mean_bits · L) (half away from zero), weight β.
/// \throws invalid_argument (mean bits outside [min, max] candidate, β < 0 or not finite),
///         shape_error / numeric_error (inconsistent tables).
[[nodiscard]] inline chain_allocation_problem ila_amp_problem(const ila_amp_tables& t, double mean_bits, double beta) {
    constexpr const char* where = "ila_amp_problem";
    const std::vector<int> c = detail::ila_candidates(t.candidates, where);
    detail::require(c == t.candidates, where, "table candidates must be ascending");
    detail::check_ila_mean_beta(c, mean_bits, beta, where);
    detail::require_dim(t.single.cols(), static_cast<Eigen::Index>(c.size()), where, "single cols (candidates)");
    chain_allocation_problem p;
    p.bits = c;
    p.single = t.single;
    p.pair = interaction_terms(t.single, t.pair);
    p.beta = beta;
    p.budget = static_cast<int>(std::lround(mean_bits * static_cast<double>(t.single.rows())));
    return p;
}

/// One width per block: the ILA-AMP DP on measured tables (`allocate_bits_chain(ila_amp_problem(...))`).
/// \throws as ila_amp_problem.
[[nodiscard]] inline bit_allocation ila_amp_allocate(const ila_amp_tables& t, double mean_bits, double beta) {
    return allocate_bits_chain(ila_amp_problem(t, mean_bits, beta));
}

/// The operators of block `layer` with activations at `bits`: (linear, operator) for every linear of
/// `llama_model::block_linears(layer)` (or a subset: the others keep the base model's operators).
using ila_block_builder =
    std::function<std::vector<std::pair<linear_id, std::shared_ptr<const linear_operator>>>(int layer, int bits)>;

/// ILA-AMP tables of a model: `base` runs every block at the baseline (the largest candidate);
/// an evaluation swaps the changed blocks' linears for `build(layer, bits)` and scores `calib_tokens`
/// with `perplexity(m, calib_tokens, window, windows)` (mean NLL, nats), then restores them.
/// \throws invalid_argument (bad options, windows < 1), shape_error (too few calibration tokens),
///         numeric_error (non-finite NLL), and whatever `build` throws.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] ila_amp_tables ila_amp_model_tables(const llama_model& base, const ila_block_builder& build,
                                                  std::span<const int> calib_tokens, int window, int windows,
                                                  const ila_amp_options& opt) {
    constexpr const char* where = "ila_amp_model_tables";
    detail::require(windows >= 1, where, "windows must be >= 1");
    detail::require(static_cast<bool>(build), where, "argument 'build' is empty");
    llama_model m = base;
    const int L = static_cast<int>(m.blocks.size());
    const int top = detail::ila_candidates(opt.candidates, where).back();
    return ila_amp_measure(L, opt, [&](const std::vector<int>& bits) {
        std::vector<int> changed;
        for (int l = 0; l < L; ++l) {
            if (bits[static_cast<std::size_t>(l)] == top) continue;
            changed.push_back(l);
            for (auto& [id, op] : build(l, bits[static_cast<std::size_t>(l)])) {
                detail::require(id.layer == l, where, "the builder returned a linear of another block");
                m.set_linear(id, std::move(op));
            }
        }
        const double v = perplexity(m, calib_tokens, window, windows).mean_nll;
        for (int l : changed) m.blocks[static_cast<std::size_t>(l)] = base.blocks[static_cast<std::size_t>(l)];
        return v;
    });
}

LOWBIT_END_NAMESPACE
