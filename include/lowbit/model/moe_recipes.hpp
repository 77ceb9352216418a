#pragma once
/// \file model/moe_recipes.hpp
/// Mixture-of-Experts quantization pipelines on a routed-expert `llama_model` (Qwen3-MoE):
/// - calibration capture per layer on the partially quantized model: every expert linear's
///   Hessian over the tokens routed to it, optionally weighted by their gate affinities (AGQ,
///   docs/sources.md §11.2: H_E = (2/N_E) Σ_{t→E} c_t x_t x_tᵀ), and the attention linears' plain
///   Hessians (`capture_layer_hessians`);
/// - EBSS (§11.1): calibration sequences the model samples itself with an expert-balance beam
///   search (`ebss_sample`);
/// - MoEQuant = EBSS + AGQ + GPTQ at 4, 3 or 2 bits per weight (`quantize_moe`), each component
///   switchable (`moe_quant_config::agq`, the caller's choice of calibration tokens, `gptq`), so
///   plain RTN / GPTQ at the same bits are the same function with components off;
/// - routing diagnostics against the float model: router top-k agreement and expert load
///   (`compare_routing`).
///
/// Storage and bits: weights are per-output-row affine integer grids value = α·t + μ with α, μ
/// rounded to fp16 and t ∈ [−2^(b−1), 2^(b−1) − 1] (b = bits; asymmetric min–max grid by default).
/// Every grid is stored in lowbit's packed `int4` container (4-bit codes, the format the int4
/// kernels run), because the packed layouts have no 3-bit or 4-level 2-bit format the model
/// loader rebuilds; a W3 or W2 layer is therefore *counted at the container's 4 bits* plus 32 bits
/// per row (α, μ), exactly what `save_quantized_model` writes. `moe_quant_result::nominal_bits`
/// reports what a tight b-bit packing would cost, for reference only.
/// The router, norms, embedding and classifier stay float; expert linears run on the packed int4
/// kernels over the rows of the tokens routed to each expert (no dense dequantized copies).
///
/// Threads: none (everything runs on the calling thread). Deterministic for a fixed seed.
///
/// Compile time: `quantize_moe`, `capture_layer_hessians` and `quantize_grid_record` are function templates
/// with one defaulted, unused parameter (`template <class = void>`; call them as ordinary functions), so
/// their Eigen decompositions and solvers are compiled only in a translation unit that calls them
/// (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/model/recipes.hpp>
#include <lowbit/moe.hpp>
#include <lowbit/pack.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

// ---------------------------------------------------------------------------------------------
// Calibration capture
// ---------------------------------------------------------------------------------------------

/// What `capture_layer_hessians` accumulates for one block.
struct layer_calibration {
    /// GPTQ Hessian of every block linear of the layer that saw a token, keyed by `linear_id::name()`.
    std::map<std::string, gptq_hessian> hessians;
    /// Tokens routed to each expert (MoE blocks; empty otherwise).
    std::vector<long long> routed;
    /// Sum of the gate weights each expert received.
    std::vector<double> gate_mass;
};

