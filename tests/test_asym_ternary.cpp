// Tests for lowbit/asym_ternary.hpp (E2M-ATQ). Oracles: a stage-1 row worked by hand; Cramer's rule
// in long double for the stage-2 2×2 / 3×3 normal equations; the compacted row (mask applied by
// hand) for mask handling; brute-force nearest level for round_column; absmean ternary (ternary.hpp)
// as the baseline on the real checkpoint.
#include <lowbit/asym_ternary.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/io/tokenizer.hpp>
#include <lowbit/metrics.hpp>
#include <lowbit/model/llama.hpp>
#include <lowbit/ternary.hpp>

#include "gaussian_matrix.hpp"
#include "models.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <limits>
#include <random>
#include <vector>

namespace {

using ld = long double;

lowbit::matrix_f random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
    return lowbit_test::student_t(r, c, seed, 4.0f, 1.0f, 0.5f);
}

lowbit::matrix_d random_gram(Eigen::Index n, unsigned seed) { return lowbit_test::graded_gram(n, seed, 3.0); }

lowbit::group_mask random_mask(Eigen::Index r, Eigen::Index c, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::bernoulli_distribution b(0.6);
    lowbit::group_mask m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = b(rng);
    return m;
}

ld det(std::vector<std::vector<ld>> a) { // Laplace expansion, k ≤ 3
    const std::size_t k = a.size();
    if (k == 1) return a[0][0];
    if (k == 2) return a[0][0] * a[1][1] - a[0][1] * a[1][0];
    return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
           a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
}

// Cramer's rule for min e S eᵀ, e = target − Σ x_k basis_k.
std::vector<ld> cramer(const std::vector<std::vector<ld>>& basis, const std::vector<ld>& target,
                       const lowbit::matrix_d& s) {
    const std::size_t k = basis.size(), n = target.size();
    auto inner = [&](const std::vector<ld>& a, const std::vector<ld>& b) {
        ld t = 0;
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j)
                t += a[i] * static_cast<ld>(s(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j))) * b[j];
        return t;
    };
    std::vector<std::vector<ld>> g(k, std::vector<ld>(k));
    std::vector<ld> rhs(k);
    for (std::size_t a = 0; a < k; ++a) {
        rhs[a] = inner(basis[a], target);
        for (std::size_t b = 0; b < k; ++b) g[a][b] = inner(basis[a], basis[b]);
    }
    const ld d = det(g);
    std::vector<ld> x(k);
    for (std::size_t a = 0; a < k; ++a) {
        auto m = g;
        for (std::size_t i = 0; i < k; ++i) m[i][a] = rhs[i];
        x[a] = det(m) / d;
    }
    return x;
}

// e S eᵀ of a masked fit, e = w⊙m − dequantize.
double masked_output_error(const lowbit::matrix_f& w, const lowbit::asym_ternary_rows& f, const lowbit::matrix_d& s) {
    const lowbit::matrix_f wh = f.dequantize();
    double total = 0;
    for (Eigen::Index r = 0; r < w.rows(); ++r) {
        lowbit::vector_d e(w.cols());
        for (Eigen::Index j = 0; j < w.cols(); ++j) e(j) = (f.mask(r, j) ? w(r, j) : 0.0) - wh(r, j);
        total += e.dot(s * e);
    }
    return total;
}

} // namespace

TEST_CASE("stage 1 without refinement worked by hand") {
    lowbit::matrix_f w(1, 5);
    w << -2.0f, -0.1f, 0.3f, 1.8f, 0.5f; // μ 0.1, c = [-2.1,-0.2,0.2,1.7,0.4], Δ = 0.75·0.92 = 0.69
    lowbit::e2m_atq cfg;
    cfg.stage1_iters = 0;
    cfg.relocate = false;
    const auto f = lowbit::fit_e2m_atq(w, cfg);
    CHECK(f.mean(0) == doctest::Approx(0.1));
    CHECK(f.alpha[0](0) == doctest::Approx(1.9)); // (2.1 + 1.7) / 2
    const int want[5] = {-1, 0, 0, 1, 0};
    for (int j = 0; j < 5; ++j) CHECK(f.codes[0](0, j) == want[j]);
}

