// Tests for lowbit/lowrank.hpp. Oracles: singular values from Eigen::JacobiSVD in double of the
// matrix whose Eckart–Young bound applies, computed directly from the activations (W·Xᵀ, the
// projected SAES target, the stacked experts times Xᵀ) — never through the library's Cholesky
// whitening; a brute-force grid re-evaluation for ACES; monotonicity re-checked from the outputs for PSP,
// and on stories260K its output error ‖(W − Ŵ)Xᵀ‖² recomputed from the captured activations X.
#include <lowbit/binary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/lowrank.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/ternary.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"
#include "models.hpp"

#include <array>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using lowbit_test::gaussian;

// Activations with correlated, unequal-energy channels.
lowbit::matrix_f activations(Eigen::Index tokens, Eigen::Index n, std::uint64_t seed) {
    lowbit::matrix_f z = gaussian(tokens, n, seed);
    lowbit::matrix_f mix = gaussian(n, n, seed + 1, 0.3f);
    for (Eigen::Index j = 0; j < n; ++j) mix(j, j) += 1.0f + static_cast<float>(j % 4);
    return z * mix;
}

double tail_energy(const Eigen::MatrixXd& m, Eigen::Index r) {
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(m);
    const auto& s = svd.singularValues();
    return s.tail(s.size() - r).squaredNorm();
}

lowbit::matrix_d gram_of(const lowbit::matrix_f& x) {
    const Eigen::MatrixXd xd = x.cast<double>();
    return xd.transpose() * xd;
}

// Per-row binarizer α·sign(w), α = mean|w| (the exact nearest binary point per row).
struct sign_binarizer {
    lowbit::matrix_f operator()(const lowbit::cref_matrix_f& w) const {
        lowbit::matrix_f out(w.rows(), w.cols());
        for (Eigen::Index i = 0; i < w.rows(); ++i) {
            const float a = w.row(i).cwiseAbs().mean();
            for (Eigen::Index j = 0; j < w.cols(); ++j) out(i, j) = w(i, j) >= 0 ? a : -a;
        }
        return out;
    }
};

// stories260K with every block linear's input captured over two text slices of tinystories_dev.txt:
// calibration (after the first 60,000 characters, the perplexity slice) and held-out (the start).
struct captured_checkpoint {
    lowbit::io::llama2c_checkpoint ck;
    std::vector<std::array<lowbit::matrix_f, lowbit::linear_slots>> calib, held;
};

captured_checkpoint& stories260k_captured() {
    static captured_checkpoint c = [] {
        captured_checkpoint r;
        r.ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
        const auto tok = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"), r.ck.config.vocab_size);
        std::ifstream f(lowbit_test::stories260k("tinystories_dev.txt"), std::ios::binary);
        std::stringstream ss;
        ss << f.rdbuf();
        const std::string text = ss.str();
        const auto model = lowbit::model_from_llama2c(r.ck);
        auto ids = [&](std::size_t from) {
            return tok.encode(text.substr(from, 6000), false, false, lowbit::io::dummy_prefix::separate);
        };
        r.calib = lowbit::calibration_inputs(model, ids(60000), 255, 2);
        r.held = lowbit::calibration_inputs(model, ids(0), 255, 2);
        return r;
    }();
    return c;
}

// ‖Δ·Xᵀ‖² computed directly from the activations (no Gram, no Cholesky).
double output_sq(const lowbit::matrix_f& delta, const lowbit::matrix_f& x) {
    return (delta.cast<double>() * x.cast<double>().transpose()).squaredNorm();
}

