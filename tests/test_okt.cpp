// Tests for lowbit/okt.hpp (a reconstruction, docs/sources.md §3.2). Oracles: the bimodal density evaluated
// directly in double; central finite differences of the EM Q-function (responsibilities frozen, c_o fixed);
// brute-force searches (2x2 angles, random 4x4 orthogonal matrices) and EM's inequality for the Procrustes
// M-steps; the over-relaxed targets and both M-steps rebuilt in double from their definitions (polar factor
// by an eigen-decomposition instead of the SVD); binarization errors (binary.hpp, ARB) of W vs W·Q on the
// real checkpoint.
#include <lowbit/binary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/okt.hpp>

#include "gaussian_matrix.hpp"
#include "rotation_oracles.hpp"
#include "models.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

namespace {

using lowbit_test::heavy_matrix;
using lowbit_test::mixture_fixed_stats;

} // namespace

TEST_CASE("okt_loss equals the bimodal density evaluated directly") {
    const auto w = heavy_matrix(3, 8, 1);
    const lowbit::matrix_d c = lowbit::random_orthogonal(2, 1), b = lowbit::random_orthogonal(4, 2);
    double s = 0;
    for (Eigen::Index o = 0; o < 3; ++o) {
        const Eigen::MatrixXd y = c * Eigen::Map<const lowbit::matrix_f>(w.row(o).data(), 2, 4).cast<double>() * b;
        const Eigen::ArrayXXd xc = y.array() - y.mean();
        const double co = xc.abs().mean(), sd = 0.25 * co;
        for (Eigen::Index i = 0; i < xc.size(); ++i) {
            const double x = xc.data()[i];
            const double p = 0.5 * (std::exp(-0.5 * (x - co) * (x - co) / (sd * sd)) + std::exp(-0.5 * (x + co) * (x + co) / (sd * sd))) /
                             (sd * std::sqrt(2 * M_PI));
            s -= std::log(p);
        }
    }
    CHECK(lowbit::okt_loss(w, c, b) == doctest::Approx(s / 24.0).epsilon(1e-10));
}

