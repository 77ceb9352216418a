#pragma once
/// \file bit_allocation.hpp
/// Mixed-precision bit allocation over a chain of layers (TWLA's ILA-AMP, sources.md §2.5) and
/// the plain multiple-choice knapsack it reduces to when the interaction weight β is 0.
///
/// Problem: L layers (blocks), K candidate bit-widths `bits[k]`. Single-layer costs Δ_i(b_k)
/// (`single(i, k)`, e.g. NLL increase with only block i at b_k), adjacent-pair interactions
/// K_i(b_k', b_k) (`pair[i−1](k', k)` for i = 1..L−1). Minimise
/// `Σ_i Δ_i(b_i) + β Σ_{i≥1} K_i(b_{i−1}, b_i)` subject to `Σ_i b_i ≤ budget`.
/// Solved exactly by a Viterbi DP over (layer, used bits, current choice): O(L · budget · K²) time,
/// O(L · budget · K) memory for the back-pointers.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// ILA-AMP chain allocation problem (see the file comment).
struct chain_allocation_problem {
    std::vector<int> bits;       ///< (K) candidate bit-widths, each ≥ 1 (e.g. {2, 4, 6, 8})
    matrix_d single;             ///< (L, K) single-layer costs Δ_i(bits[k])
    std::vector<matrix_d> pair;  ///< L−1 matrices (K, K): pair[i−1](k', k) = K_i(bits[k'], bits[k]); empty = none
    double beta = 0.5;           ///< interaction weight β (ILA-AMP default dp_pair_beta = 0.5)
    int budget = 0;              ///< Σ_i b_i ≤ budget (ILA-AMP: round(mean_bits · L))
};

/// An allocation: one choice per layer.
struct bit_allocation {
    std::vector<int> choice; ///< (L) index into `bits`
    std::vector<int> bits;   ///< (L) the chosen bit-widths
    double cost = 0;         ///< the minimised objective
    int total_bits = 0;      ///< Σ_i bits
};

/// ILA-AMP interaction terms from pair measurements: `K_i(b', b) = P_i(b', b) − Δ_{i−1}(b') − Δ_i(b)`,
/// with `pair_delta[i−1](k', k) = P_i` (cost with blocks i−1 and i changed together).
/// \throws shape_error if there are not L−1 matrices of size K×K; numeric_error for NaN/Inf.
[[nodiscard]] inline std::vector<matrix_d> interaction_terms(const Eigen::Ref<const matrix_d>& single,
                                                             const std::vector<matrix_d>& pair_delta) {
    constexpr const char* where = "interaction_terms";
    detail::require_nonempty(single, where, "single");
    detail::require_finite(single, where, "single");
    detail::require_dim(static_cast<Eigen::Index>(pair_delta.size()), single.rows() - 1, where,
                        "pair_delta count (must be layers − 1)");
    std::vector<matrix_d> out;
    const Eigen::Index k = single.cols();
    for (std::size_t i = 0; i < pair_delta.size(); ++i) {
        detail::require_dim(pair_delta[i].rows(), k, where, "pair_delta[i] rows (candidates)");
        detail::require_dim(pair_delta[i].cols(), k, where, "pair_delta[i] cols (candidates)");
        detail::require_finite(pair_delta[i], where, "pair_delta[i]");
        matrix_d m(k, k);
        for (Eigen::Index a = 0; a < k; ++a)
            for (Eigen::Index b = 0; b < k; ++b)
                m(a, b) = pair_delta[i](a, b) - single(static_cast<Eigen::Index>(i), a) -
                          single(static_cast<Eigen::Index>(i) + 1, b);
        out.push_back(std::move(m));
    }
    return out;
}

namespace detail {

inline void check_allocation_inputs(const std::vector<int>& bits, const Eigen::Ref<const matrix_d>& single, int budget,
                                    const char* where) {
    require(!bits.empty(), where, "argument 'bits' is an empty candidate list");
    for (int b : bits) require(b >= 1, where, "every candidate bit-width must be >= 1");
    require_nonempty(single, where, "single");
    require_dim(single.cols(), static_cast<Eigen::Index>(bits.size()), where, "single cols (must equal bits.size())");
    require_finite(single, where, "single");
    require(budget >= 0, where, "argument 'budget' must be >= 0");
    const int minb = *std::min_element(bits.begin(), bits.end());
    require(static_cast<long long>(minb) * single.rows() <= budget, where,
            "infeasible: budget " + std::to_string(budget) + " is below layers × smallest bit-width = " +
                std::to_string(static_cast<long long>(minb) * single.rows()));
}

inline bit_allocation finish_allocation(std::vector<int> choice, const std::vector<int>& bits, double cost) {
    bit_allocation out;
    out.cost = cost;
    for (int c : choice) {
        out.bits.push_back(bits[static_cast<std::size_t>(c)]);
        out.total_bits += bits[static_cast<std::size_t>(c)];
    }
    out.choice = std::move(choice);
    return out;
}

} // namespace detail

