// Tests for lowbit/model/kbvq_moe.hpp. Oracles: the KLT-metric optimum of the joint SVD
// (discarded energy) and exact reconstruction at full rank (IDRE); a brute-force nearest-codeword
// search (VQ); 2×2 least squares solved here by QR, and the corrected layer output recomputed in
// double from the uncorrected model's weights (BCOS); a hand count of the stored bits from the layer
// shapes; a model written and read back through safetensors (bit-identical logits); and — on the
// real checkpoint — the float model's routing.
#include <lowbit/model/checkpoint.hpp>
#include <lowbit/model/kbvq_moe.hpp>

#include <doctest/doctest.h>

#include "models.hpp"
#include "real_moe.hpp"
#include "small_moe.hpp"

#include <Eigen/QR>

#include <algorithm>
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

// Experts with a common part, and an anisotropic input covariance (columns of X scaled 0.2 … 3).
struct expert_set {
    std::vector<lowbit::matrix_f> w;
    lowbit::matrix_f x;
    lowbit::matrix_d sigma;
};

expert_set make_experts(Eigen::Index m, Eigen::Index n, int E, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    expert_set s;
    const lowbit::matrix_f common = rnd(m, n, rng, 1.0f);
    for (int e = 0; e < E; ++e) s.w.push_back(common + rnd(m, n, rng, 0.5f));
    s.x = rnd(300, n, rng, 1.0f);
    for (Eigen::Index j = 0; j < n; ++j) s.x.col(j) *= 0.2f + 2.8f * static_cast<float>(j) / static_cast<float>(n);
    s.sigma = s.x.cast<double>().transpose() * s.x.cast<double>() / 300.0;
    return s;
}

lowbit::kbvq_config small_config() {
    lowbit::kbvq_config c;
    c.calib_window = 64;
    c.idre_rank = 4;
    c.vq_dim = 4;
    c.vq_index_bits = 5;
    c.vq_iterations = 8;
    return c;
}

} // namespace

