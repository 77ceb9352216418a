// Tests for lowbit/model/mobie.hpp. Oracles: direct reconstruction G·F_e (CEJD), the Eckart–Young
// optimum (discarded energy of the joint SVD), the Schur-complement formula for GPTQ's U diagonal,
// glas_saliency (moe.hpp), a hand count of the stored bits from the layer shapes, a model written
// and read back through safetensors (bit-identical logits), and — on the real checkpoint — the same
// recipe with NGES switched off.
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/mobie.hpp>

#include <doctest/doctest.h>

#include "models.hpp"
#include "real_moe.hpp"
#include "small_moe.hpp"

#include <cmath>
#include <filesystem>
#include <random>
#include <vector>

namespace {

using lowbit_test::random_tokens;
using lowbit_test::same_record;

lowbit::matrix_f rnd(Eigen::Index r, Eigen::Index c, std::mt19937_64& rng, float sd) {
    return lowbit_test::normal_matrix(r, c, rng, sd);
}

} // namespace

TEST_CASE("cejd_decompose: full rank is lossless; truncated rank reaches the Eckart-Young optimum; fp16 basis") {
    std::mt19937_64 rng(1);
    const lowbit::matrix_f common = rnd(24, 32, rng, 1.0f);
    std::vector<lowbit::matrix_f> ex;
    for (int e = 0; e < 4; ++e) ex.push_back(common + rnd(24, 32, rng, 0.5f));
    const auto full = lowbit::cejd_decompose(ex, 24);
    REQUIRE(full.basis.rows() == 24);
    REQUIRE(full.basis.cols() == 24);
    REQUIRE(full.factors.size() == 4);
    for (Eigen::Index i = 0; i < full.basis.size(); ++i)
        CHECK(full.basis.data()[i] == lowbit::detail::round_fp16(full.basis.data()[i]));
    double worst = 0;
    for (std::size_t e = 0; e < 4; ++e) {
        CHECK(full.factors[e].rows() == 24);
        CHECK(full.factors[e].cols() == 32);
        const Eigen::MatrixXd rec = full.basis.cast<double>() * full.factors[e].cast<double>();
        worst = std::max(worst, (rec - ex[e].cast<double>()).norm() / ex[e].cast<double>().norm());
    }
    MESSAGE("CEJD full rank: worst relative reconstruction error " << worst);
    CHECK(worst < 2e-6);
    // rank 8: the error is the joint SVD's discarded energy (fp16 basis + refit: within 1 %)
    const auto tr = lowbit::cejd_decompose(ex, 8);
    const double opt = lowbit::joint_svd_shared_left(ex, 8).discarded_energy;
    double err = 0;
    for (std::size_t e = 0; e < 4; ++e)
        err += (tr.basis.cast<double>() * tr.factors[e].cast<double>() - ex[e].cast<double>()).squaredNorm();
    CHECK(err >= opt * (1 - 1e-6));
    CHECK(err <= opt * 1.01);
    CHECK_THROWS_AS((void)lowbit::cejd_decompose(ex, 25), lowbit::invalid_argument);
}

