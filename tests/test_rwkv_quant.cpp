// Tests of model/rwkv_quant.hpp: RWKVQuant's scalar and vector paths and the RWKV pipeline.
// Oracles: brute-force nearest grid level / nearest centroid searches, tr(ΔHΔᵀ) in double from the
// definition, rwkv_proxy.hpp's distinct-gap proxy (equal to the quantile-spacing one when every
// gap is distinct and every order statistic is used), storage formulas counted by hand, and the
// recipe identities (hybrid with thresholds above every proxy = GPTQ, with zero thresholds = VQ).
#include <lowbit/model/rwkv_quant.hpp>

#include <filesystem>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

lowbit::matrix_f gaussian(Eigen::Index r, Eigen::Index c, std::uint32_t seed, float sd = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.0f, sd);
    lowbit::matrix_f m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

/// A correlated Hessian 2/N XᵀX from Gaussian inputs with a few strong directions.
lowbit::matrix_d hessian(Eigen::Index n, std::uint32_t seed) {
    const lowbit::matrix_f base = gaussian(4 * n, n, seed);
    lowbit::matrix_f mix = lowbit::matrix_f::Identity(n, n) + 0.3f * gaussian(n, n, seed + 1) / std::sqrt(static_cast<float>(n));
    const lowbit::matrix_f x = base * mix;
    lowbit::gptq_hessian h(n);
    h.add(x);
    return h.matrix();
}

/// tr(Δ H_d Δᵀ) in double, H_d = H + damp·mean(diag H)·I.
double trace_loss(const lowbit::matrix_f& w, const lowbit::matrix_f& q, const lowbit::matrix_d& h, double damp) {
    lowbit::matrix_d hd = h;
    hd.diagonal().array() += damp * h.diagonal().mean();
    const Eigen::MatrixXd d = (w - q).cast<double>();
    return (d * hd * d.transpose()).trace();
}

/// A tiny RWKV-4 with random weights (dim 64, 2 layers, vocab 50).
lowbit::rwkv_model tiny_rwkv() {
    lowbit::rwkv_model m;
    auto& c = m.config;
    c.dim = 64;
    c.attention_dim = 64;
    c.ffn_dim = 128;
    c.n_layers = 2;
    c.vocab_size = 50;
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> u01(0.0f, 1.0f);
    auto vec = [&](Eigen::Index n, float lo, float hi) {
        lowbit::vector_f v(n);
        for (Eigen::Index i = 0; i < n; ++i) v(i) = lo + (hi - lo) * u01(rng);
        return v;
    };
    m.embedding = gaussian(50, 64, 1);
    m.ln_out_weight = lowbit::vector_f::Ones(64);
    m.ln_out_bias = lowbit::vector_f::Zero(64);
    m.head = lowbit::make_linear(lowbit::dense_linear(gaussian(50, 64, 2, 0.2f)));
    const Eigen::Index shape[7][2] = {{64, 64}, {64, 64}, {64, 64}, {64, 64}, {128, 64}, {64, 128}, {64, 64}};
    for (int l = 0; l < 2; ++l) {
        lowbit::rwkv_block b;
        if (l == 0) {
            b.pre_ln_weight = lowbit::vector_f::Ones(64);
            b.pre_ln_bias = lowbit::vector_f::Zero(64);
        }
        b.ln1_weight = b.ln2_weight = lowbit::vector_f::Ones(64);
        b.ln1_bias = b.ln2_bias = lowbit::vector_f::Zero(64);
        b.time_decay = vec(64, -2.0f, 1.0f);
        b.time_first = vec(64, -1.0f, 1.0f);
        b.att_mix_key = vec(64, 0, 1);
        b.att_mix_value = vec(64, 0, 1);
        b.att_mix_receptance = vec(64, 0, 1);
        b.ffn_mix_key = vec(64, 0, 1);
        b.ffn_mix_receptance = vec(64, 0, 1);
        for (int s = 0; s < 7; ++s)
            b.linear[static_cast<std::size_t>(s)] = lowbit::make_linear(
                lowbit::dense_linear(gaussian(shape[s][0], shape[s][1], static_cast<std::uint32_t>(100 + 10 * l + s), 0.15f)));
        m.blocks.push_back(std::move(b));
    }
    return m;
}

const lowbit::matrix_f& weight_of(const lowbit::linear_operator& op) {
    if (const auto* g = dynamic_cast<const lowbit::detail::linear_adapter<lowbit::grouped_int_linear>*>(&op)) return g->get().weight();
    if (const auto* v = dynamic_cast<const lowbit::detail::linear_adapter<lowbit::vq_linear>*>(&op)) return v->get().weight();
    return dynamic_cast<const lowbit::detail::linear_adapter<lowbit::dense_linear>&>(op).get().weight();
}

} // namespace