TEST_CASE("EM M-step gradient (frozen responsibilities) matches finite differences of the Q-function") {
    const auto w = heavy_matrix(5, 12, 3);
    const lowbit::matrix_d wd = w.cast<double>();
    const lowbit::matrix_d c = lowbit::random_orthogonal(3, 4), b = lowbit::random_orthogonal(4, 5);
    const lowbit::detail::mixture_spec spec{{-1.0, 1.0}, {0.25, 0.25}, 0.0};
    const auto e = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, true);
    const auto ev = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, &e.row_scale, &e.resp, false);
    lowbit::matrix_d gc, gb;
    lowbit::detail::kronecker_factor_gradients(wd, c, b, ev.grad, gc, gb);
    auto q = [&](const lowbit::matrix_d& cc) {
        return lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, cc, b), spec, &e.row_scale, &e.resp, false).nll;
    };
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < 3; ++i)
        for (Eigen::Index j = 0; j < 3; ++j) {
            lowbit::matrix_d cp = c, cm = c;
            cp(i, j) += h;
            cm(i, j) -= h;
            CHECK(gc(i, j) == doctest::Approx((q(cp) - q(cm)) / (2 * h)).epsilon(1e-5).scale(1e-3));
        }
    // at the E-step point, the Q-function gradient equals the NLL gradient (EM identity)
    const auto direct = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, &e.row_scale, nullptr, false);
    CHECK((direct.grad - ev.grad).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("learn_okt: loss decreases, factors orthogonal, invariance holds") {
    const auto w = heavy_matrix(32, 64, 6);
    lowbit::okt_options opt;
    opt.rounds = 15;
    opt.tolerance = 0; // every round: one loss per E-step and the final one
    const auto r = lowbit::learn_okt(w, opt);
    CHECK(r.loss_history.size() == 16);
    CHECK(r.loss_history.back() < r.loss_history.front() - 0.1);
    CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
    const lowbit::matrix_f x = heavy_matrix(3, 64, 7);
    const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
    const Eigen::MatrixXd y2 =
        lowbit::rotate_activations(x, r.rotation).cast<double>() * lowbit::rotate_weights(w, r.rotation).cast<double>().transpose();
    CHECK((y - y2).cwiseAbs().maxCoeff() < 1e-5 * y.cwiseAbs().maxCoeff());
}

TEST_CASE("OKT lowers the binarization error of real-checkpoint weights (first layer's attention)") {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int better = 0, total = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        if (name != "layers.0.wq" && name != "layers.0.wk" && name != "layers.0.wv" && name != "layers.0.wo") continue;
        const lowbit::matrix_f wr = lowbit::rotate_weights(*w, lowbit::learn_okt(*w).rotation);
        const double e0 = (*w - lowbit::binarize(*w, lowbit::arb{}).dequantize()).norm() / w->norm();
        const double e1 = (wr - lowbit::binarize(wr, lowbit::arb{}).dequantize()).norm() / wr.norm();
        better += e1 < e0;
        ++total;
    }
    CHECK(total == 4);
    CHECK(better >= 3); // measured 4/4 (35/35 on the whole checkpoint)
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = heavy_matrix(4, 12, 8);
    lowbit::okt_options bad;
    bad.m_steps = 0;
    CHECK_THROWS_AS((void)lowbit::learn_okt(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.rho = -1;
    CHECK_THROWS_AS((void)lowbit::okt_loss(w, lowbit::matrix_d::Identity(3, 3), lowbit::matrix_d::Identity(4, 4), bad),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::okt_loss(w, lowbit::matrix_d::Identity(2, 2), lowbit::matrix_d::Identity(4, 4)), lowbit::shape_error);
    for (double om : {0.0, 2.0, -1.0}) {
        bad = {};
        bad.relaxation = om;
        CHECK_THROWS_AS((void)lowbit::learn_okt(w, bad), lowbit::invalid_argument);
    }
    bad = {};
    bad.tolerance = -1e-3;
    CHECK_THROWS_AS((void)lowbit::learn_okt(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.sizes = lowbit::kronecker_factor_sizes{7, 2};
    CHECK_THROWS_AS((void)lowbit::learn_okt(w, bad), lowbit::shape_error);
    lowbit::matrix_f inf = w;
    inf(0, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::learn_okt(inf), lowbit::numeric_error);
}

TEST_CASE("OKT M-step is exact: Procrustes beats a brute-force search of 2x2 factors, and the NLL at fixed statistics never increases") {
    const auto w = heavy_matrix(6, 8, 21);
    const lowbit::matrix_d wd = w.cast<double>();
    const lowbit::detail::mixture_spec spec{{-1.0, 1.0}, {0.25, 0.25}, 0.0};
    lowbit::matrix_d c = lowbit::random_orthogonal(2, 22), b = lowbit::random_orthogonal(4, 23);
    lowbit::detail::kronecker_stack<> st(w, {2, 4});
    st.set_right(b);
    for (int round = 0; round < 4; ++round) {
        // left factor (2x2): every orthogonal 2x2 is a rotation or a reflection by an angle θ
        auto estep = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, true);
        auto step = lowbit::detail::okt_em_step(st, c, 0, spec);
        CHECK(step.loss == doctest::Approx(estep.nll).epsilon(1e-5));
        const double q_new = mixture_fixed_stats(wd, step.factor, b, estep, spec, true);
        const double q_best = lowbit_test::min_over_2x2_orthogonal(
            [&](const lowbit::matrix_d& q2) { return mixture_fixed_stats(wd, q2, b, estep, spec, true); });
        CAPTURE(round);
        CHECK(q_new <= q_best + 1e-6 * std::abs(q_best));
        CHECK(q_new <= mixture_fixed_stats(wd, c, b, estep, spec, true) + 1e-9);
        CHECK(mixture_fixed_stats(wd, step.factor, b, estep, spec, false) <= mixture_fixed_stats(wd, c, b, estep, spec, false) + 1e-9);
        c = step.factor;
        // right factor (4x4): no orthogonal matrix tried at random does better, and EM's inequality holds
        estep = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, true);
        step = lowbit::detail::okt_em_step(st, c, 1, spec);
        const double qb = mixture_fixed_stats(wd, c, step.factor, estep, spec, true);
        for (std::uint64_t seed = 0; seed < 200; ++seed) {
            const lowbit::matrix_d cand = lowbit::random_orthogonal(4, 1000 + seed);
            CHECK(qb <= mixture_fixed_stats(wd, c, cand, estep, spec, true) + 1e-9);
        }
        CHECK(qb <= mixture_fixed_stats(wd, c, b, estep, spec, true) + 1e-9);
        CHECK(mixture_fixed_stats(wd, c, step.factor, estep, spec, false) <= mixture_fixed_stats(wd, c, b, estep, spec, false) + 1e-9);
        CHECK(lowbit::orthogonality_error(step.factor) < 1e-10);
        b = step.factor;
        st.set_right(b);
    }
}

TEST_CASE("learn_okt with the balance term (generalised EM with fixed statistics) still lowers the loss") {
    const auto w = heavy_matrix(32, 64, 24);
    lowbit::okt_options opt;
    opt.rounds = 10;
    opt.lambda_bal = 0.1;
    const auto r = lowbit::learn_okt(w, opt);
    CHECK(r.loss_history.back() < r.loss_history.front() - 0.05);
    CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
}

TEST_CASE("row sampling: evenly spaced rows, all rows under the budget") {
    const auto w = heavy_matrix(10, 4, 25);
    CHECK(lowbit::detail::sample_rows(w, 0) == w);
    CHECK(lowbit::detail::sample_rows(w, 40) == w);
    const lowbit::matrix_f s = lowbit::detail::sample_rows(w, 20); // 5 rows: 0, 2, 4, 6, 8
    REQUIRE(s.rows() == 5);
    for (Eigen::Index i = 0; i < 5; ++i) CHECK(s.row(i) == w.row(2 * i));
    CHECK(lowbit::detail::sample_rows(w, 1).rows() == 1);
}

namespace {

// Double-precision reference of the over-relaxed Procrustes targets c_o⁻²(Y_o + ω(T_o − Y_o)) at rotated
// rows `y` (m × n), with the E-step statistics of `e` (row means, scales, responsibilities) — computed
// from the definition T_o = m_o + c_o Σ_k means_k γ_k, independently of kronecker_stack::em_targets.
lowbit::matrix_d reference_targets(const lowbit::matrix_d& y, const lowbit::detail::mixture_eval& e,
                                   const lowbit::detail::mixture_spec& spec, double omega) {
    const Eigen::Index m = y.rows(), n = y.cols(), K = static_cast<Eigen::Index>(spec.means.size());
    lowbit::matrix_d out(m, n);
    for (Eigen::Index o = 0; o < m; ++o)
        for (Eigen::Index j = 0; j < n; ++j) {
            double t = e.row_mean(o);
            for (Eigen::Index k = 0; k < K; ++k)
                t += e.row_scale(o) * spec.means[static_cast<std::size_t>(k)] * e.resp[static_cast<std::size_t>((o * K + k) * n + j)];
            out(o, j) = (y(o, j) + omega * (t - y(o, j))) / (e.row_scale(o) * e.row_scale(o));
        }
    return out;
}

// polar(A) = U Vᵀ by an independent route: A (AᵀA)^(-1/2) through the symmetric eigen-decomposition.
lowbit::matrix_d polar_by_eigen(const lowbit::matrix_d& a) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(a.transpose() * a);
    const Eigen::VectorXd isq = es.eigenvalues().cwiseSqrt().cwiseInverse();
    return a * es.eigenvectors() * isq.asDiagonal() * es.eigenvectors().transpose();
}

} // namespace

TEST_CASE("Procrustes EM round (one E-step, C then B at the new C): exact M-steps and EM's inequality, ω = 1") {
    const auto w = heavy_matrix(6, 8, 31);
    const lowbit::matrix_d wd = w.cast<double>();
    const lowbit::detail::mixture_spec spec{{-1.0, 1.0}, {0.25, 0.25}, 0.0};
    lowbit::matrix_d c = lowbit::random_orthogonal(2, 32), b = lowbit::random_orthogonal(4, 33);
    lowbit::detail::kronecker_stack<> st(w, {2, 4});
    st.set_right(b);
    double prev_q = std::numeric_limits<double>::infinity();
    for (int round = 0; round < 5; ++round) {
        CAPTURE(round);
        const auto e = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, true);
        const lowbit::matrix_d c0 = c, b0 = b;
        const double loss = lowbit::detail::procrustes_em_round(st, c, b, spec, 1.0);
        CHECK(loss == doctest::Approx(e.nll).epsilon(1e-5));
        const double q0 = mixture_fixed_stats(wd, c0, b0, e, spec, true), qc = mixture_fixed_stats(wd, c, b0, e, spec, true),
                     qcb = mixture_fixed_stats(wd, c, b, e, spec, true);
        // C-step: no 2x2 rotation or reflection (3600 angles each) does better with B fixed
        const double q_best = lowbit_test::min_over_2x2_orthogonal(
            [&](const lowbit::matrix_d& q2) { return mixture_fixed_stats(wd, q2, b0, e, spec, true); });
        CHECK(qc <= q_best + 1e-6 * std::abs(q_best));
        // B-step at the new C: no random 4x4 orthogonal matrix does better
        for (std::uint64_t seed = 0; seed < 200; ++seed)
            CHECK(qcb <= mixture_fixed_stats(wd, c, lowbit::random_orthogonal(4, 5000 + seed), e, spec, true) + 1e-9);
        // EM's inequality for the round (ECM): Q, and the NLL at the fixed statistics, never increase
        CHECK(qc <= q0 + 1e-9);
        CHECK(qcb <= qc + 1e-9);
        CHECK(mixture_fixed_stats(wd, c, b, e, spec, false) <= mixture_fixed_stats(wd, c0, b0, e, spec, false) + 1e-9);
        CHECK(lowbit::orthogonality_error(c) < 1e-10);
        CHECK(lowbit::orthogonality_error(b) < 1e-10);
        CHECK(qcb < prev_q + 1.0); // finite
        prev_q = qcb;
    }
}

