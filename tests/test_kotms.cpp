// Tests for lowbit/kotms.hpp. Oracles: central finite differences of the loss (c_o held fixed, as the method
// detaches it) for the analytic gradients in C, B and through the Cayley parameters; the mixture density
// evaluated directly in double for the loss value; the double-precision `mixture_shaping_loss` for the
// learners' float evaluation (loss and gradient, with the balance term); a dense search over 2x2 rotations
// and reflections and random 4x4 orthogonal matrices for the Procrustes EM steps, and EM's inequality at
// fixed statistics (double); E2M-ATQ (asym_ternary.hpp) errors of W vs W·Q on the real checkpoint.
#include <lowbit/asym_ternary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/kotms.hpp>

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

using lowbit_test::gaussian_d;

// −mean log p directly from the definition, rows rotated by C·M·B (double), c_o given.
double direct_nll(const lowbit::matrix_f& w, const lowbit::matrix_d& c, const lowbit::matrix_d& b, const lowbit::vector_d& scale,
                  double rho0, double rho1) {
    const Eigen::Index l = c.rows(), r = b.rows();
    double s = 0;
    for (Eigen::Index o = 0; o < w.rows(); ++o) {
        const Eigen::MatrixXd m = Eigen::Map<const lowbit::matrix_f>(w.row(o).data(), l, r).cast<double>();
        const Eigen::MatrixXd y = c * m * b;
        const double mean = y.mean();
        for (Eigen::Index i = 0; i < y.size(); ++i) {
            const double x = y.data()[i] - mean, co = scale(o);
            auto pdf = [](double v, double mu, double sd) { return std::exp(-0.5 * (v - mu) * (v - mu) / (sd * sd)) / (sd * std::sqrt(2 * M_PI)); };
            s -= std::log((pdf(x, -co, rho1 * co) + pdf(x, 0, rho0 * co) + pdf(x, co, rho1 * co)) / 3.0);
        }
    }
    return s / static_cast<double>(w.size());
}

} // namespace

TEST_CASE("KOTMS loss value equals the mixture density evaluated directly") {
    const auto w = heavy_matrix(5, 12, 1);
    const auto c = lowbit::random_orthogonal(3, 2), b = lowbit::random_orthogonal(4, 3);
    lowbit::kotms_options opt;
    opt.rho0 = 0.2;
    opt.rho1 = 0.35;
    opt.lambda_bal = 0.0;
    const auto v = lowbit::kotms_loss(w, c, b, opt);
    CHECK(v.nll == doctest::Approx(direct_nll(w, c, b, v.row_scale, 0.2, 0.35)).epsilon(1e-10));
    CHECK(v.total == doctest::Approx(v.nll));
}