TEST_CASE("gptq_u_diagonal (Schur complement oracle) and GLAS weights (ω·w² = glas_saliency)") {
    std::mt19937_64 rng(2);
    const lowbit::matrix_f x = rnd(200, 12, rng, 1.0f);
    lowbit::gptq_hessian acc(12);
    acc.add(x);
    const lowbit::matrix_d h = acc.matrix();
    const lowbit::vector_f u = lowbit::gptq_u_diagonal(h, 0.01);
    Eigen::MatrixXd hd = h;
    hd.diagonal().array() += 0.01 * hd.diagonal().mean();
    for (Eigen::Index j = 0; j < 12; ++j) {
        // H⁻¹ = UᵀU with U upper ⇔ H = R Rᵀ, R = U⁻¹ upper ⇒ u_jj² = [(H[j:, j:])⁻¹]_00
        const Eigen::MatrixXd tail = hd.bottomRightCorner(12 - j, 12 - j);
        CHECK(u(j) == doctest::Approx(std::sqrt(tail.inverse()(0, 0))).epsilon(1e-5));
    }
    const lowbit::matrix_f w = rnd(6, 12, rng, 1.0f);
    const lowbit::matrix_f g = rnd(6, 12, rng, 0.1f);
    const lowbit::matrix_d om = lowbit::glas_error_weights(w, u, g.cast<double>(), 2.0);
    const lowbit::matrix_f s = lowbit::glas_saliency(w, u, g, 2.0);
    for (Eigen::Index i = 0; i < 6; ++i)
        for (Eigen::Index j = 0; j < 12; ++j)
            CHECK(om(i, j) * w(i, j) * w(i, j) == doctest::Approx(s(i, j)).epsilon(1e-5));
    const lowbit::matrix_d local = lowbit::glas_error_weights(w, u, g.cast<double>(), 0.0);
    for (Eigen::Index j = 0; j < 12; ++j) CHECK(local(3, j) == doctest::Approx(1.0 / (u(j) * u(j))));
    const lowbit::vector_f rw = lowbit::vector_f::Constant(6, 3.0f);
    CHECK((lowbit::glas_error_weights(w, u, g.cast<double>(), 2.0, rw) - 3.0 * om).cwiseAbs().maxCoeff() < 1e-9 * om.maxCoeff());
    CHECK_THROWS_AS((void)lowbit::glas_error_weights(w, u, g.cast<double>(), -1.0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::glas_error_weights(w, u.head(5), g.cast<double>(), 1.0), lowbit::shape_error);
}

TEST_CASE("weighted_binary_quantizer: a dominant weight pins its entry; never worse than the weighted start") {
    std::mt19937_64 rng(4);
    const lowbit::matrix_f w = rnd(5, 40, rng, 1.0f);
    lowbit::matrix_d om = lowbit::matrix_d::Ones(5, 40);
    for (Eigen::Index i = 0; i < 5; ++i) om(i, 7) = 1e6;
    const lowbit::weighted_binary_quantizer q{om, 15};
    const auto p = q.fit(w);
    lowbit::vector_f out(5);
    q.round_column(p, w.col(7), out);
    for (Eigen::Index i = 0; i < 5; ++i) CHECK(std::fabs(out(i) - w(i, 7)) < 1e-3f * (1.0f + std::fabs(w(i, 7))));
    // uniform weights: weighted error at the fit ≤ at the start (mean, mean |w − μ|)
    const lowbit::weighted_binary_quantizer u{lowbit::matrix_d::Ones(5, 40), 15};
    const auto pu = u.fit(w);
    for (Eigen::Index i = 0; i < 5; ++i) {
        const double mu0 = w.row(i).mean();
        const double a0 = (w.row(i).array() - static_cast<float>(mu0)).abs().mean();
        double e0 = 0, e1 = 0;
        for (Eigen::Index j = 0; j < 40; ++j) {
            const double x = w(i, j);
            e0 += std::pow(x - mu0 - a0 * (x >= mu0 ? 1 : -1), 2);
            e1 += std::pow(x - pu.mean(i) - pu.alpha0(i) * (x >= pu.mean(i) ? 1 : -1), 2);
        }
        CHECK(e1 <= e0 * (1 + 1e-6));
    }
}

TEST_CASE("quantize_mobie: bits counted by hand; ablations; deterministic; save and reload bit-identical") {
    const auto m = lowbit_test::small_moe(2, 9);
    const auto toks = random_tokens(128, 40, 2);
    const int E = 4;
    // hand count: attention binary1 (1 bit + fp16 α, μ per row); experts with CEJD at k = m:
    // per projection type E·(k·n + 32·k) + 16·m·k (the shared basis)
    double attn_bits = 0, attn_w = 0;
    for (auto [r, c] : {std::pair{32, 32}, {16, 32}, {16, 32}, {32, 32}}) {
        attn_bits += r * c + 32.0 * r;
        attn_w += r * c;
    }
    double cejd_bits = 0, plain_bits = 0, exp_w = 0;
    for (auto [r, c] : {std::pair{24, 32}, {32, 24}, {24, 32}}) {
        const double k = r;
        cejd_bits += E * (k * c + 32.0 * k) + 16.0 * r * k;
        plain_bits += E * (r * c + 32.0 * r);
        exp_w += E * r * c;
    }
    for (bool cejd : {true, false}) {
        lowbit::mobie_config c;
        c.cejd = cejd;
        c.calib_window = 64;
        c.name = cejd ? "mobie-w1" : "mobie-nocejd";
        const auto r = lowbit::quantize_mobie(m, toks, c);
        const double eb = cejd ? cejd_bits : plain_bits;
        CHECK(r.expert_bits_per_weight == doctest::Approx(eb / exp_w).epsilon(1e-12));
        CHECK(r.bits_per_weight == doctest::Approx(2 * (attn_bits + eb) / (2 * (attn_w + exp_w))).epsilon(1e-12));
        CHECK(r.layer_seconds.size() == 2);
        CHECK(r.gradient_seconds > 0);
        REQUIRE(r.null_space_error.size() == 2);
        CHECK(r.null_space_error[0] > 0);
        CHECK(r.q.records.at("layers.0.wq").format == "binary1");
        CHECK(r.q.records.at("layers.1.experts.2.w2").format == (cejd ? "cejd_binary1" : "binary1"));
        // deterministic
        const auto again = lowbit::quantize_mobie(m, toks, c);
        for (const auto& [k, rec] : r.q.records) CHECK(same_record(rec, again.q.records.at(k)));
        // save → load: identical records, bit-identical logits
        const auto path = std::filesystem::temp_directory_path() / ("lowbit_test_mobie_" + c.name + ".safetensors");
        lowbit::save_quantized_model(path, r.q);
        const auto back = lowbit::load_quantized_model(path);
        std::filesystem::remove(path);
        CHECK(back.spec.name == c.name);
        REQUIRE(back.records.size() == r.q.records.size());
        for (const auto& [k, rec] : r.q.records) CHECK(same_record(rec, back.records.at(k)));
        CHECK(back.model.bits_per_weight() == doctest::Approx(r.bits_per_weight).epsilon(1e-12));
        lowbit::kv_cache c1(m.config), c2(m.config);
        const auto probe = random_tokens(20, 40, 5);
        const auto y1 = lowbit::forward(r.q.model, c1, probe);
        const auto y2 = lowbit::forward(back.model, c2, probe);
        CHECK((y1.array() == y2.array()).all());
    }
    // every component off = plain GPTQ binarization with ARB: all records binary1, the router untouched
    lowbit::mobie_config off;
    off.cejd = off.glas = off.nges = false;
    off.calib_window = 64;
    const auto r = lowbit::quantize_mobie(m, toks, off);
    for (const auto& [k, rec] : r.q.records) CHECK(rec.format == "binary1");
    CHECK(r.gradient_seconds == 0);
    CHECK((r.q.model.blocks[1].router.array() == m.blocks[1].router.array()).all());
    lowbit::mobie_config bad;
    bad.cejd_rank = 0;
    CHECK_THROWS_AS((void)lowbit::quantize_mobie(m, toks, bad), lowbit::invalid_argument);
}

TEST_CASE("real qwen3moe-18M-en: NGES lowers the null-space error ‖ΔW Q_k‖ against the same recipe without it; router shift reported; reload identical") {
    auto real = lowbit_test::open_real_moe();
    auto& fp = real.fp;
    const auto& calib = real.calib;
    const auto& dev = real.dev;
    std::vector<lowbit::mobie_result> runs;
    std::vector<double> rmse;
    for (bool nges : {true, false}) {
        lowbit::mobie_config c;
        c.nges = nges;
        c.calib_window = 256;
        c.calib_windows = 1;
        c.name = nges ? "mobie-w1" : "mobie-nonges";
        runs.push_back(lowbit::quantize_mobie(fp.model, calib, c));
        const auto cmp = lowbit::compare_routing(fp.model, runs.back().q.model, dev, 256, 1);
        rmse.push_back(cmp.logit_rmse);
        MESSAGE(c.name << ": null-space error layer 0 " << runs.back().null_space_error[0] << ", router logit RMSE "
                       << cmp.logit_rmse << ", top-2 agreement " << cmp.agreement << ", bits/weight "
                       << runs.back().bits_per_weight << " (experts " << runs.back().expert_bits_per_weight << ")");
    }
    // layer 0 sees the same inputs in both runs: the NGES objective must show there
    CHECK(runs[0].null_space_error[0] < runs[1].null_space_error[0]);
    double with = 0, without = 0;
    for (std::size_t l = 0; l < runs[0].null_space_error.size(); ++l) {
        with += runs[0].null_space_error[l];
        without += runs[1].null_space_error[l];
    }
    CHECK(with < without);
    // The paper's claim that this also lowers the router shift does NOT hold on this checkpoint at the
    // defaults (k = n/4, η = 10; measured 0.704 with vs 0.678 without, see docs/moe.md): only a bound.
    CHECK(rmse[0] < 1.10 * rmse[1]);
    CHECK(runs[0].bits_per_weight == runs[1].bits_per_weight);
    // save → reload of the real MoBiE model: bit-identical logits
    const auto path = std::filesystem::temp_directory_path() / "lowbit_test_mobie_real.safetensors";
    lowbit::save_quantized_model(path, runs[0].q);
    const auto back = lowbit::load_quantized_model(path);
    std::filesystem::remove(path);
    lowbit::kv_cache c1(fp.model.config), c2(fp.model.config);
    const std::span<const int> probe(dev.data(), 64);
    CHECK((lowbit::forward(runs[0].q.model, c1, probe).array() == lowbit::forward(back.model, c2, probe).array()).all());
}