// PSP (rank 4) around a library binarizer on tensor `t` (index into linear_weights order, which is
// the slot order) with S = XᵀX of the captured calibration activations; checks the objective against
// the output error recomputed from X and that PSP lowers it on the calibration and held-out tokens.
// Returns {without, with} summed squared output errors on the calibration tokens.
template <class Binarizer>
std::pair<double, double> check_psp_on_tensor(std::size_t t, const Binarizer& bin, int iterations) {
    auto& c = stories260k_captured();
    const std::size_t layer = t / lowbit::linear_slots, slot = t % lowbit::linear_slots;
    const lowbit::matrix_f& w = *lowbit::io::linear_weights(c.ck)[t].weight;
    const lowbit::matrix_f& xc = c.calib[layer][slot];
    const lowbit::matrix_f& xh = c.held[layer][slot];
    REQUIRE(xc.cols() == w.cols());
    REQUIRE(xc.rows() > w.cols()); // enough tokens for a non-singular S
    const lowbit::matrix_d s = gram_of(xc);
    const auto res = lowbit::psp_refine(w, bin, 4, iterations, s, 1e-8);
    const lowbit::matrix_f plain = bin(w), refined = res.reconstruct();
    const double before = output_sq(w - plain, xc), after = output_sq(w - refined, xc);
    INFO("tensor " << t);
    CHECK(res.objective.front() == doctest::Approx(before).epsilon(1e-4));
    CHECK(res.objective.back() == doctest::Approx(after).epsilon(1e-3));
    for (std::size_t k = 1; k < res.objective.size(); ++k) CHECK(res.objective[k] <= res.objective[k - 1]);
    CHECK(after < before);
    CHECK(output_sq(w - refined, xh) < output_sq(w - plain, xh)); // also on tokens PSP never saw
    return {before, after};
}

} // namespace

TEST_CASE("truncated_svd reaches the Eckart-Young bound") {
    const auto w = gaussian(12, 9, 1);
    for (Eigen::Index r : {1, 3, 9}) {
        const auto lr = lowbit::truncated_svd(w, r);
        CHECK(lr.rank() == r);
        const double err = (w.cast<double>() - lr.reconstruct().cast<double>()).squaredNorm();
        const double bound = tail_energy(w.cast<double>(), r);
        CHECK(err == doctest::Approx(bound).epsilon(1e-4).scale(1e-6));
        CHECK(lr.discarded_energy == doctest::Approx(bound).epsilon(1e-9).scale(1e-9));
    }
}

TEST_CASE("randomized_svd is near-optimal on a decaying spectrum and deterministic") {
    // Rank-6 signal plus small noise.
    const lowbit::matrix_f w = gaussian(40, 6, 3) * gaussian(6, 30, 4) + gaussian(40, 30, 5, 0.01f);
    const auto a = lowbit::truncated_svd(w, 6, lowbit::randomized_svd{5, 2, 42});
    const auto b = lowbit::truncated_svd(w, 6, lowbit::randomized_svd{5, 2, 42});
    CHECK(a.reconstruct() == b.reconstruct());
    const double err = (w.cast<double>() - a.reconstruct().cast<double>()).squaredNorm();
    const double bound = tail_energy(w.cast<double>(), 6);
    CHECK(err <= 1.01 * bound + 1e-6);
    CHECK(err >= 0.999 * bound - 1e-6);
}

TEST_CASE("whitened_svd reaches the Eckart-Young bound of W·Xᵀ in the output metric") {
    const Eigen::Index m = 10, n = 8, tokens = 50;
    const auto w = gaussian(m, n, 11);
    const auto x = activations(tokens, n, 12);
    const auto s = gram_of(x);
    const Eigen::MatrixXd wx = w.cast<double>() * x.cast<double>().transpose(); // [m x tokens]
    for (Eigen::Index r : {1, 2, 5}) {
        const auto lr = lowbit::whitened_svd(w, s, r);
        const Eigen::MatrixXd d = (w.cast<double>() - lr.reconstruct().cast<double>()) * x.cast<double>().transpose();
        const double bound = tail_energy(wx, r);
        CHECK(d.squaredNorm() == doctest::Approx(bound).epsilon(1e-3));
        CHECK(lr.discarded_energy == doctest::Approx(bound).epsilon(1e-8));
        // The plain SVD is worse in the output metric.
        const auto plain = lowbit::truncated_svd(w, r);
        const Eigen::MatrixXd dp =
            (w.cast<double>() - plain.reconstruct().cast<double>()) * x.cast<double>().transpose();
        CHECK(dp.squaredNorm() > bound);
    }
    // Randomized method on the same problem, full oversampling: same bound.
    const auto rl = lowbit::whitened_svd(w, s, 3, 0.0, lowbit::randomized_svd{5, 3, 7});
    const Eigen::MatrixXd d = (w.cast<double>() - rl.reconstruct().cast<double>()) * x.cast<double>().transpose();
    CHECK(d.squaredNorm() == doctest::Approx(tail_energy(wx, 3)).epsilon(1e-3));
}