TEST_CASE("KOTMS analytic gradients match finite differences (c_o fixed), with the balance term") {
    const auto w = heavy_matrix(6, 12, 4);
    const lowbit::matrix_d c = lowbit::random_orthogonal(3, 5) + 0.1 * gaussian_d(3, 3, 6); // need not be orthogonal
    const lowbit::matrix_d b = lowbit::random_orthogonal(4, 7) + 0.1 * gaussian_d(4, 4, 8);
    lowbit::kotms_options opt;
    opt.lambda_bal = 0.5;
    opt.rho0 = 0.3;
    const auto base = lowbit::kotms_loss(w, c, b, opt);
    const lowbit::vector_d scale = base.row_scale;
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < 3; ++i)
        for (Eigen::Index j = 0; j < 3; ++j) {
            lowbit::matrix_d cp = c, cm = c;
            cp(i, j) += h;
            cm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, cp, b, opt, &scale).total - lowbit::kotms_loss(w, cm, b, opt, &scale).total) / (2 * h);
            CHECK(base.grad_left(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
    for (Eigen::Index i = 0; i < 4; ++i)
        for (Eigen::Index j = 0; j < 4; ++j) {
            lowbit::matrix_d bp = b, bm = b;
            bp(i, j) += h;
            bm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, c, bp, opt, &scale).total - lowbit::kotms_loss(w, c, bm, opt, &scale).total) / (2 * h);
            CHECK(base.grad_right(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
}

TEST_CASE("KOTMS gradient through the Cayley parameters matches finite differences") {
    const auto w = heavy_matrix(4, 16, 9);
    const lowbit::matrix_d pl = 0.3 * gaussian_d(4, 4, 10), pr = 0.3 * gaussian_d(4, 4, 11);
    const auto c = lowbit::cayley(pl), b = lowbit::cayley(pr);
    const auto base = lowbit::kotms_loss(w, c, b);
    const lowbit::vector_d scale = base.row_scale;
    const auto g = lowbit::cayley_gradient(pl, c, base.grad_left);
    const double h = 1e-6;
    for (Eigen::Index i = 0; i < 4; ++i)
        for (Eigen::Index j = 0; j < 4; ++j) {
            lowbit::matrix_d pp = pl, pm = pl;
            pp(i, j) += h;
            pm(i, j) -= h;
            const double fd = (lowbit::kotms_loss(w, lowbit::cayley(pp), b, {}, &scale).total -
                               lowbit::kotms_loss(w, lowbit::cayley(pm), b, {}, &scale).total) / (2 * h);
            CHECK(g(i, j) == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
}

TEST_CASE("learn_kotms: loss decreases, factors orthogonal, invariance holds, deterministic") {
    const auto w = heavy_matrix(32, 64, 12);
    for (bool alternating : {false, true}) {
        lowbit::kotms_options opt;
        opt.iters = 60;
        opt.alternating = alternating;
        const auto r = lowbit::learn_kotms(w, opt);
        CHECK(r.loss_history.size() == 61);
        CHECK(r.loss_history.back() < r.loss_history.front() - 0.1);
        CHECK(r.rotation.sizes().l == 16);
        CHECK(r.rotation.sizes().r == 4);
        CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
        const auto r2 = lowbit::learn_kotms(w, opt);
        CHECK(r2.rotation.left == r.rotation.left);
        const lowbit::matrix_f x = heavy_matrix(3, 64, 13) * 50.0f;
        const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
        const Eigen::MatrixXd y2 = lowbit::rotate_activations(x, r.rotation).cast<double>() *
                                   lowbit::rotate_weights(w, r.rotation).cast<double>().transpose();
        CHECK((y - y2).cwiseAbs().maxCoeff() < 1e-5 * y.cwiseAbs().maxCoeff());
    }
    lowbit::kotms_options zero;
    zero.iters = 0;
    const auto id = lowbit::learn_kotms(w, zero);
    CHECK(id.rotation.left.isIdentity());
    CHECK(id.rotation.right.isIdentity());
}

TEST_CASE("KOTMS lowers the E2M-ATQ error of real-checkpoint weights (first layer's attention)") {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int better = 0, total = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        if (name != "layers.0.wq" && name != "layers.0.wk" && name != "layers.0.wv" && name != "layers.0.wo") continue;
        const auto r = lowbit::learn_kotms(*w);
        const lowbit::matrix_f wr = lowbit::rotate_weights(*w, r.rotation);
        const double e0 = (*w - lowbit::quantize_e2m_atq(*w).dequantize()).norm() / w->norm();
        const double e1 = (wr - lowbit::quantize_e2m_atq(wr).dequantize()).norm() / wr.norm();
        CAPTURE(name);
        better += e1 < e0;
        ++total;
    }
    CHECK(total == 4);
    CHECK(better >= 3); // "most": measured 4/4 (35/35 on the whole checkpoint)
}

TEST_CASE("KOTMS lowers E2M-ATQ error on most tensors of the whole checkpoint" * doctest::test_suite("long")) {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int better = 0, total = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const lowbit::matrix_f wr = lowbit::rotate_weights(*w, lowbit::learn_kotms(*w).rotation);
        better += (wr - lowbit::quantize_e2m_atq(wr).dequantize()).norm() / wr.norm() <
                  (*w - lowbit::quantize_e2m_atq(*w).dequantize()).norm() / w->norm();
        ++total;
    }
    CHECK(better * 4 >= total * 3); // measured 35/35
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = heavy_matrix(4, 12, 14);
    const lowbit::matrix_d c = lowbit::matrix_d::Identity(3, 3), b = lowbit::matrix_d::Identity(4, 4),
                           b5 = lowbit::matrix_d::Identity(5, 5), rect = lowbit::matrix_d::Zero(3, 4);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b5), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, rect, b), lowbit::shape_error);
    lowbit::kotms_options bad;
    bad.rho0 = 0;
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b, bad), lowbit::invalid_argument);
    bad = {};
    bad.iters = -1;
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.method = lowbit::kotms_method::procrustes_em;
    bad.rho0 = 0.2; // procrustes_em needs one width
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    for (double om : {0.0, 2.0}) {
        bad = {};
        bad.relaxation = om;
        CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    }
    bad = {};
    bad.tolerance = -1;
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.method = static_cast<lowbit::kotms_method>(7);
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::invalid_argument);
    bad = {};
    bad.sizes = lowbit::kronecker_factor_sizes{5, 3};
    CHECK_THROWS_AS((void)lowbit::learn_kotms(w, bad), lowbit::shape_error);
    lowbit::matrix_f nan = w;
    nan(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::learn_kotms(nan), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::learn_kotms(lowbit::matrix_f(0, 12)), lowbit::shape_error);
    const lowbit::vector_d short_scale = lowbit::vector_d::Ones(2);
    CHECK_THROWS_AS((void)lowbit::kotms_loss(w, c, b, {}, &short_scale), lowbit::shape_error);
}

