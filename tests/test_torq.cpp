// Tests for lowbit/torq.hpp (a reconstruction, docs/sources.md §6.2). Oracles: hand-worked E2M1 histograms
// (entropy in bits); the Schur–Horn property diag(Q₁ᵀΣQ₁) = tr(Σ)/d computed in double; the dense Q;
// MXFP4 (mxfp.hpp) and per-token int4 (rtn.hpp) errors on synthetic activations with outlier channels.
#include <lowbit/hadamard.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/torq.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

// LLM-like activations: Student-t(3) entries, channels 3, 17, 100, 201 scaled ×50.
lowbit::matrix_f outlier_activations(Eigen::Index tokens, Eigen::Index d, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::student_t_distribution<float> t(3.0f);
    lowbit::matrix_f x(tokens, d);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = t(rng);
    for (Eigen::Index j : {3, 17, 100, 201})
        if (j < d) x.col(j) *= 50.0f;
    return x;
}

double mx_error(const lowbit::matrix_f& x) {
    return static_cast<double>((x - lowbit::mx_fake_quantize<lowbit::mxfp4>(x)).norm() / x.norm());
}
// mean over tokens of ‖x − MXFP4(x)‖/‖x‖ (every token weighs the same)
double token_mx_error(const lowbit::matrix_f& x) {
    const lowbit::matrix_f q = lowbit::mx_fake_quantize<lowbit::mxfp4>(x);
    double s = 0;
    for (Eigen::Index i = 0; i < x.rows(); ++i) s += static_cast<double>((x.row(i) - q.row(i)).norm() / x.row(i).norm());
    return s / static_cast<double>(x.rows());
}
double int4_error(const lowbit::matrix_f& x) {
    return static_cast<double>((x - lowbit::quantize_per_token(x).dequantize()).norm() / x.norm());
}

} // namespace

TEST_CASE("E2M1 code entropy: hand-worked histograms") {
    lowbit::matrix_f x = lowbit::matrix_f::Ones(1, 32);
    CHECK(lowbit::e2m1_code_entropy(x) == doctest::Approx(0.0));
    x.rightCols(16).setConstant(-1.0f);
    CHECK(lowbit::e2m1_code_entropy(x) == doctest::Approx(1.0));
    // 7 magnitudes × 2 signs × 2 copies + 4 zeros; amax 6 ⇒ E = 0, exact codes:
    // 14 codes of probability 1/16 and one of 1/8 ⇒ H = 14·(1/16)·4 + (1/8)·3 = 3.875 bits
    const float mags[7] = {0.5f, 1, 1.5f, 2, 3, 4, 6};
    Eigen::Index k = 0;
    for (float m : mags)
        for (int rep = 0; rep < 2; ++rep) {
            x(0, k++) = m;
            x(0, k++) = -m;
        }
    for (; k < 32; ++k) x(0, k) = (k % 2) ? 0.0f : -0.0f; // both zero codes merge
    CHECK(lowbit::e2m1_code_entropy(x) == doctest::Approx(3.875));
}

TEST_CASE("level 1 equalises coordinate variances exactly (Schur–Horn) and Q is orthogonal") {
    const auto x = outlier_activations(400, 128, 1);
    const auto t = lowbit::learn_torq(x, {.level1 = lowbit::torq_level1::eigen_hadamard, .random_candidates = 2});
    CHECK(lowbit::orthogonality_error(t.level1) <= 1e-5);
    CHECK(lowbit::orthogonality_error(t.level2) <= 1e-5);
    CHECK(lowbit::orthogonality_error(t.matrix()) <= 1e-5);
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::MatrixXd sigma = xd.transpose() * xd / 400.0;
    const Eigen::MatrixXd q1 = t.level1.cast<double>();
    const Eigen::VectorXd diag = (q1.transpose() * sigma * q1).diagonal();
    const double want = sigma.trace() / 128.0;
    CHECK((diag.array() - want).abs().maxCoeff() < 1e-4 * want);
    // the identity level 1 leaves them unbalanced (outlier channels carry ×2500 variance)
    CHECK(sigma.diagonal().maxCoeff() > 20 * want);
}

TEST_CASE("zigzag dealing balances block energies") {
    const auto x = outlier_activations(300, 256, 2);
    const Eigen::VectorXd var = x.cast<double>().colwise().squaredNorm().transpose() / 300.0;
    const auto p = lowbit::detail::zigzag_permutation(var, 32);
    CHECK((p.colwise().sum().array() == 1.0).all());
    CHECK((p.rowwise().sum().array() == 1.0).all());
    const Eigen::VectorXd v2 = (var.transpose() * p).transpose();
    auto block_spread = [](const Eigen::VectorXd& v) {
        Eigen::VectorXd e(v.size() / 32);
        for (Eigen::Index b = 0; b < e.size(); ++b) e(b) = v.segment(b * 32, 32).sum();
        return e.maxCoeff() / e.minCoeff();
    };
    auto block_max = [](const Eigen::VectorXd& v) {
        double m = 0;
        for (Eigen::Index b = 0; b < v.size() / 32; ++b) m = std::max(m, v.segment(b * 32, 32).sum());
        return m;
    };
    CHECK(block_spread(v2) <= block_spread(var));
    // channels 3 and 17 share block 0 before; after dealing the 4 outliers sit in 4 different blocks
    CHECK(block_max(v2) < 0.8 * block_max(var)); // measured 8500 vs 12716
}