TEST_CASE("over-relaxed targets and the B-step's move to the new C match a double-precision reference") {
    const auto w = heavy_matrix(7, 24, 41);
    const lowbit::matrix_d wd = w.cast<double>();
    for (const auto& spec : {lowbit::detail::mixture_spec{{-1.0, 1.0}, {0.25, 0.25}, 0.0},
                             lowbit::detail::mixture_spec{{-1.0, 0.0, 1.0}, {0.3, 0.3, 0.3}, 0.1}}) {
        for (double omega : {1.0, 1.8, 0.6}) {
            CAPTURE(omega);
            const lowbit::matrix_d c = lowbit::random_orthogonal(3, 42), b = lowbit::random_orthogonal(8, 43);
            lowbit::detail::kronecker_stack<> st(w, {3, 8});
            st.set_right(b);
            const lowbit::matrix_d y = lowbit::detail::kronecker_rotate_rows(wd, c, b);
            const auto e = lowbit::detail::mixture_shaping_loss(y, spec, nullptr, nullptr, true);
            const double loss = st.em_targets(c, spec, omega);
            CHECK(loss == doctest::Approx(e.nll + e.balance).epsilon(1e-5));
            const lowbit::matrix_d ref = reference_targets(y, e, spec, omega);
            const lowbit::matrix_d got = Eigen::Map<const lowbit::matrix_f>(st.g.data(), 7, 24).cast<double>();
            CHECK((got - ref).cwiseAbs().maxCoeff() <= 1e-4 * ref.cwiseAbs().maxCoeff());
            // the M-steps: C = polar(Σ G_o (M_o B)ᵀ); B = polar(Σ (C' M_o)ᵀ G'_o) with the targets at the new C
            lowbit::matrix_d cc = c, bb = b;
            lowbit::detail::procrustes_m_steps(st, cc, bb, omega);
            lowbit::matrix_d ac = lowbit::matrix_d::Zero(3, 3);
            for (Eigen::Index o = 0; o < 7; ++o) {
                const lowbit::matrix_d mo = Eigen::Map<const lowbit::matrix_f>(w.row(o).data(), 3, 8).cast<double>();
                ac += Eigen::Map<const lowbit::matrix_d>(ref.row(o).data(), 3, 8) * (mo * b).transpose();
            }
            const lowbit::matrix_d c_ref = polar_by_eigen(ac);
            CHECK((cc - c_ref).cwiseAbs().maxCoeff() < 1e-4);
            const lowbit::matrix_d y1 = lowbit::detail::kronecker_rotate_rows(wd, c_ref, b); // rows at (C', B)
            const lowbit::matrix_d ref1 = reference_targets(y1, e, spec, omega);               // same statistics
            lowbit::matrix_d ab = lowbit::matrix_d::Zero(8, 8);
            for (Eigen::Index o = 0; o < 7; ++o) {
                const lowbit::matrix_d mo = Eigen::Map<const lowbit::matrix_f>(w.row(o).data(), 3, 8).cast<double>();
                ab += (c_ref * mo).transpose() * Eigen::Map<const lowbit::matrix_d>(ref1.row(o).data(), 3, 8);
            }
            CHECK((bb - polar_by_eigen(ab)).cwiseAbs().maxCoeff() < 1e-4);
            CHECK((st.z - Eigen::Map<const lowbit::matrix_f>(w.data(), 21, 8) * bb.cast<float>()).cwiseAbs().maxCoeff() < 1e-6);
        }
    }
}