TEST_CASE("the learners' float evaluation (one pass + balance pass) matches the double reference: loss and dL/dW_rot") {
    const auto w = heavy_matrix(9, 48, 61);
    const lowbit::matrix_d wd = w.cast<double>();
    const lowbit::matrix_d c = lowbit::random_orthogonal(6, 62), b = lowbit::random_orthogonal(8, 63);
    for (double lambda : {0.0, 0.1, 0.7}) {
        CAPTURE(lambda);
        const lowbit::detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {0.35, 0.2, 0.35}, lambda};
        const auto ref = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, false);
        lowbit::detail::kronecker_stack<> st(w, {6, 8});
        st.set_right(b);
        CHECK(st.kotms_eval(c, spec, false) == doctest::Approx(ref.nll + ref.balance).epsilon(1e-5));
        CHECK(st.kotms_eval(c, spec, true) == doctest::Approx(ref.nll + ref.balance).epsilon(1e-5));
        const lowbit::matrix_d got = Eigen::Map<const lowbit::matrix_f>(st.g.data(), 9, 48).cast<double>();
        CHECK((got - ref.grad).cwiseAbs().maxCoeff() <= 1e-4 * ref.grad.cwiseAbs().maxCoeff());
    }
}

TEST_CASE("learn_kotms (Adam): the first recorded loss is the double reference at the identity") {
    const auto w = heavy_matrix(16, 64, 64);
    lowbit::kotms_options opt;
    opt.iters = 3;
    const auto r = lowbit::learn_kotms(w, opt);
    const auto s = r.rotation.sizes();
    CHECK(r.loss_history.front() ==
          doctest::Approx(lowbit::kotms_loss(w, lowbit::matrix_d::Identity(s.l, s.l), lowbit::matrix_d::Identity(s.r, s.r)).total).epsilon(1e-5));
    CHECK(r.loss_history.back() ==
          doctest::Approx(lowbit::kotms_loss(w, r.rotation.left.cast<double>(), r.rotation.right.cast<double>()).total).epsilon(1e-4));
}

