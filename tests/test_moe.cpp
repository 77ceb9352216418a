// Tests for lowbit/moe.hpp. Oracles: hand-worked tables (usage, σ, EBSS scores, GLAS saliency);
// a double loop (2/N)Σ_t c_t x_t x_tᵀ for AGQ, and the gate-weighted output error of GPTQ with and
// without it; the projector identities (P² = P, Pᵀ = P, δP·q = 0 for the top
// eigenvectors q computed here by power iteration, not by the library) for NGES.
#include <lowbit/moe.hpp>
#include <lowbit/rtn.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <cmath>
#include <limits>
#include <random>

namespace {

using lowbit_test::gaussian;

} // namespace

TEST_CASE("EBSS: usage, balance std and scores (hand-worked)") {
    const std::vector<int> ids = {0, 1, 1, 3, 3, 3, 0, 1};
    const auto u = lowbit::expert_usage(ids, 4);
    REQUIRE(u.size() == 4);
    CHECK(u[0] == doctest::Approx(0.25));
    CHECK(u[1] == doctest::Approx(0.375));
    CHECK(u[2] == doctest::Approx(0.0));
    CHECK(u[3] == doctest::Approx(0.375));
    // mean 0.25, deviations 0, .125, −.25, .125 → Σ² = 0.09375, /3 = 0.03125, σ = 0.1767767
    CHECK(lowbit::expert_balance_std(u) == doctest::Approx(0.1767767).epsilon(1e-6));
    const std::vector<double> flat = {0.25, 0.25, 0.25, 0.25};
    CHECK(lowbit::expert_balance_std(flat) == 0.0);
    // score = −(−12)/6 + 0.1767767/0.5
    CHECK(lowbit::ebss_score(-12.0, 6, u, 0.5) == doctest::Approx(2.0 + 0.3535534).epsilon(1e-6));
    CHECK(lowbit::ebss_score(-12.0, 6, flat, 0.5) < lowbit::ebss_score(-12.0, 6, u, 0.5));
    const std::vector<double> scores = {3.0, 1.0, 2.0, 1.0};
    CHECK(lowbit::ebss_select(scores, 3) == std::vector<std::size_t>{1, 3, 2});
    CHECK(lowbit::ebss_select(scores, 9).size() == 4);
}