TEST_CASE("apply_rows equals the dense Q; the chosen pair is the calibration optimum of the criterion") {
    const auto x = outlier_activations(200, 64, 3);
    for (auto l1 : {lowbit::torq_level1::eigen_hadamard, lowbit::torq_level1::zigzag_block_hadamard, lowbit::torq_level1::zigzag,
                    lowbit::torq_level1::none}) {
        const auto t = lowbit::learn_torq(x, {.level1 = l1, .criterion = lowbit::torq_criterion::max_entropy, .random_candidates = 3, .seed = 9});
        CHECK(t.candidates.size() == 6);
        lowbit::matrix_f y = x;
        t.apply_rows(y);
        CHECK((y.cast<double>() - x.cast<double>() * t.matrix()).cwiseAbs().maxCoeff() < 1e-4 * x.cwiseAbs().maxCoeff());
        double best = -1;
        for (const auto& c : t.candidates) best = std::max(best, c.entropy);
        CHECK(lowbit::e2m1_code_entropy(y) == doctest::Approx(best).epsilon(1e-3));
    }
    // default: every level 1 × every R, lowest mean per-token MXFP4 error on the calibration tokens
    const auto t = lowbit::learn_torq(x, {.random_candidates = 3, .seed = 9});
    CHECK(t.candidates.size() == 4 * 6);
    lowbit::matrix_f y = x;
    t.apply_rows(y);
    double best = 1e9;
    for (const auto& c : t.candidates) best = std::min(best, c.token_error);
    CHECK(token_mx_error(y) == doctest::Approx(best).epsilon(1e-4));
    CHECK(lowbit::orthogonality_error(t.matrix()) <= 1e-5);
    // DCT-II oracle: the DCT of the k-th cosine basis vector is a spike at k
    const auto r = lowbit::detail::dct2_matrix(32);
    CHECK(lowbit::orthogonality_error(r) < 1e-12);
    const Eigen::RowVectorXd basis = r.col(5).transpose();
    const Eigen::RowVectorXd spike = basis * r;
    CHECK(spike(5) == doctest::Approx(1.0));
    CHECK(spike.cwiseAbs().sum() == doctest::Approx(1.0));
}

TEST_CASE("synthetic outlier activations, held-out tokens: Hadamard lowers int4 error; MXFP4 per token TORQ < Hadamard < none") {
    const Eigen::Index d = 256;
    const auto calib = outlier_activations(1024, d, 10), test = outlier_activations(1024, d, 11);
    const lowbit::hadamard_transform h(d, {.randomized = true, .seed = 7});
    const auto torq = lowbit::learn_torq(calib);
    const lowbit::matrix_f xh = lowbit::rotate_activations(test, h), xt = lowbit::rotate_activations(test, torq);
    MESSAGE("TORQ chose " << torq.level2_name);
    MESSAGE("int4 none " << int4_error(test) << " hadamard " << int4_error(xh) << " torq " << int4_error(xt));
    MESSAGE("mxfp4 (Frobenius) none " << mx_error(test) << " hadamard " << mx_error(xh) << " torq " << mx_error(xt));
    MESSAGE("mxfp4 (per token) none " << token_mx_error(test) << " hadamard " << token_mx_error(xh) << " torq " << token_mx_error(xt));
    CHECK(int4_error(xh) < 0.75 * int4_error(test));
    // held-out tokens (calibration seed 10, test seed 11): TORQ < randomised Hadamard < none
    CHECK(token_mx_error(xt) < token_mx_error(xh));
    CHECK(token_mx_error(xh) < token_mx_error(test));
    // Frobenius ratio over all tokens: dominated by the few tokens with the largest Student-t draws (measured
    // TORQ 0.1102, Hadamard 0.1094, none 0.1392); both rotations beat none
    CHECK(mx_error(xh) < mx_error(test));
    CHECK(mx_error(xt) < mx_error(test));
}

TEST_CASE("bad input is refused with lowbit errors") {
    CHECK_THROWS_AS((void)lowbit::learn_torq(lowbit::matrix_f::Ones(4, 48)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::learn_torq(lowbit::matrix_f(0, 32)), lowbit::shape_error);
    lowbit::matrix_f nan = lowbit::matrix_f::Ones(4, 32);
    nan(2, 2) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::learn_torq(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::learn_torq(lowbit::matrix_f::Ones(4, 32), {.random_candidates = -1}), lowbit::invalid_argument);
    const auto t = lowbit::learn_torq(outlier_activations(50, 64, 4), {.random_candidates = 0});
    lowbit::matrix_f wrong = lowbit::matrix_f::Zero(2, 32);
    CHECK_THROWS_AS(t.apply_rows(wrong), lowbit::shape_error);
}