TEST_CASE("rtn_grouped: every weight goes to the nearest of its group's 8 fp16-parameter levels; 3.25 bits") {
    const lowbit::matrix_f w = gaussian(8, 256, 1);
    const auto q = lowbit::rtn_grouped(w, 3, 128);
    CHECK(q.storage_bits() == doctest::Approx(8 * 256 * 3.25));
    for (Eigen::Index i = 0; i < 8; ++i)
        for (Eigen::Index g = 0; g < 2; ++g) {
            const float s = q.scale()(i, g), z = q.zero()(i, g);
            CHECK(lowbit::detail::round_fp16(s) == s); // stored exactly in fp16
            CHECK(lowbit::detail::round_fp16(z) == z);
            // range oracle: the grid spans [min, max] of the group to fp16 rounding
            const auto blk = w.row(i).segment(g * 128, 128);
            CHECK(s == doctest::Approx((blk.maxCoeff() - blk.minCoeff()) / 7.0f).epsilon(1e-3));
            for (Eigen::Index j = g * 128; j < g * 128 + 128; ++j) {
                double best = std::numeric_limits<double>::infinity();
                for (int c = 0; c < 8; ++c) best = std::min(best, std::abs(static_cast<double>(w(i, j)) - s * (c - z)));
                CHECK(std::abs(static_cast<double>(w(i, j)) - q.weight()(i, j)) <= best + 1e-6);
            }
        }
    // codes reproduce the weights
    const lowbit::grouped_int_linear again(q.codes(), q.scale(), q.zero(), 3, 128);
    CHECK(again.weight() == q.weight());
    CHECK_THROWS_AS(lowbit::grouped_int_linear(q.codes(), q.scale().leftCols(1), q.zero(), 3, 128), lowbit::shape_error);
}

TEST_CASE("gptq_grouped: reported loss equals tr(ΔHΔᵀ) and beats RTN under a correlated Hessian") {
    const lowbit::matrix_f w = gaussian(32, 256, 2);
    const lowbit::matrix_d h = hessian(256, 3);
    double loss = 0;
    const auto g = lowbit::gptq_grouped(w, h, 3, 128, {}, &loss);
    CHECK(loss == doctest::Approx(trace_loss(w, g.weight(), h, 0.01)).epsilon(1e-6));
    const auto r = lowbit::rtn_grouped(w, 3, 128);
    CHECK(loss < trace_loss(w, r.weight(), h, 0.01));
    CHECK(g.storage_bits() == doctest::Approx(32 * 256 * 3.25));
}

TEST_CASE("gptvq_quantize: codes are the nearest centroids, codebooks int8 x fp16, bits counted, loss = tr(ΔHΔᵀ)") {
    const lowbit::matrix_f w = gaussian(128, 128, 4);
    lowbit::gptvq_options o; // 3 bits, d 2, 64x64 tiles, 8-bit codebooks
    o.kmeans_iterations = 10;
    // identity Hessian: no error feedback between columns, so every code must be the nearest
    // centroid of the original vector (brute force over the tile's 64 centroids)
    const lowbit::matrix_d eye = lowbit::matrix_d::Identity(128, 128);
    const auto v = lowbit::gptvq_quantize(w, eye, o);
    REQUIRE(v.codebooks().size() == 4u);
    for (const auto& cb : v.codebooks()) {
        CHECK(cb.rows() == 64);
        const float amax = cb.cwiseAbs().maxCoeff();
        const float s = lowbit::detail::round_fp16(amax / 127.0f);
        for (Eigen::Index k = 0; k < cb.size(); ++k) {
            const float r = cb.data()[k] / s;
            CHECK(std::abs(r - std::nearbyint(r)) < 1e-4f);
            CHECK(std::abs(r) <= 127.0f + 1e-4f);
        }
    }
    for (Eigen::Index i = 0; i < 128; ++i)
        for (Eigen::Index c = 0; c < 64; ++c) {
            const auto& cb = v.codebooks()[static_cast<std::size_t>((i / 64) * 2 + (2 * c) / 64)];
            double best = std::numeric_limits<double>::infinity();
            for (Eigen::Index k = 0; k < cb.rows(); ++k)
                best = std::min(best, static_cast<double>((w.row(i).segment(2 * c, 2) - cb.row(k)).squaredNorm()));
            CHECK(static_cast<double>((w.row(i).segment(2 * c, 2) - v.weight().row(i).segment(2 * c, 2)).squaredNorm()) <= best + 1e-9);
        }
    // storage: 3 bits per weight + 4 codebooks of 64·2 int8 + an fp16 scale
    CHECK(v.storage_bits() == doctest::Approx(128 * 128 * 3 + 4 * (64 * 2 * 8 + 16)));
    // correlated Hessian: the reported loss is the trace form, and feedback beats the no-feedback codes
    const lowbit::matrix_d h = hessian(128, 5);
    double loss = 0;
    const auto f = lowbit::gptvq_quantize(w, h, o, {}, &loss);
    CHECK(loss == doctest::Approx(trace_loss(w, f.weight(), h, 0.01)).epsilon(1e-6));
    CHECK(loss < trace_loss(w, v.weight(), h, 0.01));
    // deterministic
    CHECK(lowbit::gptvq_quantize(w, h, o).weight() == f.weight());
    o.tile_cols = 48;
    CHECK_THROWS_AS((void)lowbit::gptvq_quantize(w, h, o), lowbit::shape_error);
}

