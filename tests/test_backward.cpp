// Tests for lowbit/model/backward.hpp. Oracles: central finite differences of the double-precision
// loss (weights perturbed in the model itself, routers included, residual stream shifted for the
// output gradients), and lowbit's float forward pass (`perplexity`), an independent implementation
// of the same graph, for the loss itself.
#include <lowbit/model/backward.hpp>
#include <lowbit/model/llama.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

namespace {

lowbit::matrix_f rnd(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, float sd) {
    std::normal_distribution<float> g(0.0f, sd);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

lowbit::vector_f rnd_norm(Eigen::Index n, std::mt19937_64& rng) {
    std::uniform_real_distribution<float> u(0.6f, 1.4f);
    lowbit::vector_f v(n);
    for (Eigen::Index i = 0; i < n; ++i) v(i) = u(rng);
    return v;
}

// A small model: block 0 dense (optionally with q/k/v biases), block 1 MoE; or both MoE.
lowbit::llama_model small_model(bool hf_style, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    lowbit::llama_config c;
    c.dim = 16;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;
    c.vocab_size = 24;
    c.seq_len = 16;
    c.norm_eps = 1e-6f;
    c.rope_theta = 100.0f;
    c.rope = hf_style ? lowbit::rope_layout::rotate_half : lowbit::rope_layout::interleaved;
    c.qk_norm = hf_style;
    c.attention_bias = !hf_style;
    c.n_experts = hf_style ? 4 : 3;
    c.n_experts_per_token = 2;
    c.moe_hidden_dim = 8;
    c.norm_topk_prob = hf_style;
    c.bos_token = hf_style ? -1 : 1;
    lowbit::llama_model m;
    m.config = c;
    m.token_embedding = rnd(c.vocab_size, c.dim, rng, 1.0f);
    m.rms_final = rnd_norm(c.dim, rng);
    m.classifier = lowbit::make_linear(lowbit::dense_linear(rnd(c.vocab_size, c.dim, rng, 0.5f)));
    for (int l = 0; l < c.n_layers; ++l) {
        lowbit::llama_block b;
        b.rms_att = rnd_norm(c.dim, rng);
        b.rms_ffn = rnd_norm(c.dim, rng);
        auto lin = [&](Eigen::Index o, Eigen::Index i) {
            return lowbit::make_linear(lowbit::dense_linear(rnd(o, i, rng, 0.45f)));
        };
        b.linear[0] = lin(c.q_dim(), c.dim);
        b.linear[1] = lin(c.kv_dim(), c.dim);
        b.linear[2] = lin(c.kv_dim(), c.dim);
        b.linear[3] = lin(c.dim, c.q_dim());
        if (c.qk_norm) {
            b.q_norm = rnd_norm(c.head_size(), rng);
            b.k_norm = rnd_norm(c.head_size(), rng);
        }
        if (c.attention_bias) {
            b.q_bias = rnd(c.q_dim(), 1, rng, 0.2f);
            b.k_bias = rnd(c.kv_dim(), 1, rng, 0.2f);
            b.v_bias = rnd(c.kv_dim(), 1, rng, 0.2f);
        }
        const bool moe = l == 1 || !hf_style;
        if (moe) {
            b.router = rnd(c.n_experts, c.dim, rng, 0.6f);
            for (int e = 0; e < c.n_experts; ++e)
                b.experts.push_back({lin(c.moe_hidden_dim, c.dim), lin(c.dim, c.moe_hidden_dim), lin(c.moe_hidden_dim, c.dim)});
        } else {
            b.linear[4] = lin(c.hidden_dim, c.dim);
            b.linear[5] = lin(c.dim, c.hidden_dim);
            b.linear[6] = lin(c.hidden_dim, c.dim);
        }
        m.blocks.push_back(std::move(b));
    }
    return m;
}

std::vector<int> tokens_for(const lowbit::llama_model& m, int n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> u(2, m.config.vocab_size - 1);
    std::vector<int> t(static_cast<std::size_t>(n));
    for (auto& x : t) x = u(rng);
    return t;
}

// dL/dw by central differences of the double loss, the float weight perturbed by ±eps in the model.
double fd_weight(lowbit::llama_model m, const lowbit::linear_id& id, Eigen::Index i, Eigen::Index j,
                 const std::vector<int>& toks, int window, float eps) {
    const lowbit::matrix_f w0 = lowbit::effective_weight(m.linear(id)).cast<float>();
    auto at = [&](float d) {
        lowbit::matrix_f w = w0;
        w(i, j) += d;
        const double actual = static_cast<double>(w(i, j)) - static_cast<double>(w0(i, j));
        m.set_linear(id, lowbit::make_linear(lowbit::dense_linear(w)));
        return std::pair{lowbit::calibration_loss(m, toks, window), actual};
    };
    const auto [lp, dp] = at(eps);
    const auto [lm, dm] = at(-eps);
    return (lp - lm) / (dp - dm);
}

void check_model(bool hf_style) {
    const auto m = small_model(hf_style, hf_style ? 11 : 12);
    const int window = 12;
    const auto toks = tokens_for(m, window, 5);
    // The loss is the log perplexity of the float forward pass (an independent implementation).
    const double ref = std::log(lowbit::perplexity(m, toks, window, 1).perplexity);
    const double loss = lowbit::calibration_loss(m, toks, window);
    CHECK(loss == doctest::Approx(ref).epsilon(1e-5));

    std::vector<std::vector<lowbit::matrix_d>> out_grads(static_cast<std::size_t>(m.config.n_layers));
    lowbit::gradient_options o;
    o.window = window;
    o.max_windows = 1;
    o.on_output_grad = [&](int w, int l, const lowbit::matrix_d& d) {
        CHECK(w == 0);
        out_grads[static_cast<std::size_t>(l)].push_back(d);
    };
    const auto g = lowbit::calibration_gradients(m, toks, o);
    CHECK(g.loss == doctest::Approx(loss).epsilon(1e-12));
    CHECK(g.windows == 1);

    std::mt19937_64 rng(99);
    double worst = 0;
    int checked = 0;
    auto compare = [&](double fd, double an, const std::string& what) {
        const double err = std::abs(fd - an) / std::max(1e-3, std::abs(fd));
        worst = std::max(worst, err);
        ++checked;
        INFO(what << " finite difference " << fd << " analytic " << an);
        CHECK(err < 2e-3);
    };
    for (int l = 0; l < m.config.n_layers; ++l) {
        for (const auto& id : m.block_linears(l)) {
            const auto& gw = g.weight(id);
            for (int k = 0; k < 3; ++k) {
                const auto i = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(gw.rows()));
                const auto j = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(gw.cols()));
                compare(fd_weight(m, id, i, j, toks, window, 1e-3f), gw(i, j), id.name());
            }
        }
        if (m.blocks[static_cast<std::size_t>(l)].is_moe()) {
            const auto& gr = g.blocks[static_cast<std::size_t>(l)].router;
            for (int k = 0; k < 4; ++k) {
                const auto i = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(gr.rows()));
                const auto j = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(gr.cols()));
                auto mp = m, mm = m;
                mp.blocks[static_cast<std::size_t>(l)].router(i, j) += 1e-3f;
                mm.blocks[static_cast<std::size_t>(l)].router(i, j) -= 1e-3f;
                const double d = static_cast<double>(mp.blocks[static_cast<std::size_t>(l)].router(i, j)) -
                                 static_cast<double>(mm.blocks[static_cast<std::size_t>(l)].router(i, j));
                const double fd = (lowbit::calibration_loss(mp, toks, window) - lowbit::calibration_loss(mm, toks, window)) / d;
                compare(fd, gr(i, j), "router " + std::to_string(l));
            }
        }
        // Output gradients: shift the residual stream after block l.
        REQUIRE(out_grads[static_cast<std::size_t>(l)].size() == 1);
        const auto& od = out_grads[static_cast<std::size_t>(l)][0];
        for (int k = 0; k < 4; ++k) {
            const auto t = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(od.rows()));
            const auto j = static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(od.cols()));
            lowbit::matrix_d s = lowbit::matrix_d::Zero(od.rows(), od.cols());
            s(t, j) = 1e-5;
            const double lp = lowbit::calibration_loss(m, toks, window, l, &s);
            s(t, j) = -1e-5;
            const double lm = lowbit::calibration_loss(m, toks, window, l, &s);
            compare((lp - lm) / 2e-5, od(t, j), "output " + std::to_string(l));
        }
    }
    MESSAGE("checked " << checked << " derivatives, worst relative error " << worst);
}

} // namespace