TEST_CASE("learn_okt: tolerance stops the run, deterministic, over-relaxation beats plain EM here") {
    const auto w = heavy_matrix(32, 64, 51);
    lowbit::okt_options all;
    all.rounds = 12;
    all.tolerance = 0;
    const auto r = lowbit::learn_okt(w, all);
    REQUIRE(r.loss_history.size() == 13);
    const auto r2 = lowbit::learn_okt(w, all);
    CHECK(r2.loss_history == r.loss_history);
    CHECK(r2.rotation.left == r.rotation.left);
    CHECK(r2.rotation.right == r.rotation.right);
    // the last value is the loss of the returned factors (double reference)
    CHECK(r.loss_history.back() == doctest::Approx(lowbit::okt_loss(w, r.rotation.left.cast<double>(), r.rotation.right.cast<double>(), all))
                                       .epsilon(1e-4));
    // a tolerance larger than the first round's gain stops at the second E-step: the run is the first round
    lowbit::okt_options stop = all;
    stop.tolerance = 10.0;
    const auto s = lowbit::learn_okt(w, stop);
    REQUIRE(s.loss_history.size() == 2);
    CHECK(s.loss_history[0] == r.loss_history[0]);
    CHECK(s.loss_history[1] == r.loss_history[1]);
    lowbit::okt_options one = all;
    one.rounds = 1;
    CHECK(lowbit::learn_okt(w, one).rotation.right == s.rotation.right);
    // a tolerance stop happens only after a round gained less than the tolerance
    lowbit::okt_options tol = all;
    tol.tolerance = 1e-3;
    tol.rounds = 40;
    const auto t = lowbit::learn_okt(w, tol);
    if (t.loss_history.size() < 41) {
        const auto k = t.loss_history.size();
        CHECK(t.loss_history[k - 2] - t.loss_history[k - 1] < 1e-3);
    }
    for (std::size_t i = 1; i + 1 < t.loss_history.size(); ++i) { // earlier rounds gained enough (or tripped the safeguard)
        const double drop = t.loss_history[i - 1] - t.loss_history[i];
        CHECK((drop >= 1e-3 || drop < 0));
    }
    // ω = 1 (plain EM) and the over-relaxed default both lower the loss; the latter by more in 12 rounds here
    lowbit::okt_options plain = all;
    plain.relaxation = 1.0;
    const auto p = lowbit::learn_okt(w, plain);
    CHECK(p.loss_history.back() < p.loss_history.front() - 0.1);
    CHECK(r.loss_history.back() < p.loss_history.back());
}