TEST_CASE("whitened_svd: singular Gram needs damping") {
    const auto w = gaussian(6, 8, 21);
    const auto x = gaussian(5, 8, 22); // 5 tokens < 8 channels: XᵀX has rank 5
    const auto s = gram_of(x);
    CHECK_THROWS_AS((void)lowbit::whitened_svd(w, s, 2), lowbit::numeric_error);
    CHECK_THROWS_WITH((void)lowbit::whitened_svd(w, s, 2), doctest::Contains("damping > 0"));
    const auto lr = lowbit::whitened_svd(w, s, 2, 0.01);
    CHECK(lr.reconstruct().allFinite());
    CHECK_THROWS_AS((void)lowbit::whitened_svd(w, s, 2, -1.0), lowbit::invalid_argument);
}

TEST_CASE("SAES-SVD: gamma = 0 equals whitened SVD, and the closed form is optimal for its objective") {
    const Eigen::Index m = 9, n = 7, tokens = 60;
    const auto w = gaussian(m, n, 31);
    const auto x = activations(tokens, n, 32);
    const lowbit::matrix_f x_hat = x + gaussian(tokens, n, 33, 0.3f);
    lowbit::saes_statistics st;
    st.accumulate(x.topRows(25), x_hat.topRows(25));
    st.accumulate(x.bottomRows(tokens - 25), x_hat.bottomRows(tokens - 25));

    const auto a = lowbit::saes_svd(w, st, 3, 0.0);
    const auto b = lowbit::whitened_svd(w, st.h_hat, 3);
    CHECK((a.reconstruct() - b.reconstruct()).cwiseAbs().maxCoeff() < 1e-5f);

    // Oracle for γ > 0: min over rank-r W' of ‖T − W' X̂ᵀ‖², T = W (X̂ + γ(X − X̂))ᵀ, equals
    // ‖T(I − P)‖² + tail_r(T P) with P the projector onto the row space of X̂ᵀ (QR of X̂).
    const Eigen::MatrixXd xd = x.cast<double>(), xh = x_hat.cast<double>(), wd = w.cast<double>();
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(xh);
    const Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(tokens, n);
    for (double gamma : {0.25, 0.6, 0.9}) {
        const Eigen::MatrixXd t = wd * (xh + gamma * (xd - xh)).transpose(); // [m x tokens]
        const Eigen::MatrixXd tp = t * q * q.transpose();
        const double oracle = (t - tp).squaredNorm() + tail_energy(tp, 3);
        const auto lr = lowbit::saes_svd(w, st, 3, gamma);
        const double got = (t - lr.reconstruct().cast<double>() * xh.transpose()).squaredNorm();
        CHECK(got == doctest::Approx(oracle).epsilon(1e-3));
    }
    CHECK_THROWS_AS((void)lowbit::saes_svd(w, st, 3, 1.0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::saes_svd(w, st, 3, -0.1), lowbit::invalid_argument);
    lowbit::saes_statistics bad;
    CHECK_THROWS_AS(bad.accumulate(x, x_hat.leftCols(3)), lowbit::shape_error);
}

TEST_CASE("ACES picks the grid gamma with the largest captured-energy ratio") {
    const Eigen::Index m = 8, n = 6, tokens = 40;
    const auto w = gaussian(m, n, 41);
    const auto x = activations(tokens, n, 42);
    const lowbit::matrix_f x_hat = x + gaussian(tokens, n, 43, 0.5f);
    lowbit::saes_statistics st;
    st.accumulate(x, x_hat);
    const auto res = lowbit::aces_search(w, st, 2, 10, 0.9);
    REQUIRE(res.grid.size() == 10);
    // Independent oracle: ρ(γ) from W* = W[(1−γ)I + γ C Ĥ⁻¹] with an explicit inverse and
    // the symmetric square root of Ĥ (same singular values as W* L for any Ĥ = L Lᵀ).
    const Eigen::MatrixXd hh = st.h_hat, c = st.cross, wd = w.cast<double>();
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(hh);
    const Eigen::MatrixXd root = es.eigenvectors() * es.eigenvalues().cwiseSqrt().asDiagonal() * es.eigenvectors().transpose();
    double best = -1, best_g = -1;
    for (int k = 0; k < 10; ++k) {
        const double g = 0.9 * k / 10.0;
        const Eigen::MatrixXd ws = wd * ((1 - g) * Eigen::MatrixXd::Identity(n, n) + g * c * hh.inverse());
        const Eigen::MatrixXd target = ws * root;
        const double rho = 1.0 - tail_energy(target, 2) / target.squaredNorm();
        CHECK(res.ratios[static_cast<std::size_t>(k)] == doctest::Approx(rho).epsilon(1e-6));
        if (rho > best) {
            best = rho;
            best_g = g;
        }
    }
    CHECK(res.gamma == doctest::Approx(best_g));
    CHECK(res.ratio == doctest::Approx(best).epsilon(1e-6));
    const auto direct = lowbit::saes_svd(w, st, 2, res.gamma);
    CHECK((direct.reconstruct() - res.factors.reconstruct()).cwiseAbs().maxCoeff() < 1e-4f);
    CHECK_THROWS_AS((void)lowbit::aces_search(w, st, 2, 0), lowbit::invalid_argument);
}

TEST_CASE("PSP never increases its objective and beats the plain binarizer") {
    const auto w = gaussian(16, 24, 51);
    const lowbit::matrix_f wl = w + gaussian(16, 2, 52) * gaussian(2, 24, 53); // a low-rank component
    const sign_binarizer bin;
    const auto res = lowbit::psp_refine(wl, bin, 4, 8);
    REQUIRE(res.objective.size() >= 2);
    for (std::size_t k = 1; k < res.objective.size(); ++k) CHECK(res.objective[k] <= res.objective[k - 1]);
    CHECK(res.objective[1] < res.objective[0]);
    const double plain = (wl - bin(wl)).cast<double>().squaredNorm();
    CHECK(res.objective[0] == doctest::Approx(plain).epsilon(1e-6));
    const double final_err = (wl - res.reconstruct()).cast<double>().squaredNorm();
    CHECK(final_err == doctest::Approx(res.objective.back()).epsilon(1e-4));
    CHECK(final_err < plain);
    CHECK(res.correction.rank() == 4);

    // Output metric with a Gram, and a ternary quantizer from ternary.hpp.
    const auto x = activations(64, 24, 54);
    const auto s = gram_of(x);
    auto tern = [](const lowbit::cref_matrix_f& m) {
        return lowbit::quantize_ternary(m, lowbit::optimal_threshold{}).dequantize();
    };
    const auto rs = lowbit::psp_refine(wl, tern, 4, 6, s);
    for (std::size_t k = 1; k < rs.objective.size(); ++k) CHECK(rs.objective[k] <= rs.objective[k - 1]);
    const Eigen::MatrixXd out0 = (wl - tern(wl)).cast<double>() * x.cast<double>().transpose();
    const Eigen::MatrixXd out1 = (wl - rs.reconstruct()).cast<double>() * x.cast<double>().transpose();
    CHECK(rs.objective[0] == doctest::Approx(out0.squaredNorm()).epsilon(1e-6));
    CHECK(out1.squaredNorm() == doctest::Approx(rs.objective.back()).epsilon(1e-3));
    CHECK(out1.squaredNorm() < out0.squaredNorm());
    CHECK_THROWS_AS((void)lowbit::psp_refine(wl, bin, 4, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::psp_refine(wl, bin, 17, 2), lowbit::invalid_argument);
}

TEST_CASE("PSP reading (b): with Q = 0 it reaches the whitened Eckart-Young optimum; with a binarizer it beats Q alone") {
    const auto w = gaussian(16, 24, 61);
    const auto x = activations(64, 24, 62);
    const auto s = gram_of(x);
    // Q ≡ 0: min over rank 3 of ‖(W − L)Xᵀ‖² = the tail energy of W·Xᵀ (independent: SVD of the output)
    auto zero = [](const lowbit::cref_matrix_f& m) { return lowbit::matrix_f(lowbit::matrix_f::Zero(m.rows(), m.cols())); };
    const double opt = tail_energy(w.cast<double>() * x.cast<double>().transpose(), 3);
    const auto rz = lowbit::psp_refine_gradient(w, zero, 3, 300, s);
    const Eigen::MatrixXd outz = (w - rz.reconstruct()).cast<double>() * x.cast<double>().transpose();
    CHECK(outz.squaredNorm() == doctest::Approx(opt).epsilon(1e-3));
    CHECK(*std::min_element(rz.objective.begin(), rz.objective.end()) == doctest::Approx(opt).epsilon(1e-3));
    CHECK(rz.objective.front() == doctest::Approx((w.cast<double>() * x.cast<double>().transpose()).squaredNorm()).epsilon(1e-9));
    // the plain metric (no Gram): Eckart–Young of W itself
    const auto rp = lowbit::psp_refine_gradient(w, zero, 3, 300);
    CHECK((w - rp.reconstruct()).cast<double>().squaredNorm() == doctest::Approx(tail_energy(w.cast<double>(), 3)).epsilon(1e-3));
    // a binarizer: the kept iterate is the best recorded one, recomputed from its outputs, below Q alone
    const lowbit::matrix_f wl = w + gaussian(16, 2, 63) * gaussian(2, 24, 64);
    const sign_binarizer bin;
    const auto rb = lowbit::psp_refine_gradient(wl, bin, 4, 12, s);
    REQUIRE(rb.objective.size() == 13);
    const Eigen::MatrixXd out0 = (wl - bin(wl)).cast<double>() * x.cast<double>().transpose();
    const Eigen::MatrixXd out1 = (wl - rb.reconstruct()).cast<double>() * x.cast<double>().transpose();
    CHECK(rb.objective[0] == doctest::Approx(out0.squaredNorm()).epsilon(1e-6));
    CHECK(out1.squaredNorm() == doctest::Approx(*std::min_element(rb.objective.begin(), rb.objective.end())).epsilon(1e-3));
    CHECK(out1.squaredNorm() < 0.9 * out0.squaredNorm());
    CHECK(rb.correction.rank() == 4);
    // deterministic; another seed is another run
    CHECK(lowbit::psp_refine_gradient(wl, bin, 4, 12, s).correction.a == rb.correction.a);
    CHECK(lowbit::psp_refine_gradient(wl, bin, 4, 12, s, 0.0, 5).correction.a != rb.correction.a);
    CHECK_THROWS_AS((void)lowbit::psp_refine_gradient(wl, bin, 4, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::psp_refine_gradient(wl, bin, 17, 2), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::psp_refine_gradient(wl, bin, 4, 2, lowbit::matrix_d::Identity(5, 5)), lowbit::shape_error);
}

TEST_CASE("CEJD joint SVD: shared basis, Eckart-Young on the stacked experts, lossless at k = m") {
    std::vector<lowbit::matrix_f> experts;
    const lowbit::matrix_f common = gaussian(6, 2, 61) * gaussian(2, 10, 62);
    for (int e = 0; e < 3; ++e) experts.push_back(common + gaussian(6, 10, 63 + e, 0.2f));
    Eigen::MatrixXd cat(6, 30);
    for (int e = 0; e < 3; ++e) cat.middleCols(e * 10, 10) = experts[static_cast<std::size_t>(e)].cast<double>();
    for (Eigen::Index k : {2, 4, 6}) {
        const auto j = lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(experts), k);
        REQUIRE(j.factors.size() == 3);
        CHECK(j.basis.rows() == 6);
        CHECK(j.basis.cols() == k);
        double err = 0;
        for (int e = 0; e < 3; ++e)
            err += (experts[static_cast<std::size_t>(e)] - j.basis * j.factors[static_cast<std::size_t>(e)])
                       .cast<double>()
                       .squaredNorm();
        const double bound = tail_energy(cat, k);
        CHECK(err == doctest::Approx(bound).epsilon(1e-3).scale(1e-6));
        CHECK(j.discarded_energy == doctest::Approx(bound).epsilon(1e-6).scale(1e-6));
        if (k == 6) CHECK(err < 1e-8);
    }
    std::vector<lowbit::matrix_f> none;
    CHECK_THROWS_AS((void)lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(none), 2),
                    lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(none), 2),
                      doctest::Contains("empty expert list"));
    auto bad = experts;
    bad[1] = gaussian(6, 9, 70);
    CHECK_THROWS_AS((void)lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(bad), 2), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(experts), 7),
                    lowbit::invalid_argument);
}