TEST_CASE("KOTMS Procrustes EM step: beats a dense angle search (2x2) and random rotations (4x4), EM's inequality holds") {
    const auto w = heavy_matrix(6, 8, 71);
    const lowbit::matrix_d wd = w.cast<double>();
    const lowbit::detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {0.25, 0.25, 0.25}, 0.0};
    lowbit::matrix_d c = lowbit::random_orthogonal(2, 72), b = lowbit::random_orthogonal(4, 73);
    lowbit::detail::kronecker_stack<> st(w, {2, 4});
    st.set_right(b);
    for (int round = 0; round < 5; ++round) {
        CAPTURE(round);
        const auto e = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, nullptr, nullptr, true);
        const lowbit::matrix_d c0 = c, b0 = b;
        const double loss = lowbit::detail::procrustes_em_round(st, c, b, spec, 1.0);
        CHECK(loss == doctest::Approx(e.nll).epsilon(1e-5));
        const double qc = mixture_fixed_stats(wd, c, b0, e, spec, true), qcb = mixture_fixed_stats(wd, c, b, e, spec, true);
        const double q_best = lowbit_test::min_over_2x2_orthogonal(
            [&](const lowbit::matrix_d& q2) { return mixture_fixed_stats(wd, q2, b0, e, spec, true); });
        CHECK(qc <= q_best + 1e-6 * std::abs(q_best));
        for (std::uint64_t seed = 0; seed < 200; ++seed)
            CHECK(qcb <= mixture_fixed_stats(wd, c, lowbit::random_orthogonal(4, 7000 + seed), e, spec, true) + 1e-9);
        CHECK(qc <= mixture_fixed_stats(wd, c0, b0, e, spec, true) + 1e-9);
        CHECK(qcb <= qc + 1e-9);
        CHECK(mixture_fixed_stats(wd, c, b, e, spec, false) <= mixture_fixed_stats(wd, c0, b0, e, spec, false) + 1e-9);
    }
}

TEST_CASE("learn_kotms with procrustes_em: loss decreases, factors orthogonal, invariance holds, deterministic") {
    const auto w = heavy_matrix(32, 64, 74);
    for (double omega : {1.0, 1.8}) {
        CAPTURE(omega);
        lowbit::kotms_options opt;
        opt.method = lowbit::kotms_method::procrustes_em;
        opt.relaxation = omega;
        opt.iters = 20;
        const auto r = lowbit::learn_kotms(w, opt);
        CHECK(r.loss_history.size() == 21);
        CHECK(r.loss_history.back() < r.loss_history.front() - 0.1);
        CHECK(r.loss_history.back() ==
              doctest::Approx(lowbit::kotms_loss(w, r.rotation.left.cast<double>(), r.rotation.right.cast<double>()).total).epsilon(1e-4));
        CHECK(lowbit::orthogonality_error(r.rotation.matrix()) <= 1e-5);
        const auto r2 = lowbit::learn_kotms(w, opt);
        CHECK(r2.rotation.left == r.rotation.left);
        CHECK(r2.rotation.right == r.rotation.right);
        const lowbit::matrix_f x = heavy_matrix(3, 64, 75) * 50.0f;
        const Eigen::MatrixXd y = x.cast<double>() * w.cast<double>().transpose();
        const Eigen::MatrixXd y2 = lowbit::rotate_activations(x, r.rotation).cast<double>() *
                                   lowbit::rotate_weights(w, r.rotation).cast<double>().transpose();
        CHECK((y - y2).cwiseAbs().maxCoeff() < 1e-5 * y.cwiseAbs().maxCoeff());
    }
    lowbit::kotms_options stop;
    stop.method = lowbit::kotms_method::procrustes_em;
    stop.iters = 20;
    stop.tolerance = 10.0; // stops at the second E-step
    CHECK(lowbit::learn_kotms(w, stop).loss_history.size() == 2);
}