TEST_CASE("a zero row (c_o = 0) leaves the learners finite") {
    lowbit::matrix_f w = heavy_matrix(16, 64, 81);
    w.row(5).setZero();
    const auto r = lowbit::learn_okt(w);
    for (double v : r.loss_history) CHECK(std::isfinite(v));
    CHECK(r.rotation.left.allFinite());
    CHECK(r.rotation.right.allFinite());
    CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
    for (auto method : {lowbit::kotms_method::adam, lowbit::kotms_method::procrustes_em}) {
        lowbit::kotms_options o;
        o.method = method;
        o.iters = 10;
        const auto k = lowbit::learn_kotms(w, o);
        for (double v : k.loss_history) CHECK(std::isfinite(v));
        CHECK(k.rotation.left.allFinite());
        CHECK(k.rotation.right.allFinite());
    }
}

TEST_CASE("single-precision polar factor (learners' factors of order >= 128) against A (A^T A)^(-1/2) in double") {
    for (Eigen::Index k : {lowbit::detail::polar_float_min_order, Eigen::Index{200}}) {
        CAPTURE(k);
        const lowbit::matrix_d a = lowbit::matrix_d::Identity(k, k) * 3.0 + lowbit_test::gaussian_d(k, k, 40 + static_cast<unsigned>(k));
        const lowbit::matrix_d q = lowbit::detail::polar_orthogonal_f(a);
        CHECK(lowbit::orthogonality_error(q) < 1e-5);
        CHECK((q - polar_by_eigen(a)).cwiseAbs().maxCoeff() < 1e-5);
    }
}

TEST_CASE("learn_okt in mini-batches (stochastic EM): lowers the whole layer's loss, deterministic, history per round") {
    const auto w = heavy_matrix(24, 64, 41);
    lowbit::okt_options opt;
    opt.rounds = 9;
    opt.tolerance = 0.0;
    opt.batch_entries = 64 * 8; // 3 batches of 8 rows
    const auto r = lowbit::learn_okt(w, opt);
    CHECK(r.loss_history.size() == 10);
    const auto s = r.rotation.sizes();
    const double before = lowbit::okt_loss(w, lowbit::matrix_d::Identity(s.l, s.l), lowbit::matrix_d::Identity(s.r, s.r));
    const double after = lowbit::okt_loss(w, r.rotation.left.cast<double>(), r.rotation.right.cast<double>());
    CHECK(after < before - 0.05);
    CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
    const auto r2 = lowbit::learn_okt(w, opt);
    CHECK(r2.rotation.right == r.rotation.right);
    opt.batch_entries = 0;
    CHECK(lowbit::learn_okt(w, opt).rotation.right != r.rotation.right);
}