TEST_CASE("KLT-guided joint SVD is optimal in the activation metric") {
    const Eigen::Index m = 5, n = 8, tokens = 40;
    std::vector<lowbit::matrix_f> experts;
    for (int e = 0; e < 3; ++e) experts.push_back(gaussian(m, n, 80 + e));
    const auto x = activations(tokens, n, 90);
    const auto s = gram_of(x);
    Eigen::MatrixXd stacked_out(3 * m, tokens);
    for (int e = 0; e < 3; ++e)
        stacked_out.middleRows(e * m, m) = experts[static_cast<std::size_t>(e)].cast<double>() * x.cast<double>().transpose();
    for (Eigen::Index r : {2, 5}) {
        const auto j = lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(experts), s, r);
        CHECK(j.basis.rows() == r);
        double err = 0;
        for (std::size_t e = 0; e < 3; ++e)
            err += (j.residual(experts[e], e).cast<double>() * x.cast<double>().transpose()).squaredNorm();
        const double bound = tail_energy(stacked_out, r);
        CHECK(err == doctest::Approx(bound).epsilon(1e-3));
        CHECK(j.discarded_energy == doctest::Approx(bound).epsilon(1e-6));
    }
    const auto xs = gaussian(4, n, 91);
    CHECK_THROWS_AS((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(experts), gram_of(xs), 2),
                    lowbit::numeric_error);
    CHECK_NOTHROW((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(experts), gram_of(xs), 2, 0.01));
    std::vector<lowbit::matrix_f> none;
    CHECK_THROWS_AS((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(none), s, 2), lowbit::invalid_argument);
}