TEST_CASE("gptvq_quantize: row weights (the element-wise product paths) move the codebook toward heavy rows") {
    const lowbit::matrix_f w = gaussian(64, 64, 6);
    const lowbit::matrix_d eye = lowbit::matrix_d::Identity(64, 64);
    lowbit::gptvq_options o;
    o.bits = 2; // 16 centroids for 2048 points: the weighting matters
    o.codebook_bits = 0;
    lowbit::vector_f rw = lowbit::vector_f::Ones(64);
    rw.head(8).setConstant(100.0f);
    const auto plain = lowbit::gptvq_quantize(w, eye, o);
    const auto weighted = lowbit::gptvq_quantize(w, eye, o, rw);
    auto err = [&](const lowbit::matrix_f& q, Eigen::Index r0, Eigen::Index n) {
        return static_cast<double>((w.middleRows(r0, n) - q.middleRows(r0, n)).squaredNorm());
    };
    // objective Σ_i a_i ‖w_i − q_i‖²: lower with the weights it optimises
    const double obj_w = 100 * err(weighted.weight(), 0, 8) + err(weighted.weight(), 8, 56);
    const double obj_p = 100 * err(plain.weight(), 0, 8) + err(plain.weight(), 8, 56);
    CHECK(obj_w < obj_p);
    CHECK(err(weighted.weight(), 0, 8) < err(plain.weight(), 0, 8));
}

TEST_CASE("quantile_spacing_proxy: equals rwkv_proxy.hpp when every gap is distinct and every spacing is used") {
    lowbit::matrix_f w(1, 401); // values k², shuffled: the gaps 2k + 1 are all distinct and exact in float
    for (Eigen::Index k = 0; k < 401; ++k) w(0, k) = static_cast<float>(k * k);
    std::shuffle(w.data(), w.data() + w.size(), std::mt19937(7));
    const auto a = lowbit::rwkv_uniformity_proxy(w);
    const auto b = lowbit::quantile_spacing_proxy(w, 400);
    CHECK(a.gaps == 400);
    CHECK(b.gaps == 400);
    CHECK(b.coarse == doctest::Approx(a.coarse).epsilon(1e-9));
    CHECK(b.fine == doctest::Approx(a.fine).epsilon(1e-9));
    // an evenly spaced matrix is perfectly uniform; a Gaussian is not
    lowbit::matrix_f even(16, 64);
    for (Eigen::Index i = 0; i < even.size(); ++i) even.data()[i] = 0.25f * static_cast<float>(i) - 3.0f;
    CHECK(lowbit::quantile_spacing_proxy(even, 1023).coarse < 1e-9);
    CHECK(lowbit::quantile_spacing_proxy(gaussian(64, 64, 8), 1024).coarse > 0.05);
    CHECK_THROWS_AS((void)lowbit::quantile_spacing_proxy(even, 1), lowbit::invalid_argument);
}