TEST_CASE("mini-batches: count, strided partition of the rows") {
    using lowbit::detail::minibatch_count;
    CHECK(minibatch_count(10, 8, 0) == 1);
    CHECK(minibatch_count(10, 8, -5) == 1);
    CHECK(minibatch_count(10, 8, 80) == 1);
    CHECK(minibatch_count(10, 8, 79) == 2);
    CHECK(minibatch_count(10, 8, 24) == 4);
    CHECK(minibatch_count(10, 8, 8) == 10);
    CHECK(minibatch_count(10, 8, 1) == 10); // at most one batch per row
    const auto w = heavy_matrix(10, 6, 90);
    for (Eigen::Index count : {1, 3, 4, 10}) {
        CAPTURE(count);
        std::vector<int> seen(10, 0);
        for (Eigen::Index j = 0; j < count; ++j) {
            const auto b = lowbit::detail::strided_rows(w, j, count);
            for (Eigen::Index i = 0; i < b.rows(); ++i) {
                const Eigen::Index row = j + i * count;
                REQUIRE(row < 10);
                CHECK(b.row(i) == w.row(row));
                ++seen[static_cast<std::size_t>(row)];
            }
        }
        CHECK(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }));
    }
}

TEST_CASE("mini-batch Adam equals a double-precision reference that steps on rows j, j + B, ... at step t (j = t mod B)") {
    // Reference: the double KOTMS loss and its factor gradients (`kotms_loss`, checked against finite
    // differences above) on each step's strided rows, Adam written out here, the library's Cayley map.
    const auto w = heavy_matrix(12, 32, 91);
    lowbit::kotms_options opt;
    opt.sizes = lowbit::kronecker_factor_sizes{4, 8};
    opt.iters = 5;
    opt.batch_entries = 128; // 12 rows × 32 = 384 weights → 3 batches of 4 rows
    const auto got = lowbit::learn_kotms(w, opt);
    REQUIRE(got.loss_history.size() == 6);
    const Eigen::Index nb = 3;
    lowbit::matrix_d pl = lowbit::matrix_d::Zero(4, 4), pr = lowbit::matrix_d::Zero(8, 8);
    lowbit::matrix_d c = lowbit::matrix_d::Identity(4, 4), b = lowbit::matrix_d::Identity(8, 8);
    lowbit::matrix_d m1l = pl, m2l = pl, m1r = pr, m2r = pr;
    auto adam = [](lowbit::matrix_d& p, lowbit::matrix_d& m1, lowbit::matrix_d& m2, const lowbit::matrix_d& g, int t, double lr) {
        m1 = 0.9 * m1 + 0.1 * g;
        m2 = 0.999 * m2 + 0.001 * g.cwiseProduct(g);
        const double c1 = 1 - std::pow(0.9, t), c2 = 1 - std::pow(0.999, t);
        p.array() -= lr * (m1.array() / c1) / ((m2.array() / c2).sqrt() + 1e-8);
    };
    for (int t = 0; t <= opt.iters; ++t) {
        CAPTURE(t);
        lowbit::matrix_f rows(4, 32);
        for (Eigen::Index i = 0; i < 4; ++i) rows.row(i) = w.row((t % nb) + i * nb);
        const auto ev = lowbit::kotms_loss(rows, c, b, opt);
        CHECK(got.loss_history[static_cast<std::size_t>(t)] == doctest::Approx(ev.total).epsilon(2e-4));
        if (t == opt.iters) break;
        adam(pr, m1r, m2r, lowbit::cayley_gradient(pr, b, ev.grad_right), t + 1, opt.lr_right);
        adam(pl, m1l, m2l, lowbit::cayley_gradient(pl, c, ev.grad_left), t + 1, opt.lr_left);
        c = lowbit::cayley(pl);
        b = lowbit::cayley(pr);
    }
    CHECK((got.rotation.left.cast<double>() - c).cwiseAbs().maxCoeff() < 1e-4);
    CHECK((got.rotation.right.cast<double>() - b).cwiseAbs().maxCoeff() < 1e-4);
    // a full batch is a different run (every row each step)
    opt.batch_entries = 0;
    CHECK(lowbit::learn_kotms(w, opt).loss_history[1] != doctest::Approx(got.loss_history[1]).epsilon(1e-6));
}