TEST_CASE("stage 2 equals the direct 2x2 / 3x3 solve in long double, with a mask and S") {
    const auto w = random_matrix(6, 20, 1);
    const auto m = random_mask(6, 20, 2);
    const auto s = random_gram(20, 3);
    for (int order : {1, 2}) {
        lowbit::e2m_atq cfg;
        cfg.order = order;
        const auto f = lowbit::fit_e2m_atq(w, m, s, cfg);
        for (Eigen::Index r = 0; r < 6; ++r) {
            std::vector<std::vector<ld>> basis(static_cast<std::size_t>(order + 1), std::vector<ld>(20));
            std::vector<ld> target(20);
            for (Eigen::Index j = 0; j < 20; ++j) {
                basis[0][static_cast<std::size_t>(j)] = m(r, j) ? 1 : 0;
                target[static_cast<std::size_t>(j)] = m(r, j) ? w(r, j) : 0;
                for (int p = 0; p < order; ++p) {
                    basis[static_cast<std::size_t>(p + 1)][static_cast<std::size_t>(j)] =
                        f.codes[static_cast<std::size_t>(p)](r, j);
                    if (!m(r, j)) CHECK(f.codes[static_cast<std::size_t>(p)](r, j) == 0);
                }
            }
            const auto x = cramer(basis, target, s);
            CHECK(f.mean(r) == doctest::Approx(static_cast<double>(x[0])).epsilon(1e-4));
            for (int p = 0; p < order; ++p)
                CHECK(f.alpha[static_cast<std::size_t>(p)](r) ==
                      doctest::Approx(static_cast<double>(x[static_cast<std::size_t>(p + 1)])).epsilon(1e-4));
        }
    }
}

TEST_CASE("stage 2 never increases tr(ΔSΔᵀ); coordinate descent converges to the closed form") {
    const auto w = random_matrix(10, 32, 4);
    const auto m = random_mask(10, 32, 5);
    const auto s = random_gram(32, 6);
    for (int order : {1, 2}) {
        lowbit::e2m_atq one;
        one.order = order;
        one.relocate = false;
        lowbit::e2m_atq two = one;
        two.relocate = true;
        lowbit::e2m_atq cd = two;
        cd.stage2_rounds = 15; // TWLA code
        lowbit::e2m_atq cd_long = two;
        cd_long.stage2_rounds = 3000;
        const auto f1 = lowbit::fit_e2m_atq(w, m, s, one);
        const auto f2 = lowbit::fit_e2m_atq(w, m, s, two);
        const auto f3 = lowbit::fit_e2m_atq(w, m, s, cd);
        const auto f4 = lowbit::fit_e2m_atq(w, m, s, cd_long);
        CHECK(f1.codes[0] == f2.codes[0]);
        const double e1 = masked_output_error(w, f1, s), e2 = masked_output_error(w, f2, s);
        const double e3 = masked_output_error(w, f3, s), e4 = masked_output_error(w, f4, s);
        CHECK(e2 <= e1);
        CHECK(e3 <= e1);
        CHECK(e2 <= e3 * (1 + 1e-6));
        CHECK(e4 == doctest::Approx(e2).epsilon(1e-4));
    }
}

TEST_CASE("order 2 beats order 1 (Euclidean and S-weighted)") {
    const auto w = random_matrix(16, 64, 7);
    lowbit::e2m_atq o2;
    o2.order = 2;
    const double e1 = (w - lowbit::quantize_e2m_atq(w).dequantize()).squaredNorm();
    const double e2 = (w - lowbit::quantize_e2m_atq(w, o2).dequantize()).squaredNorm();
    CHECK(e2 < 0.5 * e1);
    const auto s = random_gram(64, 8);
    const auto q1 = lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_row{}, s).dequantize();
    const auto q2 = lowbit::quantize_e2m_atq(w, o2, lowbit::per_row{}, s).dequantize();
    CHECK(lowbit::output_error(w, q2, s) < lowbit::output_error(w, q1, s));
}