TEST_CASE("rwkv_quantize: methods, bits counted, hybrid thresholds reproduce GPTQ and VQ, deterministic") {
    const auto m = tiny_rwkv();
    std::vector<int> calib;
    std::mt19937 rng(1);
    for (int i = 0; i < 300; ++i) calib.push_back(static_cast<int>(rng() % 50));
    lowbit::rwkv_quant_options o;
    o.calib_window = 100;
    o.group_size = 64;
    o.vq.kmeans_iterations = 5;
    o.method = lowbit::rwkv_quant_method::gptq;
    const auto g = lowbit::rwkv_quantize(m, calib, o);
    CHECK(g.records.size() == 14u);
    CHECK(g.model.bits_per_weight() == doctest::Approx(3.5)); // 3 + 32/64
    o.method = lowbit::rwkv_quant_method::vq;
    const auto v = lowbit::rwkv_quantize(m, calib, o);
    // VQ: 3 bits + per 64x64 tile 64·2·8 + 16 bits
    CHECK(v.model.bits_per_weight() == doctest::Approx(3.0 + (64 * 2 * 8 + 16) / 4096.0));
    int prod = 0;
    for (const auto& r : v.records) prod += r.product_weighted;
    CHECK(prod == 6); // att key, att receptance, ffn receptance in both layers
    o.method = lowbit::rwkv_quant_method::rwkvquant;
    o.tau_coarse = o.tau_fine = 1e30; // every matrix scalar
    const auto hs = lowbit::rwkv_quantize(m, calib, o);
    o.tau_coarse = o.tau_fine = 0; // every matrix vector
    const auto hv = lowbit::rwkv_quantize(m, calib, o);
    for (int l = 0; l < 2; ++l)
        for (int s = 0; s < 7; ++s) {
            const auto slot = static_cast<lowbit::rwkv_slot>(s);
            CHECK(weight_of(hs.model.linear(l, slot)) == weight_of(g.model.linear(l, slot)));
            CHECK(weight_of(hv.model.linear(l, slot)) == weight_of(v.model.linear(l, slot)));
        }
    o.method = lowbit::rwkv_quant_method::rtn;
    const auto r = lowbit::rwkv_quantize(m, {}, o);
    CHECK(r.model.bits_per_weight() == doctest::Approx(3.5));
    // every quantized model runs, and the original is untouched
    const std::vector<int> toks{1, 2, 3, 4, 5};
    for (const auto* q : {&g.model, &v.model, &r.model}) {
        lowbit::rwkv_state st(q->config);
        CHECK(lowbit::forward(*q, st, toks).allFinite());
    }
    CHECK(m.bits_per_weight() == 32.0);
    // a quantized model cannot be quantized again; calibration is required
    CHECK_THROWS_AS((void)lowbit::rwkv_quantize(g.model, calib, o), lowbit::invalid_argument);
    o.method = lowbit::rwkv_quant_method::gptq;
    CHECK_THROWS_AS((void)lowbit::rwkv_quantize(m, {}, o), lowbit::shape_error);
}

TEST_CASE("save_rwkv_quantized / load_rwkv_quantized: bit-identical weights, codes and logits") {
    const auto m = tiny_rwkv();
    std::vector<int> calib;
    std::mt19937 rng(2);
    for (int i = 0; i < 200; ++i) calib.push_back(static_cast<int>(rng() % 50));
    lowbit::rwkv_quant_options o;
    o.calib_window = 100;
    o.group_size = 64;
    o.vq.kmeans_iterations = 5;
    std::vector<double> pc; // threshold at the median coarse proxy: a mix of both families
    for (int l = 0; l < 2; ++l)
        for (int s = 0; s < 7; ++s) pc.push_back(lowbit::quantile_spacing_proxy(weight_of(m.linear(l, static_cast<lowbit::rwkv_slot>(s)))).coarse);
    std::sort(pc.begin(), pc.end());
    o.tau_coarse = pc[7];
    o.tau_fine = 1e30;
    const auto q = lowbit::rwkv_quantize(m, calib, o);
    int vq = 0;
    for (const auto& r : q.records) vq += r.family == lowbit::quantization_family::vector;
    const auto path = std::filesystem::temp_directory_path() / "lowbit_test_rwkv_quant.safetensors";
    lowbit::save_rwkv_quantized(q.model, path);
    const auto back = lowbit::load_rwkv_quantized(path);
    std::filesystem::remove(path);
    CHECK(back.bits_per_weight() == q.model.bits_per_weight());
    for (int l = 0; l < 2; ++l)
        for (int s = 0; s < 7; ++s) {
            const auto slot = static_cast<lowbit::rwkv_slot>(s);
            CHECK(weight_of(back.linear(l, slot)) == weight_of(q.model.linear(l, slot)));
        }
    const std::vector<int> toks{3, 1, 4, 1, 5, 9, 2, 6};
    lowbit::rwkv_state a(q.model.config), b(back.config);
    CHECK(lowbit::forward(q.model, a, toks) == lowbit::forward(back, b, toks));
    CHECK(vq == 7);
    // an FP32 model round-trips too; a file of another kind is refused
    const auto fp = std::filesystem::temp_directory_path() / "lowbit_test_rwkv_fp.safetensors";
    lowbit::save_rwkv_quantized(m, fp);
    const auto mf = lowbit::load_rwkv_quantized(fp);
    lowbit::rwkv_state c(m.config), d(mf.config);
    CHECK(lowbit::forward(m, c, toks) == lowbit::forward(mf, d, toks));
    lowbit::io::safetensors_writer w;
    w.add("x", lowbit::matrix_f::Zero(1, 1));
    w.write(fp);
    CHECK_THROWS_AS((void)lowbit::load_rwkv_quantized(fp), lowbit::format_error);
    std::filesystem::remove(fp);
}