TEST_CASE("stochastic Procrustes EM: round t is an E-step and exact M-steps on batch t mod B; tolerance compares a batch with itself") {
    const auto w = heavy_matrix(12, 32, 92);
    lowbit::kotms_options opt;
    opt.sizes = lowbit::kronecker_factor_sizes{4, 8};
    opt.method = lowbit::kotms_method::procrustes_em;
    opt.relaxation = 1.0;
    opt.lambda_bal = 0.0;
    opt.iters = 7;
    opt.batch_entries = 128; // 3 batches of 4 rows
    const auto got = lowbit::learn_kotms(w, opt);
    REQUIRE(got.loss_history.size() == 8);
    const lowbit::detail::mixture_spec spec{{-1.0, 0.0, 1.0}, {0.25, 0.25, 0.25}, 0.0};
    lowbit::matrix_d c = lowbit::matrix_d::Identity(4, 4), b = lowbit::matrix_d::Identity(8, 8);
    for (int t = 0; t <= opt.iters; ++t) {
        CAPTURE(t);
        lowbit::matrix_f rows(4, 32);
        for (Eigen::Index i = 0; i < 4; ++i) rows.row(i) = w.row((t % 3) + i * 3);
        const lowbit::matrix_d rd = rows.cast<double>();
        // the recorded loss is the double reference loss of this round's batch
        CHECK(got.loss_history[static_cast<std::size_t>(t)] == doctest::Approx(lowbit::kotms_loss(rows, c, b, opt).total).epsilon(1e-4));
        if (t == opt.iters) break;
        // the M-steps on this batch beat every random competitor on its Q-function (fixed statistics)
        const auto e = lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(rd, c, b), spec, nullptr, nullptr, true);
        lowbit::detail::kronecker_stack<> st(rows, {4, 8});
        st.set_right(b);
        const lowbit::matrix_d b0 = b;
        (void)lowbit::detail::procrustes_em_round(st, c, b, spec, 1.0);
        const double q = mixture_fixed_stats(rd, c, b, e, spec, true);
        for (std::uint64_t seed = 0; seed < 50; ++seed)
            CHECK(q <= mixture_fixed_stats(rd, c, lowbit::random_orthogonal(8, 9000 + seed), e, spec, true) + 1e-9);
        CHECK(q <= mixture_fixed_stats(rd, c, b0, e, spec, true) + 1e-9);
    }
    CHECK((got.rotation.left.cast<double>() - c).cwiseAbs().maxCoeff() < 1e-4);
    CHECK((got.rotation.right.cast<double>() - b).cwiseAbs().maxCoeff() < 1e-4);
    // tolerance compares round 3 (batch 0 again) with round 0, not with round 2 (another batch)
    opt.tolerance = 10.0;
    CHECK(lowbit::learn_kotms(w, opt).loss_history.size() == 4);
}

TEST_CASE("kotms_layer_options: published full-batch Adam up to 2^21 weights, stochastic EM in 2^22-weight batches above") {
    const auto small = lowbit::kotms_layer_options(512, 1536);
    CHECK(small.method == lowbit::kotms_method::adam);
    CHECK(small.iters == 100);
    CHECK(small.batch_entries <= 0);
    CHECK(small.sizes->l == 16);
    CHECK(small.sizes->r == 96);
    CHECK(lowbit::kotms_layer_options(1024, 2048).method == lowbit::kotms_method::adam); // exactly 2^21
    const auto big = lowbit::kotms_layer_options(4096, 4096);
    CHECK(big.method == lowbit::kotms_method::procrustes_em);
    CHECK(big.iters == 24);
    CHECK(big.batch_entries == (std::int64_t{1} << 22));
    CHECK(lowbit::detail::minibatch_count(4096, 4096, big.batch_entries) == 4);
    CHECK(big.sizes->l == 8);
    CHECK(big.sizes->r == 512);
    CHECK_THROWS_AS((void)lowbit::kotms_layer_options(0, 8), lowbit::invalid_argument);
}