TEST_CASE("AGQ Hessian is the gate-weighted Gram of the routed tokens and drives GPTQ") {
    const auto x = gaussian(20, 5, 1);
    lowbit::vector_f gate(20);
    for (int t = 0; t < 20; ++t) gate(t) = (t % 3 == 0) ? 0.0f : 0.05f * static_cast<float>(t);
    const auto h = lowbit::agq_hessian(x, gate);
    CHECK(h.tokens() == 13);
    Eigen::MatrixXd want = Eigen::MatrixXd::Zero(5, 5);
    for (int t = 0; t < 20; ++t)
        for (int a = 0; a < 5; ++a)
            for (int b = 0; b < 5; ++b) want(a, b) += 2.0 / 13.0 * double(gate(t)) * x(t, a) * x(t, b);
    CHECK((h.matrix() - want).cwiseAbs().maxCoeff() < 1e-9);

    // AGQ vs the unweighted Hessian: on the gate-weighted output error Σ_t c_t ‖(W − Q) x_t‖²
    // (the error of the MoE output, scaled by the gate), the AGQ-driven GPTQ is not worse.
    const lowbit::matrix_f xs = gaussian(400, 32, 2) * (lowbit::matrix_f::Identity(32, 32) + gaussian(32, 32, 3, 0.3f));
    lowbit::vector_f g2(400);
    std::mt19937_64 rng(4);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (int t = 0; t < 400; ++t) {
        const float v = u(rng);
        g2(t) = v * v * v * v; // skewed affinities
    }
    const auto w = gaussian(16, 32, 5);
    lowbit::gptq_hessian plain(32);
    plain.add(xs);
    const lowbit::rtn_quantizer q3{3};
    const auto r_agq = lowbit::gptq_quantize(w, lowbit::agq_hessian(xs, g2).matrix(), q3);
    const auto r_plain = lowbit::gptq_quantize(w, plain.matrix(), q3);
    auto weighted_err = [&](const lowbit::matrix_f& wq) {
        const Eigen::MatrixXd y = (w - wq).cast<double>() * xs.cast<double>().transpose(); // [16 x 400]
        double e = 0;
        for (int t = 0; t < 400; ++t) e += double(g2(t)) * y.col(t).squaredNorm();
        return e;
    };
    CHECK(weighted_err(r_agq.weights) < weighted_err(r_plain.weights));

    lowbit::vector_f neg = gate;
    neg(1) = -0.1f;
    CHECK_THROWS_AS((void)lowbit::agq_hessian(x, neg), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::agq_hessian(x, gate.head(19)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::agq_hessian(x, lowbit::vector_f::Zero(20)), lowbit::shape_error);
}

TEST_CASE("NGES projector removes the update's effect on the dominant input directions") {
    // Inputs concentrated in a 2-D subspace plus small noise.
    const auto basis = gaussian(2, 8, 10);
    const lowbit::matrix_f x = gaussian(200, 2, 11) * basis * 3.0f + gaussian(200, 8, 12, 0.05f);
    const Eigen::MatrixXd xd = x.cast<double>();
    const lowbit::matrix_d gram = xd.transpose() * xd;
    const auto p = lowbit::input_null_space_projector(gram, 2);
    CHECK((p * p - p).cwiseAbs().maxCoeff() < 1e-10);
    CHECK((p - p.transpose()).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(p.trace() == doctest::Approx(6.0));
    // Independent top eigenvector by power iteration.
    Eigen::VectorXd v = Eigen::VectorXd::Ones(8);
    for (int it = 0; it < 500; ++it) v = (gram * v).normalized();
    const auto delta = gaussian(4, 8, 13);
    const auto dp = lowbit::project_update(delta, p);
    CHECK((dp.cast<double>() * v).norm() < 1e-4 * delta.norm());
    // Output change on the calibration inputs shrinks a lot; the update norm never grows.
    const double before = (delta.cast<double>() * xd.transpose()).norm();
    const double after = (dp.cast<double>() * xd.transpose()).norm();
    CHECK(after < 0.1 * before);
    CHECK(dp.norm() <= delta.norm() * (1 + 1e-6));
    // k = 0 is the identity.
    CHECK((lowbit::input_null_space_projector(gram, 0) - lowbit::matrix_d::Identity(8, 8)).norm() == 0.0);
    // Penalised Hessian adds η·mean(diag H) on span(Q_k) only.
    const lowbit::matrix_d h = 2.0 * gram;
    const auto hp = lowbit::nges_penalized_hessian(h, gram, 2, 0.5);
    const double scale = 0.5 * h.diagonal().mean();
    CHECK(v.dot((hp - h) * v) == doctest::Approx(scale).epsilon(1e-6));
    CHECK(((hp - h) * (p * Eigen::VectorXd::Ones(8))).norm() < 1e-8 * scale);
    CHECK_THROWS_AS((void)lowbit::input_null_space_projector(gram, 9), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::project_update(gaussian(4, 7, 1), p), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::nges_penalized_hessian(h, gram, 2, -1.0), lowbit::invalid_argument);
}

TEST_CASE("GLAS saliency (hand-worked)") {
    lowbit::matrix_f w(2, 2), g(2, 2);
    w << 1, -2, 0.5f, 4;
    g << 2, 1, 0, 0.25f;
    lowbit::vector_f u(2);
    u << 0.5f, 2.0f;
    // |g w| = {2, 2, 0, 1}, mean 1.25.
    const auto s = lowbit::glas_saliency(w, u, g, 1.0);
    CHECK(s(0, 0) == doctest::Approx(1.0 / 0.25 * (1 + 2 / 1.25)));
    CHECK(s(0, 1) == doctest::Approx(4.0 / 4.0 * (1 + 2 / 1.25)));
    CHECK(s(1, 0) == doctest::Approx(0.25 / 0.25 * 1.0));
    CHECK(s(1, 1) == doctest::Approx(16.0 / 4.0 * (1 + 1 / 1.25)));
    const auto local = lowbit::glas_saliency(w, u, g, 0.0);
    CHECK(local(0, 1) == doctest::Approx(1.0));
    CHECK(local(1, 1) == doctest::Approx(4.0));
    CHECK(lowbit::glas_saliency(w, u, lowbit::matrix_f::Zero(2, 2), 3.0) == local);
    lowbit::vector_f bad = u;
    bad(0) = 0;
    CHECK_THROWS_AS((void)lowbit::glas_saliency(w, bad, g), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::glas_saliency(w, u, gaussian(3, 2, 1)), lowbit::shape_error);
}

TEST_CASE("moe bad input") {
    const std::vector<double> none;
    CHECK_THROWS_AS((void)lowbit::expert_balance_std(none), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::expert_balance_std(none), doctest::Contains("empty expert list"));
    const std::vector<double> one = {1.0};
    CHECK_THROWS_AS((void)lowbit::expert_balance_std(one), lowbit::invalid_argument);
    const std::vector<double> nan = {0.5, std::numeric_limits<double>::quiet_NaN()};
    CHECK_THROWS_AS((void)lowbit::expert_balance_std(nan), lowbit::numeric_error);
    const std::vector<int> ids = {0, 4};
    CHECK_THROWS_AS((void)lowbit::expert_usage(ids, 4), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::expert_usage(std::vector<int>{}, 4), lowbit::invalid_argument);
    const std::vector<double> u = {0.5, 0.5};
    CHECK_THROWS_AS((void)lowbit::ebss_score(-1.0, 0, u, 1.0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ebss_score(-1.0, 3, u, 0.0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::ebss_select(none, 2), lowbit::invalid_argument);
}