TEST_CASE("idre_decompose: full rank is lossless up to fp16; rank r reaches the KLT-metric optimum; fp16 pieces") {
    const auto s = make_experts(12, 16, 4, 1);
    const auto full = lowbit::idre_decompose(s.w, s.sigma, 16, 0.0);
    REQUIRE(full.basis.rows() == 16);
    REQUIRE(full.basis.cols() == 16);
    REQUIRE(full.coefficients.size() == 4);
    for (Eigen::Index i = 0; i < full.basis.size(); ++i)
        CHECK(full.basis.data()[i] == lowbit::detail::round_fp16(full.basis.data()[i]));
    double worst = 0;
    for (std::size_t e = 0; e < 4; ++e) {
        const auto& c = full.coefficients[e];
        CHECK(c.rows() == 12);
        CHECK(c.cols() == 16);
        for (Eigen::Index i = 0; i < c.size(); ++i) CHECK(c.data()[i] == lowbit::detail::round_fp16(c.data()[i]));
        const Eigen::MatrixXd rec = c.cast<double>() * full.basis.cast<double>();
        worst = std::max(worst, (rec - s.w[e].cast<double>()).norm() / s.w[e].cast<double>().norm());
    }
    MESSAGE("IDRE full rank, no residual: worst relative reconstruction error " << worst);
    CHECK(worst < 2e-3);
    // rank 3: the Σ-weighted error Σ_e ‖(W_e − C_e Bₛ)Σ^{1/2}‖² is the KLT SVD's discarded energy
    // (fp16 pieces + refit: within 1 %); Σ^{1/2} weighting = ‖(W − CB)Xᵀ‖²/T
    const auto tr = lowbit::idre_decompose(s.w, s.sigma, 3, 0.0);
    const double opt = lowbit::joint_svd_klt(s.w, s.sigma, 3, 0.0).discarded_energy;
    double err = 0;
    for (std::size_t e = 0; e < 4; ++e) {
        const Eigen::MatrixXd d = s.w[e].cast<double>() - tr.coefficients[e].cast<double>() * tr.basis.cast<double>();
        err += (d * s.x.cast<double>().transpose()).squaredNorm() / 300.0;
    }
    CHECK(err >= opt * (1 - 1e-6));
    CHECK(err <= opt * 1.01);
    CHECK_THROWS_AS((void)lowbit::idre_decompose(s.w, s.sigma, 17, 0.0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::idre_decompose(s.w, s.sigma.topLeftCorner(8, 8), 2, 0.0), lowbit::shape_error);
}

TEST_CASE("shared_codebook_vq: every code is the brute-force nearest fp16 codeword; scales are row RMS; seeded") {
    std::mt19937_64 rng(3);
    std::vector<lowbit::matrix_f> mats;
    std::vector<lowbit::vector_f> imp;
    for (int e = 0; e < 3; ++e) {
        mats.push_back(rnd(10, 16, rng, 1.0f + static_cast<float>(e)));
        lowbit::vector_f h(16);
        for (Eigen::Index j = 0; j < 16; ++j) h(j) = 0.1f + static_cast<float>((j * 7 + e) % 5);
        imp.push_back(h);
    }
    const auto vq = lowbit::shared_codebook_vq(mats, imp, 4, 4, 6, 11);
    REQUIRE(vq.codebook.rows() == 16);
    REQUIRE(vq.codebook.cols() == 4);
    for (Eigen::Index i = 0; i < vq.codebook.size(); ++i)
        CHECK(vq.codebook.data()[i] == lowbit::detail::round_fp16(vq.codebook.data()[i]));
    long long mismatches = 0;
    for (std::size_t e = 0; e < 3; ++e) {
        REQUIRE(vq.codes[e].size() == 40);
        for (Eigen::Index i = 0; i < 10; ++i) {
            const double rms = std::sqrt(mats[e].row(i).cast<double>().squaredNorm() / 16.0);
            CHECK(vq.row_scale[e](i) == lowbit::detail::round_fp16(static_cast<float>(rms)));
            for (Eigen::Index c = 0; c < 4; ++c) {
                // brute force: argmin_k Σ_j h_j (w_ij/s_i − c_kj)² over the fp16 codebook
                std::uint32_t best = 0;
                double bd = 1e300;
                for (Eigen::Index k = 0; k < 16; ++k) {
                    double d = 0;
                    for (Eigen::Index j = 0; j < 4; ++j) {
                        const double v = static_cast<double>(mats[e](i, c * 4 + j)) / vq.row_scale[e](i) - vq.codebook(k, j);
                        d += static_cast<double>(imp[e](c * 4 + j)) * v * v;
                    }
                    if (d < bd) {
                        bd = d;
                        best = static_cast<std::uint32_t>(k);
                    }
                }
                mismatches += vq.codes[e][static_cast<std::size_t>(i * 4 + c)] != best;
            }
        }
        const lowbit::matrix_f dec = vq.decode_normalised(e, 10, 16);
        CHECK(dec.row(3).segment(8, 4) == vq.codebook.row(vq.codes[e][3 * 4 + 2]));
    }
    CHECK(mismatches == 0);
    const auto again = lowbit::shared_codebook_vq(mats, imp, 4, 4, 6, 11);
    CHECK(again.codebook == vq.codebook);
    CHECK(again.codes == vq.codes);
    CHECK(lowbit::shared_codebook_vq(mats, imp, 4, 4, 6, 12).codebook != vq.codebook);
    CHECK_THROWS_AS((void)lowbit::shared_codebook_vq(mats, imp, 4, 7, 6, 0), lowbit::invalid_argument); // K = 128 > 120 vectors
    CHECK_THROWS_AS((void)lowbit::shared_codebook_vq(mats, imp, 5, 4, 6, 0), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::shared_codebook_vq(mats, imp, 4, 0, 6, 0), lowbit::invalid_argument);
}

TEST_CASE("fit_bcos: per-channel least squares on (ŷ, uᵀx) (QR oracle); lowers the output error; fp16 β and u") {
    std::mt19937_64 rng(5);
    lowbit::matrix_f x = rnd(200, 12, rng, 1.0f);
    x.col(2).array() += 3.0f; // a non-zero mean input
    x.col(7).array() -= 1.5f;
    const lowbit::matrix_f w = rnd(6, 12, rng, 1.0f);
    const lowbit::matrix_f wh = 0.9f * w + rnd(6, 12, rng, 0.2f);
    const auto b = lowbit::fit_bcos(x, w, wh);
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::VectorXd mu = xd.colwise().mean().transpose();
    for (Eigen::Index j = 0; j < 12; ++j)
        CHECK(b.direction(j) == lowbit::detail::round_fp16(static_cast<float>(mu(j) / mu.squaredNorm())));
    const Eigen::VectorXd z = xd * b.direction.cast<double>();
    CHECK(z.mean() == doctest::Approx(1.0).epsilon(2e-3));
    const Eigen::MatrixXd y = xd * w.cast<double>().transpose(), yh = xd * wh.cast<double>().transpose();
    for (Eigen::Index k = 0; k < 6; ++k) {
        Eigen::MatrixXd a(200, 2);
        a.col(0) = yh.col(k);
        a.col(1) = z;
        const Eigen::Vector2d sol = a.colPivHouseholderQr().solve(y.col(k));
        CHECK(b.gamma(k) == doctest::Approx(sol(0)).epsilon(1e-5));
        CHECK(b.beta(k) == lowbit::detail::round_fp16(static_cast<float>(sol(1))));
    }
    const lowbit::matrix_f corrected = b.apply(x, (x * wh.transpose()).eval());
    const double before = (y - yh).squaredNorm(), after = (y - corrected.cast<double>()).squaredNorm();
    MESSAGE("BCOS on a shrunk noisy layer: output error " << before << " -> " << after);
    CHECK(after < 0.7 * before); // measured 0.57: the LS optimum undoes most of the 0.9 shrink and the mean shift
    CHECK_THROWS_AS((void)lowbit::fit_bcos(x, w, wh.leftCols(11)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::fit_bcos(lowbit::matrix_f(0, 12), w, wh), lowbit::shape_error);
}

TEST_CASE("quantize_kbvq_moe: switches change exactly what they claim; BCOS folded = the correction computed in double") {
    const auto m = lowbit_test::small_moe(2, 21);
    const auto toks = random_tokens(128, 40, 4);
    auto c = small_config();
    c.bcos = false;
    const auto off = lowbit::quantize_kbvq_moe(m, toks, c);
    c.bcos = true;
    const auto on = lowbit::quantize_kbvq_moe(m, toks, c);
    // layer 0 sees the float model in both runs: identical attention records, different experts
    for (const char* a : {"wq", "wk", "wv", "wo"}) {
        const std::string k = std::string("layers.0.") + a;
        CHECK(on.q.records.at(k).format == "int4");
        CHECK(same_record(on.q.records.at(k), off.q.records.at(k)));
    }
    // BCOS oracle on layer 0: y_on = γ ⊙ (x W_offᵀ) + β·(uᵀx) with (γ, β) solved here by QR
    const auto inputs = lowbit::capture_expert_inputs(m, 0, toks, 64);
    double worst = 0, gain = 0, base = 0;
    for (int e = 0; e < 4; ++e)
        for (const char* s : {"w1", "w2", "w3"}) {
            const std::string key = "layers.0.experts." + std::to_string(e) + "." + s;
            const auto& x = inputs[static_cast<std::size_t>(e)][std::string(s) == "w2" ? 1 : 0];
            REQUIRE(x.rows() > 4);
            const auto slot = std::string(s) == "w1" ? lowbit::linear_slot::w1 : std::string(s) == "w2" ? lowbit::linear_slot::w2 : lowbit::linear_slot::w3;
            const lowbit::matrix_f w = lowbit::detail::dense_weight_of(m.linear(lowbit::linear_id{0, slot, e}), "test");
            const Eigen::MatrixXd xd = x.cast<double>();
            const Eigen::VectorXd mu = xd.colwise().mean().transpose();
            Eigen::VectorXd u(mu.size());
            for (Eigen::Index j = 0; j < u.size(); ++j) u(j) = lowbit::detail::round_fp16(static_cast<float>(mu(j) / mu.squaredNorm()));
            const Eigen::VectorXd z = xd * u;
            const Eigen::MatrixXd y = xd * w.cast<double>().transpose();
            // the experts are packed "kbvq_vq" records (no dense copy): their operators' outputs
            auto run = [&](const lowbit::kbvq_result& q) {
                lowbit::matrix_f out;
                q.q.model.linear(lowbit::linear_id{0, slot, e}).apply(x, out);
                return Eigen::MatrixXd(out.cast<double>());
            };
            REQUIRE(off.q.records.at(key).format == "kbvq_vq");
            const Eigen::MatrixXd y_off = run(off), y_on = run(on);
            Eigen::MatrixXd expect(y.rows(), y.cols());
            for (Eigen::Index k = 0; k < y.cols(); ++k) {
                Eigen::MatrixXd a(y.rows(), 2);
                a.col(0) = y_off.col(k);
                a.col(1) = z;
                const Eigen::Vector2d sol = a.colPivHouseholderQr().solve(y.col(k));
                expect.col(k) = sol(0) * y_off.col(k) + sol(1) * z;
            }
            worst = std::max(worst, (y_on - expect).norm() / y_off.norm());
            gain += (y - y_on).squaredNorm();
            base += (y - y_off).squaredNorm();
        }
    MESSAGE("BCOS folded vs computed in double: worst relative difference " << worst << "; layer-0 expert output error "
                                                                          << base << " -> " << gain);
    CHECK(worst < 3e-3);
    CHECK(gain < base);
    CHECK(on.expert_output_error[0] < off.expert_output_error[0]);
    // IDRE at rank 24 with the residual dropped: the w2 experts (input width 24) are reproduced up to
    // fp16, the w1/w3 experts (input width 32) are not
    auto lossless = small_config();
    lossless.idre_rank = 24;
    lossless.residual = lowbit::kbvq_residual::none;
    lossless.bcos = false;
    const auto r = lowbit::quantize_kbvq_moe(m, toks, lossless);
    for (int e = 0; e < 4; ++e) {
        const lowbit::matrix_f w2 = lowbit::detail::dense_weight_of(m.linear(lowbit::linear_id{0, lowbit::linear_slot::w2, e}), "test");
        const lowbit::matrix_f w1 = lowbit::detail::dense_weight_of(m.linear(lowbit::linear_id{0, lowbit::linear_slot::w1, e}), "test");
        const auto& d2 = r.q.records.at("layers.0.experts." + std::to_string(e) + ".w2").dense;
        const auto& d1 = r.q.records.at("layers.0.experts." + std::to_string(e) + ".w1").dense;
        CHECK((d2 - w2).norm() / w2.norm() < 2e-3);
        CHECK((d1 - w1).norm() / w1.norm() > 0.05);
    }
    // scalar residual without IDRE and BCOS = per-row RTN of each expert: 2-bit grid, at most 4 values per row
    auto scalar = small_config();
    scalar.idre = scalar.bcos = false;
    scalar.residual = lowbit::kbvq_residual::scalar;
    const auto sr = lowbit::quantize_kbvq_moe(m, toks, scalar);
    const auto& d = sr.q.records.at("layers.1.experts.3.w3").dense;
    for (Eigen::Index i = 0; i < d.rows(); ++i) {
        std::vector<float> vals(d.row(i).data(), d.row(i).data() + d.cols());
        std::sort(vals.begin(), vals.end());
        CHECK(std::unique(vals.begin(), vals.end()) - vals.begin() <= 4);
    }
    // the router is untouched
    CHECK((on.q.model.blocks[1].router.array() == m.blocks[1].router.array()).all());
}

TEST_CASE("quantize_kbvq_moe: bits counted by hand; deterministic; seeded; save and reload bit-identical; bad configs") {
    const auto m = lowbit_test::small_moe(2, 9);
    const auto toks = random_tokens(128, 40, 2);
    const double E = 4;
    // attention: int4 container (4 bits) + fp16 α, μ per row
    double attn_bits = 0, attn_w = 0;
    for (auto [r, c] : {std::pair{32, 32}, {16, 32}, {16, 32}, {32, 32}}) {
        attn_bits += 4.0 * r * c + 32.0 * r;
        attn_w += r * c;
    }
    // experts, per projection type [m x n], E experts: IDRE r = 4: E·16·m·4 + 16·4·n (one basis);
    // VQ d = 4, K = 32: E·(m·n/4·5 + 16·m) + 16·32·4 (one codebook); BCOS: E·16·(m + n).
    // Scalar 2 bits, no IDRE, no BCOS: E·(2·m·n + 32·m).
    double kbvq_bits = 0, scalar_bits = 0, exp_w = 0;
    for (auto [r, c] : {std::pair{24, 32}, {32, 24}, {24, 32}}) {
        kbvq_bits += E * 16 * r * 4 + 16 * 4 * c + E * (r * c / 4.0 * 5 + 16 * r) + 16 * 32 * 4 + E * 16 * (r + c);
        scalar_bits += E * (2.0 * r * c + 32 * r);
        exp_w += E * r * c;
    }
    for (bool full : {true, false}) {
        auto c = small_config();
        if (!full) {
            c.idre = c.bcos = false;
            c.residual = lowbit::kbvq_residual::scalar;
            c.name = "kbvq-scalar";
        }
        const auto r = lowbit::quantize_kbvq_moe(m, toks, c);
        const double eb = full ? kbvq_bits : scalar_bits;
        CHECK(r.expert_bits_per_weight == doctest::Approx(eb / exp_w).epsilon(1e-12));
        CHECK(r.bits_per_weight == doctest::Approx(2 * (attn_bits + eb) / (2 * (attn_w + exp_w))).epsilon(1e-12));
        CHECK(r.layer_seconds.size() == 2);
        CHECK(r.q.records.at("layers.1.experts.2.w2").format == (full ? "kbvq_vq" : "dense"));
        // deterministic
        const auto again = lowbit::quantize_kbvq_moe(m, toks, c);
        for (const auto& [k, rec] : r.q.records) CHECK(same_record(rec, again.q.records.at(k)));
        // save → load: same name, identical records and bits, bit-identical logits
        CHECK(lowbit_test::reloads_identically(r.q, "kbvq_" + c.name, random_tokens(20, 40, 5)));
    }
    // another seed: another codebook (the VQ experts change, attention of layer 0 does not)
    auto c = small_config();
    const auto a = lowbit::quantize_kbvq_moe(m, toks, c);
    c.seed = 1;
    const auto b = lowbit::quantize_kbvq_moe(m, toks, c);
    CHECK(same_record(a.q.records.at("layers.0.wq"), b.q.records.at("layers.0.wq")));
    CHECK(!same_record(a.q.records.at("layers.0.experts.0.w1"), b.q.records.at("layers.0.experts.0.w1")));
    // bad configurations
    auto bad = [&](auto edit) {
        auto k = small_config();
        edit(k);
        return k;
    };
    using lowbit::kbvq_config;
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.idre_rank = 0; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.idre_rank = 33; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) {
                        k.idre = false;
                        k.residual = lowbit::kbvq_residual::none;
                    })),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.vq_index_bits = 17; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.vq_index_bits = 12; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.attention_bits = 5; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.scalar_bits = 1; })), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, toks, bad([](kbvq_config& k) { k.vq_dim = 5; })), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_kbvq_moe(m, std::vector<int>{}, small_config()), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::kbvq_preset(4), lowbit::invalid_argument);
    CHECK(lowbit::kbvq_preset(3).vq_dim == 2);
}