/// Exact minimiser of the ILA-AMP chain objective (Viterbi with budget). Ties: the first minimum in
/// (used bits ascending, choice ascending) order.
/// \throws invalid_argument (empty candidates, bit-width < 1, budget < 0 or infeasible, β not finite),
///         shape_error (sizes), numeric_error (NaN/Inf costs).
[[nodiscard]] inline bit_allocation allocate_bits_chain(const chain_allocation_problem& p) {
    constexpr const char* where = "allocate_bits_chain";
    detail::check_allocation_inputs(p.bits, p.single, p.budget, where);
    detail::require(std::isfinite(p.beta), where, "argument 'beta' must be finite");
    const Eigen::Index L = p.single.rows();
    const int K = static_cast<int>(p.bits.size()), B = p.budget;
    if (!p.pair.empty()) {
        detail::require_dim(static_cast<Eigen::Index>(p.pair.size()), L - 1, where, "pair count (must be layers − 1)");
        for (const auto& m : p.pair) {
            detail::require_dim(m.rows(), K, where, "pair[i] rows (candidates)");
            detail::require_dim(m.cols(), K, where, "pair[i] cols (candidates)");
            detail::require_finite(m, where, "pair[i]");
        }
    }
    constexpr double inf = std::numeric_limits<double>::infinity();
    const auto idx = [&](int c, int k) { return static_cast<std::size_t>(c) * static_cast<std::size_t>(K) + static_cast<std::size_t>(k); };
    std::vector<double> cur(static_cast<std::size_t>(B + 1) * K, inf), nxt;
    std::vector<std::vector<int>> back(static_cast<std::size_t>(L)); // argmin previous choice, per (c, k)
    for (int k = 0; k < K; ++k)
        if (p.bits[static_cast<std::size_t>(k)] <= B) cur[idx(p.bits[static_cast<std::size_t>(k)], k)] = p.single(0, k);
    for (Eigen::Index i = 1; i < L; ++i) {
        nxt.assign(cur.size(), inf);
        auto& bk = back[static_cast<std::size_t>(i)];
        bk.assign(cur.size(), -1);
        for (int c = 0; c <= B; ++c)
            for (int k = 0; k < K; ++k) {
                const int prev_c = c - p.bits[static_cast<std::size_t>(k)];
                if (prev_c < 0) continue;
                double best = inf;
                int arg = -1;
                for (int kp = 0; kp < K; ++kp) {
                    const double d = cur[idx(prev_c, kp)];
                    if (d == inf) continue;
                    const double inter = p.pair.empty() ? 0.0 : p.beta * p.pair[static_cast<std::size_t>(i - 1)](kp, k);
                    const double v = d + inter;
                    if (v < best) {
                        best = v;
                        arg = kp;
                    }
                }
                if (arg >= 0) {
                    nxt[idx(c, k)] = best + p.single(i, k);
                    bk[idx(c, k)] = arg;
                }
            }
        cur.swap(nxt);
    }
    double best = inf;
    int bc = -1, bkk = -1;
    for (int c = 0; c <= B; ++c)
        for (int k = 0; k < K; ++k)
            if (cur[idx(c, k)] < best) {
                best = cur[idx(c, k)];
                bc = c;
                bkk = k;
            }
    std::vector<int> choice(static_cast<std::size_t>(L));
    for (Eigen::Index i = L - 1; i >= 0; --i) {
        choice[static_cast<std::size_t>(i)] = bkk;
        if (i == 0) break;
        const int prev = back[static_cast<std::size_t>(i)][idx(bc, bkk)];
        bc -= p.bits[static_cast<std::size_t>(bkk)];
        bkk = prev;
    }
    return detail::finish_allocation(std::move(choice), p.bits, best);
}

/// Plain multiple-choice knapsack: minimise Σ_i single(i, k_i) subject to Σ_i bits[k_i] ≤ budget —
/// ILA-AMP with β = 0. Independent DP over (layer, exact used bits): O(L · budget · K).
/// \throws as `allocate_bits_chain`.
[[nodiscard]] inline bit_allocation allocate_bits_knapsack(const std::vector<int>& bits,
                                                           const Eigen::Ref<const matrix_d>& single, int budget) {
    constexpr const char* where = "allocate_bits_knapsack";
    detail::check_allocation_inputs(bits, single, budget, where);
    const Eigen::Index L = single.rows();
    const int K = static_cast<int>(bits.size());
    constexpr double inf = std::numeric_limits<double>::infinity();
    // e[i][c]: min cost of layers 0..i using exactly c bits.
    std::vector<std::vector<double>> e(static_cast<std::size_t>(L), std::vector<double>(static_cast<std::size_t>(budget) + 1, inf));
    std::vector<std::vector<int>> arg(static_cast<std::size_t>(L), std::vector<int>(static_cast<std::size_t>(budget) + 1, -1));
    for (Eigen::Index i = 0; i < L; ++i)
        for (int c = 0; c <= budget; ++c)
            for (int k = 0; k < K; ++k) {
                const int pc = c - bits[static_cast<std::size_t>(k)];
                if (pc < 0) continue;
                const double base = i == 0 ? (pc == 0 ? 0.0 : inf) : e[static_cast<std::size_t>(i - 1)][static_cast<std::size_t>(pc)];
                if (base == inf) continue;
                const double v = base + single(i, k);
                if (v < e[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)]) {
                    e[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)] = v;
                    arg[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)] = k;
                }
            }
    const auto& last = e[static_cast<std::size_t>(L - 1)];
    const int bc = static_cast<int>(std::min_element(last.begin(), last.end()) - last.begin());
    std::vector<int> choice(static_cast<std::size_t>(L));
    int c = bc;
    for (Eigen::Index i = L - 1; i >= 0; --i) {
        const int k = arg[static_cast<std::size_t>(i)][static_cast<std::size_t>(c)];
        choice[static_cast<std::size_t>(i)] = k;
        c -= bits[static_cast<std::size_t>(k)];
    }
    return detail::finish_allocation(std::move(choice), bits, last[static_cast<std::size_t>(bc)]);
}

LOWBIT_END_NAMESPACE