TEST_CASE("a mask gives the same fit as the compacted row; empty masks give zeros") {
    const auto w = random_matrix(4, 16, 9);
    auto m = random_mask(4, 16, 10);
    m.row(3).setConstant(false);
    const auto s = random_gram(16, 11);
    for (int order : {1, 2}) {
        lowbit::e2m_atq cfg;
        cfg.order = order;
        const auto f = lowbit::fit_e2m_atq(w, m, s, cfg);
        for (Eigen::Index r = 0; r < 3; ++r) {
            std::vector<Eigen::Index> idx;
            for (Eigen::Index j = 0; j < 16; ++j)
                if (m(r, j)) idx.push_back(j);
            const auto k = static_cast<Eigen::Index>(idx.size());
            lowbit::matrix_f row(1, k);
            lowbit::matrix_d sk(k, k);
            for (Eigen::Index a = 0; a < k; ++a) {
                row(0, a) = w(r, idx[static_cast<std::size_t>(a)]);
                for (Eigen::Index b = 0; b < k; ++b) sk(a, b) = s(idx[static_cast<std::size_t>(a)], idx[static_cast<std::size_t>(b)]);
            }
            const auto g = lowbit::fit_e2m_atq(row, lowbit::group_mask::Constant(1, k, true), sk, cfg);
            CHECK(g.mean(0) == doctest::Approx(f.mean(r)).epsilon(1e-5));
            CHECK(g.alpha[0](0) == doctest::Approx(f.alpha[0](r)).epsilon(1e-5));
            for (Eigen::Index a = 0; a < k; ++a) CHECK(g.codes[0](0, a) == f.codes[0](r, idx[static_cast<std::size_t>(a)]));
        }
        CHECK(f.mean(3) == 0.0f);
        CHECK(f.alpha[0](3) == 0.0f);
        CHECK(f.dequantize().row(3).isZero());
    }
}

TEST_CASE("per_group equals fitting each slice; e2m_atq_quantizer models GroupQuantizer") {
    const auto w = random_matrix(3, 12, 12);
    const auto t = lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_group{5, lowbit::tail_policy::smaller_last});
    REQUIRE(t.mean.cols() == 3);
    for (int g = 0; g < 3; ++g) {
        const int width = g < 2 ? 5 : 2;
        const auto f = lowbit::fit_e2m_atq(w.middleCols(5 * g, width));
        CHECK(f.mean == t.mean.col(g));
        CHECK(f.alpha[0] == t.alpha[0].col(g));
        CHECK(f.codes[0] == t.codes[0].middleCols(5 * g, width));
    }

    static_assert(lowbit::GroupQuantizer<lowbit::e2m_atq_quantizer>);
    for (int order : {1, 2}) {
        lowbit::e2m_atq_quantizer q;
        q.config.order = order;
        const auto p = q.fit(w);
        const auto f = lowbit::fit_e2m_atq(w, q.config);
        CHECK(p.mean == f.mean);
        lowbit::vector_f out(3);
        for (Eigen::Index c = 0; c < 12; ++c) {
            q.round_column(p, w.col(c), out);
            for (Eigen::Index i = 0; i < 3; ++i) {
                float best = std::numeric_limits<float>::infinity();
                for (int s0 = -1; s0 <= 1; ++s0)
                    for (int s1 = -1; s1 <= 1; ++s1)
                        if (order == 2 || s1 == 0)
                            best = std::min(best, std::abs(w(i, c) - (p.mean(i) + s0 * p.alpha0(i) + s1 * p.alpha1(i))));
                CHECK(std::abs(w(i, c) - out(i)) == best);
            }
        }
    }
}