/// Runs the calibration windows (`capture_linear_inputs` cutting) through `m` (blocks < layer may be
/// quantized already: their outputs are what this block sees) and accumulates the Hessian of every
/// linear of block `layer`: attention (and dense FFN) linears over all tokens; each expert's w1, w3
/// (input: the normed hidden state) and w2 (input: its SwiGLU activation) over the tokens routed to
/// it, each token weighted by its gate affinity c_t when `affinity_weighted` (AGQ) and by 1
/// otherwise. \throws as capture_linear_inputs. O(windows · forward + Σ tokens·n² per linear).
template <class = void>
[[nodiscard]] layer_calibration capture_layer_hessians(const llama_model& m, int layer, std::span<const int> tokens,
                                                       bool affinity_weighted, int window = -1, int max_windows = -1) {
    layer_calibration cal;
    const auto& b = m.blocks.at(static_cast<std::size_t>(layer));
    if (b.is_moe()) {
        cal.routed.assign(b.experts.size(), 0);
        cal.gate_mass.assign(b.experts.size(), 0.0);
    }
    forward_hooks hooks;
    hooks.on_linear_input = [&](int l, linear_slot s, const matrix_f& x) {
        if (l == layer) cal.hessians.try_emplace(linear_id{l, s}.name(), x.cols()).first->second.add(x);
    };
    hooks.on_expert_input = [&](int l, int e, linear_slot s, const matrix_f& x, const vector_f& gates,
                                std::span<const Eigen::Index>) {
        if (l != layer) return;
        auto& h = cal.hessians.try_emplace(linear_id{l, s, e}.name(), x.cols()).first->second;
        if (affinity_weighted) h.add(x, gates);
        else h.add(x);
        if (s == linear_slot::w1) {
            cal.routed[static_cast<std::size_t>(e)] += x.rows();
            cal.gate_mass[static_cast<std::size_t>(e)] += static_cast<double>(gates.sum());
        }
    };
    capture_linear_inputs(m, tokens, hooks, window, max_windows);
    return cal;
}

// ---------------------------------------------------------------------------------------------
// EBSS
// ---------------------------------------------------------------------------------------------

/// Options of `ebss_sample`.
struct ebss_options {
    int sequences = 16;   ///< NS: sequences to generate
    int length = 256;     ///< tokens per sequence (first token included)
    int beam = 4;         ///< w: beams kept
    int candidates = 4;   ///< next tokens tried per beam (the most likely ones)
    double tau = 0.1;     ///< τ: weight 1/τ of the expert-imbalance term
    std::uint64_t seed = 0; ///< first tokens are drawn uniformly from [1, vocab) with std::mt19937_64(seed)
    /// Progress (sequence done, sequences), optional.
    std::function<void(int, int)> progress;
};