TEST_CASE("lowrank bad input") {
    const auto w = gaussian(4, 6, 100);
    CHECK_THROWS_AS((void)lowbit::truncated_svd(w, 5), lowbit::invalid_argument);
    CHECK_THROWS_WITH((void)lowbit::truncated_svd(w, 5), doctest::Contains("larger than min(rows, cols)"));
    CHECK_THROWS_AS((void)lowbit::truncated_svd(w, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::truncated_svd(lowbit::matrix_f(0, 0), 1), lowbit::shape_error);
    lowbit::matrix_f nan = w;
    nan(1, 2) = std::nanf("");
    CHECK_THROWS_AS((void)lowbit::truncated_svd(nan, 1), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::truncated_svd(w, 2, lowbit::randomized_svd{-1, 1, 0}), lowbit::invalid_argument);
    const lowbit::matrix_d s5 = lowbit::matrix_d::Identity(5, 5);
    CHECK_THROWS_AS((void)lowbit::whitened_svd(w, s5, 2), lowbit::shape_error);
    lowbit::matrix_d snan = lowbit::matrix_d::Identity(6, 6);
    snan(0, 0) = INFINITY;
    CHECK_THROWS_AS((void)lowbit::whitened_svd(w, snan, 2), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::whitened_svd(w, lowbit::matrix_d::Zero(6, 6), 2), lowbit::numeric_error);

    // Rank larger than the matrix, for every solver that takes a rank.
    const lowbit::matrix_d s6 = gram_of(activations(20, 6, 101));
    CHECK_THROWS_WITH((void)lowbit::whitened_svd(w, s6, 5), doctest::Contains("larger than min(rows, cols)"));
    CHECK_THROWS_WITH((void)lowbit::truncated_svd(w, 5, lowbit::randomized_svd{}), doctest::Contains("larger than min(rows, cols)"));
    lowbit::saes_statistics st;
    st.accumulate(activations(20, 6, 102), activations(20, 6, 103));
    CHECK_THROWS_AS((void)lowbit::saes_svd(w, st, 5, 0.5), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::aces_search(w, st, 5, 4), lowbit::invalid_argument);
    const auto bin = [](const lowbit::cref_matrix_f& m) { return lowbit::matrix_f(m.cwiseSign()); };
    CHECK_THROWS_WITH((void)lowbit::psp_refine(w, bin, 5, 2), doctest::Contains("larger than min(rows, cols)"));
    std::vector<lowbit::matrix_f> experts = {w, w};
    CHECK_THROWS_AS((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(experts), s6, 7), lowbit::invalid_argument);

    // Singular XᵀX (fewer tokens than columns) without damping: a clear numeric_error, every solver.
    const lowbit::matrix_d singular = gram_of(activations(3, 6, 104));
    CHECK_THROWS_WITH((void)lowbit::whitened_svd(w, singular, 2), doctest::Contains("damping"));
    CHECK_THROWS_AS((void)lowbit::psp_refine(w, bin, 2, 2, singular), lowbit::numeric_error);
    CHECK_THROWS_WITH((void)lowbit::psp_refine(w, bin, 2, 2, singular), doctest::Contains("damping"));
    CHECK_NOTHROW((void)lowbit::psp_refine(w, bin, 2, 2, singular, 0.01));
    lowbit::saes_statistics st_singular;
    st_singular.accumulate(activations(3, 6, 105), activations(3, 6, 106));
    CHECK_THROWS_WITH((void)lowbit::saes_svd(w, st_singular, 2, 0.5), doctest::Contains("damping"));
    CHECK_THROWS_AS((void)lowbit::aces_search(w, st_singular, 2, 4), lowbit::numeric_error);
    CHECK_THROWS_WITH((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(experts), singular, 2),
                      doctest::Contains("damping"));

    // Empty expert lists.
    const std::vector<lowbit::matrix_f> none;
    CHECK_THROWS_WITH((void)lowbit::joint_svd_klt(std::span<const lowbit::matrix_f>(none), s6, 2),
                      doctest::Contains("empty expert list"));
    CHECK_THROWS_WITH((void)lowbit::joint_svd_shared_left(std::span<const lowbit::matrix_f>(none), 2, lowbit::randomized_svd{}),
                      doctest::Contains("empty expert list"));
}

TEST_CASE("stories260K: the binarizer with PSP (rank 4) has lower output error than without, S from captured activations") {
    const auto sign_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::sign_scale{}).dequantize(); };
    const auto arb_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::arb{}).dequantize(); };
    // A few tensors of different shapes: layers.0.wq [64x64], layers.0.w2 [64x172], layers.3.w1 [172x64], layers.4.wk [32x64].
    for (std::size_t t : {std::size_t{0}, std::size_t{5}, std::size_t{3 * 7 + 4}, std::size_t{4 * 7 + 1}}) {
        (void)check_psp_on_tensor(t, sign_q, 3);
        (void)check_psp_on_tensor(t, arb_q, 2);
    }
}

TEST_CASE("stories260K: PSP (rank 4, 10 iterations) lowers the output error of every linear and of the model" *
          doctest::test_suite("long")) {
    const auto sign_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::sign_scale{}).dequantize(); };
    const auto arb_q = [](const lowbit::cref_matrix_f& m) { return lowbit::binarize(m, lowbit::arb{}).dequantize(); };
    double sb = 0, sa = 0, ab = 0, aa = 0;
    for (std::size_t t = 0; t < 35; ++t) {
        const auto [b1, a1] = check_psp_on_tensor(t, sign_q, 10);
        const auto [b2, a2] = check_psp_on_tensor(t, arb_q, 10);
        sb += b1;
        sa += a1;
        ab += b2;
        aa += a2;
    }
    CHECK(sa < sb);
    CHECK(aa < ab);
}