TEST_CASE("real qwen3moe-18M-en: KBVQ-MoE at ~2 bits runs, keeps most of the float routing, reloads identically") {
    auto real = lowbit_test::open_real_moe();
    auto& fp = real.fp;
    const auto& calib = real.calib;
    const auto& dev = real.dev;
    auto c = lowbit::kbvq_preset(2);
    c.calib_window = 256;
    c.calib_windows = 1;
    c.vq_iterations = 2;
    const auto r = lowbit::quantize_kbvq_moe(fp.model, calib, c);
    const auto cmp = lowbit::compare_routing(fp.model, r.q.model, dev, 256, 1);
    MESSAGE("kbvq-w2 (1 calibration window, 2 Lloyd iterations): bits/weight " << r.bits_per_weight << " (experts "
            << r.expert_bits_per_weight << "), top-2 agreement " << cmp.agreement << ", router logit RMSE " << cmp.logit_rmse
            << ", expert output error layer 0 " << r.expert_output_error[0]);
    // experts: 2 index bits + row scales, codebook, IDRE r = 4 and BCOS; counted from the shapes
    CHECK(r.expert_bits_per_weight > 2.0);
    CHECK(r.expert_bits_per_weight < 2.6);
    CHECK(r.expert_output_error[0] < 0.5);
    CHECK(cmp.agreement > 0.6);
    CHECK(lowbit_test::reloads_identically(r.q, "kbvq_real", std::span<const int>(dev.data(), 64)));
}