/// EBSS (MoEQuant §11.1): `sequences` self-generated calibration sequences. Each starts from a random
/// token; at every step each of the `beam` beams proposes its `candidates` most likely next tokens;
/// every candidate (prefix + v) is run through the model (so its own routing counts) and scored
/// `NLL(prefix + v)/len + σ/τ`, σ = mean over MoE layers of the sample standard deviation of the
/// sequence's expert-usage fractions (`expert_balance_std`); the `beam` lowest scores survive
/// (`ebss_select`); the best final beam is the sequence. Deterministic for a seed.
/// \throws invalid_argument (non-MoE model, options out of range).
/// Complexity: sequences · length · beam · candidates one-token forward steps.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] std::vector<std::vector<int>> ebss_sample(const llama_model& m, const ebss_options& o) {
    constexpr const char* where = "ebss_sample";
    detail::require(o.sequences >= 1 && o.length >= 2 && o.beam >= 1 && o.candidates >= 1, where,
                    "sequences, beam, candidates must be >= 1 and length >= 2");
    detail::require(o.tau > 0.0, where, "tau must be > 0");
    detail::require(o.length <= m.config.seq_len, where, "length must be <= seq_len");
    std::vector<int> moe_layers;
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l)
        if (m.blocks[static_cast<std::size_t>(l)].is_moe()) moe_layers.push_back(l);
    detail::require(!moe_layers.empty(), where, "the model has no MoE block");
    const int E = m.config.n_experts, K = m.config.n_experts_per_token, L = m.config.n_layers;
    llama_config small = m.config;
    small.seq_len = o.length; // caches sized for one sequence
    struct beam_state {
        std::vector<int> tokens;
        double logprob = 0;
        std::vector<double> counts; // [L x E] routed counts
        kv_cache cache;
        vector_f logits; // next-token logits after the last token
    };
    auto sigma = [&](const std::vector<double>& counts) {
        double s = 0;
        for (int l : moe_layers) {
            std::vector<double> u(static_cast<std::size_t>(E));
            double tot = 0;
            for (int e = 0; e < E; ++e) tot += u[static_cast<std::size_t>(e)] = counts[static_cast<std::size_t>(l * E + e)];
            if (tot > 0)
                for (auto& v : u) v /= tot;
            s += expert_balance_std(u);
        }
        return s / static_cast<double>(moe_layers.size());
    };
    // One step: feed `tok` at cache.pos; returns logits and adds the routing counts.
    std::vector<int> sel;
    std::vector<float> wts;
    auto step = [&](kv_cache& cache, int tok, std::vector<double>& counts) {
        forward_hooks hooks;
        hooks.on_router_logits = [&](int l, const matrix_f& lg) {
            for (Eigen::Index t = 0; t < lg.rows(); ++t) {
                detail::route_top_k(lg.row(t).data(), E, K, m.config.norm_topk_prob, sel, wts);
                for (int e : sel) counts[static_cast<std::size_t>(l * E + e)] += 1.0;
            }
        };
        const int one[1] = {tok};
        const matrix_f lg = forward(m, cache, std::span<const int>(one, 1), logits_rows::last, &hooks);
        return vector_f(lg.row(0).transpose());
    };
    auto log_softmax_at = [](const vector_f& z, int v) {
        const double mx = static_cast<double>(z.maxCoeff());
        double s = 0;
        for (Eigen::Index j = 0; j < z.size(); ++j) s += std::exp(static_cast<double>(z(j)) - mx);
        return static_cast<double>(z(v)) - mx - std::log(s);
    };
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<int> first(1, m.config.vocab_size - 1);
    std::vector<std::vector<int>> out;
    for (int s = 0; s < o.sequences; ++s) {
        std::vector<beam_state> beams(1);
        beams[0].tokens = {first(rng)};
        beams[0].counts.assign(static_cast<std::size_t>(L * E), 0.0);
        beams[0].cache = kv_cache(small);
        beams[0].logits = step(beams[0].cache, beams[0].tokens[0], beams[0].counts);
        for (int len = 1; len < o.length; ++len) {
            struct cand {
                std::size_t parent;
                int token;
                double logprob;
                std::vector<double> counts;
                vector_f logits;
                std::vector<matrix_f> k, v; // the new cache rows, per layer
            };
            std::vector<cand> cands;
            std::vector<double> scores;
            for (std::size_t bi = 0; bi < beams.size(); ++bi) {
                auto& bm = beams[bi];
                std::vector<int> order(static_cast<std::size_t>(bm.logits.size()));
                for (int j = 0; j < static_cast<int>(order.size()); ++j) order[static_cast<std::size_t>(j)] = j;
                const int nc = std::min<int>(o.candidates, static_cast<int>(order.size()));
                std::partial_sort(order.begin(), order.begin() + nc, order.end(), [&](int a, int b) {
                    return bm.logits(a) > bm.logits(b) || (bm.logits(a) == bm.logits(b) && a < b);
                });
                const int pos = bm.cache.pos;
                for (int ci = 0; ci < nc; ++ci) {
                    cand c;
                    c.parent = bi;
                    c.token = order[static_cast<std::size_t>(ci)];
                    c.logprob = bm.logprob + log_softmax_at(bm.logits, c.token);
                    c.counts = bm.counts;
                    bm.cache.pos = pos;
                    c.logits = step(bm.cache, c.token, c.counts);
                    for (int l = 0; l < L; ++l) {
                        c.k.emplace_back(bm.cache.k[static_cast<std::size_t>(l)].row(pos));
                        c.v.emplace_back(bm.cache.v[static_cast<std::size_t>(l)].row(pos));
                    }
                    bm.cache.pos = pos;
                    scores.push_back(-c.logprob / static_cast<double>(len + 1) + sigma(c.counts) / o.tau);
                    cands.push_back(std::move(c));
                }
            }
            const auto keep = ebss_select(scores, static_cast<std::size_t>(o.beam));
            std::vector<beam_state> next;
            for (std::size_t i : keep) {
                auto& c = cands[i];
                beam_state nb;
                const auto& parent = beams[c.parent];
                nb.tokens = parent.tokens;
                nb.tokens.push_back(c.token);
                nb.logprob = c.logprob;
                nb.counts = std::move(c.counts);
                nb.cache = parent.cache;
                const int pos = parent.cache.pos;
                for (int l = 0; l < L; ++l) {
                    nb.cache.k[static_cast<std::size_t>(l)].row(pos) = c.k[static_cast<std::size_t>(l)];
                    nb.cache.v[static_cast<std::size_t>(l)].row(pos) = c.v[static_cast<std::size_t>(l)];
                }
                nb.cache.pos = pos + 1;
                nb.logits = std::move(c.logits);
                next.push_back(std::move(nb));
            }
            beams = std::move(next);
        }
        out.push_back(beams.front().tokens); // ebss_select sorts ascending: the best beam first
        if (o.progress) o.progress(s + 1, o.sequences);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// MoEQuant / GPTQ / RTN at b bits
// ---------------------------------------------------------------------------------------------

/// Configuration of `quantize_moe` (every block linear: attention and experts; router float).
struct moe_quant_config {
    std::string name = "moequant-w4"; ///< recipe name saved with the model
    int bits = 4;               ///< 2, 3 or 4 bits per weight (grid), stored in the int4 container
    bool asymmetric = true;     ///< min–max asymmetric grid per row (false: symmetric max|w|)
    bool gptq = true;           ///< GPTQ error feedback (false: round to nearest)
    bool agq = true;            ///< expert Hessians weighted by gate affinities (false: plain routed-token Hessians)
    double damp = 0.01;         ///< GPTQ damping λ
    bool act_order = true;      ///< GPTQ activation order
    int calib_window = -1;      ///< calibration window (tokens; −1: the perplexity protocol's)
    int calib_windows = -1;     ///< at most this many calibration windows (< 0: all)
    /// Progress callback, one line per block.
    std::function<void(const std::string&)> progress;
};

/// What `quantize_moe` measured.
struct moe_quant_result {
    quantized_model q;                ///< the runnable model, its recipe and records (save with save_quantized_model)
    std::vector<double> layer_seconds; ///< wall time per block (capture + solve)
    double bits_per_weight = 0;       ///< stored bits (int4 container + fp16 α, μ) / weights, every block linear
    double nominal_bits = 0;          ///< b + 32/in per weight: a tight b-bit packing (reference only)
    std::vector<std::vector<long long>> routed; ///< [layer][expert] calibration tokens routed (MoE blocks)
};

/// What the expert recipes' quantizers measured (`quantize_mobie`, `quantize_kbvq_moe` extend it).
struct moe_expert_result {
    quantized_model q;                 ///< the runnable model, recipe and records (save with save_quantized_model)
    std::vector<double> layer_seconds; ///< wall time per block (capture + solve)
    double bits_per_weight = 0;        ///< counted bits / weights over every block linear
    double expert_bits_per_weight = 0; ///< the same over the expert linears only
    std::vector<std::vector<long long>> routed; ///< [layer][expert] calibration tokens routed
};

namespace detail {
/// Running sums of the expert linears' stored bits and weights (`expert_bits_per_weight`).
struct expert_bit_count {
    double bits = 0;
    double weights = 0;
};

/// Installs expert linear `id`'s record: `m` runs it (built under `res.q.spec`, no rotation), `res`
/// keeps it, `count` adds its stored bits and weights.
template <class = void>
void install_expert_record(moe_expert_result& res, llama_model& m, const linear_id& id, linear_record rec,
                           expert_bit_count& count) {
    m.set_linear(id, build_linear(res.q.spec, rec, std::optional<hadamard_transform>{}));
    count.bits += rec.storage_bits();
    count.weights += static_cast<double>(rec.rows) * static_cast<double>(rec.cols);
    res.q.records[id.name()] = std::move(rec);
}

/// Closes block `l`: its routing counts and wall time since `t0`, and one progress line
/// "layer l <what> (<name>, <seconds> s)".
inline void close_expert_block(moe_expert_result& res, const std::vector<long long>& routed, int l,
                               std::chrono::steady_clock::time_point t0, const char* what, const std::string& name,
                               const std::function<void(const std::string&)>& progress) {
    res.routed.push_back(routed);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    res.layer_seconds.push_back(secs);
    if (progress) progress("layer " + std::to_string(l) + " " + what + " (" + name + ", " + std::to_string(secs) + " s)");
}

/// Sets the finished model's bits per weight (every block linear, and the experts from `count`).
inline void set_expert_bits(moe_expert_result& res, const llama_model& m, const expert_bit_count& count) {
    res.bits_per_weight = m.bits_per_weight();
    res.expert_bits_per_weight = count.weights > 0 ? count.bits / count.weights : 0.0;
}
} // namespace detail

/// The `recipe` a `quantize_moe` model is saved and rebuilt with (int4 container, FP32 activations).
[[nodiscard]] inline recipe moe_recipe(const moe_quant_config& c) {
    recipe r;
    r.name = c.name;
    r.description = std::to_string(c.bits) + "-bit " + (c.asymmetric ? "asymmetric" : "symmetric") + " grid, " +
                    (c.gptq ? (c.agq ? "GPTQ with AGQ expert Hessians" : "GPTQ") : "RTN") + ", int4 container";
    r.weights = weight_scheme::int4;
    r.solver = c.gptq ? solver_kind::gptq : solver_kind::rtn;
    r.damp = c.damp;
    r.act_order = c.act_order;
    return r;
}

namespace detail {

/// Quantizes `w` to a b-bit per-row grid (GPTQ when `h`, else RTN) and stores it in an int4 record.
template <class = void>
linear_record quantize_grid_record(const matrix_f& w, const matrix_d* h, const moe_quant_config& c) {
    const rtn_quantizer rq{c.bits, c.asymmetric ? int_mode::asymmetric : int_mode::symmetric};
    matrix_f q;
    vector_f s, z;
    if (h) {
        gptq_options go;
        go.damp = c.damp;
        go.act_order = c.act_order;
        auto res = gptq_quantize(w, *h, rq, per_row{}, go);
        q = std::move(res.weights);
        s = res.params.front().scale;
        z = res.params.front().zero;
    } else {
        const auto p = rq.fit(w);
        q.resize(w.rows(), w.cols());
        vector_f col(w.rows()), o(w.rows());
        for (Eigen::Index j = 0; j < w.cols(); ++j) {
            col = w.col(j);
            rq.round_column(p, col, o);
            q.col(j) = o;
        }
        s = p.scale;
        z = p.zero;
    }
    // value s·(c − z), c ∈ [0, 2^b): t = c − 2^(b−1) ∈ [−2^(b−1), 2^(b−1) − 1], μ = s·(2^(b−1) − z)
    const float half = static_cast<float>(1 << (c.bits - 1));
    vector_f mu = s.array() * (half - z.array());
    const matrix_i8 t = affine_codes(q, mu, s, -(1 << (c.bits - 1)), (1 << (c.bits - 1)) - 1, false);
    round_fp16(s);
    round_fp16(mu);
    return packed_record(pack<int4>(t, s, mu));
}

} // namespace detail

/// Quantizes every block linear of `fp32` block by block: block l's Hessians come from
/// `calib_tokens` run through the model whose blocks < l are already quantized
/// (`capture_layer_hessians`, AGQ-weighted for experts when `c.agq`), then GPTQ (or RTN) per linear
/// to the b-bit grid. MoEQuant is `c.agq = c.gptq = true` with EBSS tokens (`ebss_sample`, windows
/// of the sequence length); plain GPTQ is `agq = false` on text; RTN `gptq = false`. An expert no
/// calibration token reaches gets H = I (round to nearest with GPTQ's order).
/// \throws invalid_argument (bits outside 2..4, non-dense input), shape_error (no calibration token
/// for a GPTQ run), numeric_error (Hessian damping fails). Complexity: per block one forward pass
/// over the calibration windows plus O(n³ + m n²) per linear.
template <class = void>
[[nodiscard]] moe_quant_result quantize_moe(const llama_model& fp32, std::span<const int> calib_tokens,
                                            const moe_quant_config& c) {
    constexpr const char* where = "quantize_moe";
    detail::require(c.bits >= 2 && c.bits <= 4, where, "bits must lie in 2..4 (the int4 container)");
    if (c.gptq) detail::require<shape_error>(!calib_tokens.empty(), where, "GPTQ needs calibration tokens");
    moe_quant_result res;
    res.q.spec = moe_recipe(c);
    res.q.model = fp32;
    llama_model& m = res.q.model;
    const std::optional<hadamard_transform> none;
    double nominal = 0, weights = 0;
    for (int l = 0; l < static_cast<int>(m.blocks.size()); ++l) {
        const auto t0 = std::chrono::steady_clock::now();
        layer_calibration cal;
        if (c.gptq) cal = capture_layer_hessians(m, l, calib_tokens, c.agq, c.calib_window, c.calib_windows);
        int uncalibrated = 0;
        for (const linear_id& id : m.block_linears(l)) {
            const std::string key = id.name();
            const matrix_f w = detail::dense_weight_of(m.linear(id), where);
            matrix_d h;
            if (c.gptq) {
                const auto it = cal.hessians.find(key);
                if (it != cal.hessians.end()) h = it->second.matrix();
                else {
                    h = matrix_d::Identity(w.cols(), w.cols());
                    ++uncalibrated;
                }
            }
            linear_record rec = detail::quantize_grid_record(w, c.gptq ? &h : nullptr, c);
            m.set_linear(id, build_linear(res.q.spec, rec, none));
            nominal += (static_cast<double>(c.bits) + 32.0 / static_cast<double>(w.cols())) * static_cast<double>(w.size());
            weights += static_cast<double>(w.size());
            res.q.records[key] = std::move(rec);
        }
        res.routed.push_back(cal.routed);
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        res.layer_seconds.push_back(secs);
        if (c.progress)
            c.progress("layer " + std::to_string(l) + " quantized (" + c.name + ", " + std::to_string(secs) + " s" +
                       (uncalibrated ? ", " + std::to_string(uncalibrated) + " linears without routed tokens: H = I" : "") + ")");
    }
    res.bits_per_weight = m.bits_per_weight();
    res.nominal_bits = weights > 0 ? nominal / weights : 0.0;
    return res;
}

// ---------------------------------------------------------------------------------------------
// Routing diagnostics
// ---------------------------------------------------------------------------------------------

/// Routing of a model against a reference model on the same tokens (`compare_routing`).
struct routing_comparison {
    double agreement = 0;               ///< fraction of (token, MoE layer) whose top-k expert set equals the reference's
    std::vector<double> layer_agreement; ///< per layer (NaN for dense layers)
    std::vector<std::vector<double>> load;     ///< [layer][expert] routed fraction of the model
    std::vector<std::vector<double>> ref_load; ///< [layer][expert] of the reference
    double balance_std = 0;             ///< mean over MoE layers of `expert_balance_std(load[l])`
    double ref_balance_std = 0;         ///< the same for the reference
    double logit_rmse = 0;              ///< RMS difference of the router logits (the model's vs the reference's)
    long long tokens = 0;               ///< tokens compared
};

/// Runs both models over the windows of `tokens` (`capture_linear_inputs` cutting), each on its own
/// hidden states (so the quantized model's routing reflects its quantized earlier layers), and
/// compares the top-k expert set of every token in every MoE layer with the reference's (sets, not
/// order). \throws invalid_argument (models of different shape), as capture_linear_inputs.
/// O(2 forward passes).
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] routing_comparison compare_routing(const llama_model& reference, const llama_model& model,
                                                        std::span<const int> tokens, int window = -1, int max_windows = -1) {
    constexpr const char* where = "compare_routing";
    detail::require(reference.config.n_layers == model.config.n_layers && reference.config.n_experts == model.config.n_experts,
                    where, "models differ in layers or experts");
    const int L = model.config.n_layers, E = model.config.n_experts, K = model.config.n_experts_per_token;
    std::vector<std::vector<matrix_f>> lr(static_cast<std::size_t>(L)), lm(static_cast<std::size_t>(L));
    forward_hooks hr, hm;
    hr.on_router_logits = [&](int l, const matrix_f& x) { lr[static_cast<std::size_t>(l)].push_back(x); };
    hm.on_router_logits = [&](int l, const matrix_f& x) { lm[static_cast<std::size_t>(l)].push_back(x); };
    capture_linear_inputs(reference, tokens, hr, window, max_windows);
    capture_linear_inputs(model, tokens, hm, window, max_windows);
    routing_comparison r;
    r.layer_agreement.assign(static_cast<std::size_t>(L), std::numeric_limits<double>::quiet_NaN());
    r.load.assign(static_cast<std::size_t>(L), std::vector<double>(static_cast<std::size_t>(E), 0.0));
    r.ref_load = r.load;
    long long same_all = 0, all = 0;
    double se = 0, cnt = 0;
    int moe_layers = 0;
    std::vector<int> a, b;
    std::vector<float> wa, wb;
    for (int l = 0; l < L; ++l) {
        const auto& R = lr[static_cast<std::size_t>(l)];
        const auto& M = lm[static_cast<std::size_t>(l)];
        if (R.empty()) continue;
        detail::require(R.size() == M.size(), where, "models routed different windows");
        ++moe_layers;
        long long same = 0, n = 0;
        for (std::size_t w = 0; w < R.size(); ++w)
            for (Eigen::Index t = 0; t < R[w].rows(); ++t) {
                detail::route_top_k(R[w].row(t).data(), E, K, reference.config.norm_topk_prob, a, wa);
                detail::route_top_k(M[w].row(t).data(), E, K, model.config.norm_topk_prob, b, wb);
                for (int e : a) r.ref_load[static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] += 1.0;
                for (int e : b) r.load[static_cast<std::size_t>(l)][static_cast<std::size_t>(e)] += 1.0;
                std::sort(a.begin(), a.end());
                std::sort(b.begin(), b.end());
                same += a == b ? 1 : 0;
                ++n;
                se += (R[w].row(t) - M[w].row(t)).cast<double>().squaredNorm();
                cnt += static_cast<double>(E);
            }
        r.layer_agreement[static_cast<std::size_t>(l)] = n ? static_cast<double>(same) / static_cast<double>(n) : 0.0;
        same_all += same;
        all += n;
        for (auto* ld : {&r.load[static_cast<std::size_t>(l)], &r.ref_load[static_cast<std::size_t>(l)]})
            for (auto& v : *ld) v /= static_cast<double>(n * K);
        r.balance_std += expert_balance_std(r.load[static_cast<std::size_t>(l)]);
        r.ref_balance_std += expert_balance_std(r.ref_load[static_cast<std::size_t>(l)]);
        r.tokens = n;
    }
    detail::require(moe_layers > 0, where, "the models have no MoE block");
    r.agreement = static_cast<double>(same_all) / static_cast<double>(all);
    r.balance_std /= moe_layers;
    r.ref_balance_std /= moe_layers;
    r.logit_rmse = std::sqrt(se / cnt);
    return r;
}

/// Expert usage balance of a token stream under `m` (EBSS's σ): mean over MoE layers of
/// `expert_balance_std` of the routed fractions. \throws as compare_routing.
template <class = void> // compiled only where called (docs/compile_time.md)
[[nodiscard]] double routing_balance_std(const llama_model& m, std::span<const int> tokens, int window = -1,
                                                int max_windows = -1) {
    return compare_routing(m, m, tokens, window, max_windows).ref_balance_std;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template layer_calibration capture_layer_hessians<>(const llama_model&, int, std::span<const int>, bool, int, int);
LOWBIT_MODEL_INSTANTIATION template moe_quant_result quantize_moe<>(const llama_model&, std::span<const int>, const moe_quant_config&);
#endif

LOWBIT_END_NAMESPACE