TEST_CASE("backward: Qwen3-MoE style (rotate-half RoPE, q/k norms, renormalised top-2, dense + MoE blocks)") {
    check_model(true);
}

TEST_CASE("backward: llama2.c style (BOS windows, interleaved RoPE, q/k/v biases, softmax top-2 without renormalisation)") {
    check_model(false);
}

TEST_CASE("backward: gradients sum over windows and are means over scored tokens") {
    const auto m = small_model(true, 21);
    const auto toks = tokens_for(m, 30, 6); // windows of 10: three windows
    lowbit::gradient_options o;
    o.window = 10;
    const auto all = lowbit::calibration_gradients(m, toks, o);
    CHECK(all.windows == 3);
    CHECK(all.scored == 27);
    lowbit::matrix_d sum = lowbit::matrix_d::Zero(all.blocks[1].router.rows(), all.blocks[1].router.cols());
    double loss = 0;
    for (int w = 0; w < 3; ++w) {
        const std::span<const int> part(toks.data() + 10 * w, 10);
        const auto one = lowbit::calibration_gradients(m, part, o);
        sum += one.blocks[1].router * 9.0 / 27.0;
        loss += one.loss * 9.0 / 27.0;
    }
    CHECK(all.loss == doctest::Approx(loss).epsilon(1e-12));
    CHECK((all.blocks[1].router - sum).cwiseAbs().maxCoeff() < 1e-12);
    CHECK_THROWS_AS((void)all.weight(lowbit::linear_id{1, lowbit::linear_slot::w1}), lowbit::invalid_argument);
}