TEST_CASE("E2M-ATQ has lower output error than absmean ternary on every linear tensor of stories260K") {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    int count = 0;
    for (const auto& [name, w] : lowbit::io::linear_weights(ck)) {
        const lowbit::matrix_d s = lowbit::matrix_d::Identity(w->cols(), w->cols()); // S = I (no calibration yet)
        const double e_atq = lowbit::output_error(*w, lowbit::quantize_e2m_atq(*w).dequantize(), s);
        const double e_abs = lowbit::output_error(*w, lowbit::quantize_ternary(*w, lowbit::absmean{}).dequantize(), s);
        INFO(name);
        CHECK(e_atq < e_abs);
        ++count;
    }
    CHECK(count == 35);
}

TEST_CASE("with captured calibration S, E2M-ATQ beats absmean in tr(ΔSΔᵀ) on every tensor and stage 2 helps") {
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    const auto tok = lowbit::io::read_tokenizer(lowbit_test::stories260k("tok512.bin"), ck.config.vocab_size);
    std::ifstream text(lowbit_test::stories260k("tinystories_dev.txt"), std::ios::binary);
    std::stringstream ss;
    ss << text.rdbuf();
    const auto ids = tok.encode(ss.str().substr(0, 4000), false, false, lowbit::io::dummy_prefix::separate);
    const auto inputs = lowbit::calibration_inputs(lowbit::model_from_llama2c(ck), ids, 255, 2);
    lowbit::e2m_atq stage1;
    stage1.relocate = false;
    for (std::size_t l = 0; l < ck.layers.size(); ++l) {
        const auto& layer = ck.layers[l];
        const lowbit::matrix_f* ws[lowbit::linear_slots] = {&layer.wq, &layer.wk, &layer.wv, &layer.wo,
                                                            &layer.w1, &layer.w2, &layer.w3};
        for (int slot = 0; slot < lowbit::linear_slots; ++slot) {
            const lowbit::matrix_f& w = *ws[slot];
            const lowbit::matrix_d x = inputs[l][static_cast<std::size_t>(slot)].cast<double>();
            const lowbit::matrix_d s = x.transpose() * x;
            const double e_s = lowbit::output_error(w, lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_row{}, s).dequantize(), s);
            const double e_1 = lowbit::output_error(w, lowbit::quantize_e2m_atq(w, stage1, lowbit::per_row{}, s).dequantize(), s);
            const double e_abs = lowbit::output_error(w, lowbit::quantize_ternary(w, lowbit::absmean{}).dequantize(), s);
            INFO("layer " << l << " slot " << slot);
            CHECK(e_s < e_abs);
            CHECK(e_s <= e_1 * (1 + 1e-6));
        }
    }
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto w = random_matrix(2, 6, 13);
    const auto m = lowbit::group_mask::Constant(2, 6, true);
    const lowbit::matrix_d s = lowbit::matrix_d::Identity(6, 6);
    lowbit::e2m_atq bad_order;
    bad_order.order = 3;
    CHECK_THROWS_WITH((void)lowbit::fit_e2m_atq(w, bad_order), doctest::Contains("order must be 1 or 2"));
    lowbit::e2m_atq bad_ratio;
    bad_ratio.threshold_ratio = 1.0f;
    CHECK_THROWS_AS((void)lowbit::quantize_e2m_atq(w, bad_ratio), lowbit::invalid_argument);
    lowbit::e2m_atq bad_iters;
    bad_iters.stage1_iters = -1;
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(w, bad_iters), lowbit::invalid_argument);
    bad_iters.stage1_iters = 1;
    bad_iters.stage2_rounds = -1;
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(w, m, s, bad_iters), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(lowbit::matrix_f(0, 6)), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(w, lowbit::group_mask::Constant(2, 5, true), s), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(w, m, lowbit::matrix_d::Identity(5, 5)), lowbit::shape_error);
    lowbit::matrix_d sn = s;
    sn(0, 0) = std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS((void)lowbit::fit_e2m_atq(w, m, sn), lowbit::numeric_error);
    auto wn = w;
    wn(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::quantize_e2m_atq(wn), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_group{4}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_row{}, lowbit::matrix_d::Identity(4, 4)),
                    lowbit::shape_error);
}
