// Tests for lowbit/billm.hpp. Oracles: a straightforward double-precision masked residual binarization
// written here (per row: mean and mean |·| over the masked entries, sign, residual); the salient-column
// and break-point searches redone here by brute force over every k and every quantile (quantiles from a
// sort written here) on Ω rebuilt from an explicit inverse and Cholesky factor; the identity
// loss = tr(Δ H_d Δᵀ); plain binarization under the same GPTQ (sign and ARB per row) as the baseline
// BiLLM must beat on correlated inputs.
#include <lowbit/billm.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/gptq.hpp>

#include <doctest/doctest.h>

#include "gptq_problem.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

namespace {

using lowbit::group_mask;
using lowbit::matrix_d;
using lowbit::matrix_f;
using lowbit_test::correlated_inputs;
using lowbit_test::hessian_of;
using lowbit_test::output_error;
using lowbit_test::random_weights;

// Reference residual binarization: for each row, `order` times: μ = mean of the residual over the
// masked entries, α = mean |residual − μ|, approximation += μ + α·sign(residual − μ) (sign(0) = +1).
Eigen::MatrixXd reference_binarize(const matrix_f& v, const group_mask& mask, int order) {
    Eigen::MatrixXd approx = Eigen::MatrixXd::Zero(v.rows(), v.cols());
    for (Eigen::Index i = 0; i < v.rows(); ++i) {
        std::vector<Eigen::Index> idx;
        for (Eigen::Index j = 0; j < v.cols(); ++j)
            if (mask(i, j)) idx.push_back(j);
        if (idx.empty()) continue;
        for (int p = 0; p < order; ++p) {
            double mu = 0, a = 0;
            for (Eigen::Index j : idx) mu += v(i, j) - approx(i, j);
            mu /= static_cast<double>(idx.size());
            for (Eigen::Index j : idx) a += std::abs(v(i, j) - approx(i, j) - mu);
            a /= static_cast<double>(idx.size());
            for (Eigen::Index j : idx) approx(i, j) += mu + (v(i, j) - approx(i, j) - mu >= 0 ? a : -a);
        }
    }
    return approx;
}

double reference_sse(const matrix_f& v, const group_mask& mask, int order) {
    const Eigen::MatrixXd a = reference_binarize(v, mask, order);
    double e = 0;
    for (Eigen::Index i = 0; i < v.rows(); ++i)
        for (Eigen::Index j = 0; j < v.cols(); ++j)
            if (mask(i, j)) e += (a(i, j) - v(i, j)) * (a(i, j) - v(i, j));
    return e;
}

} // namespace

TEST_CASE("binarize_masked equals the double-precision reference, orders 1-3, empty rows") {
    const matrix_f w = random_weights(9, 40, 31);
    group_mask mask(9, 40);
    for (Eigen::Index i = 0; i < 9; ++i)
        for (Eigen::Index j = 0; j < 40; ++j) mask(i, j) = ((i * 7 + j * 3) % 5) < 3;
    mask.row(4).setConstant(false); // a row with no entry in the group
    for (int order : {1, 2, 3}) {
        const auto r = lowbit::binarize_masked(w, mask, order);
        REQUIRE(r.order == order);
        REQUIRE(r.alpha.size() == static_cast<std::size_t>(order));
        const matrix_f got = r.dequantize();
        const Eigen::MatrixXd want = reference_binarize(w, mask, order);
        CHECK((got.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-5);
        for (Eigen::Index i = 0; i < 9; ++i)
            for (Eigen::Index j = 0; j < 40; ++j)
                for (const auto& s : r.signs) CHECK((mask(i, j) ? std::abs(s(i, j)) == 1 : s(i, j) == 0));
        CHECK(r.mean(4) == 0.0f);
        CHECK(got.row(4).isZero());
        // each row takes at most 2^order values on its group
        for (Eigen::Index i = 0; i < 9; ++i) {
            std::set<float> vals;
            for (Eigen::Index j = 0; j < 40; ++j)
                if (mask(i, j)) vals.insert(got(i, j));
            CHECK(vals.size() <= (std::size_t{1} << order));
        }
    }
    // more planes never fit worse (each plane's (μ, α) is optimal for its sign pattern given μ)
    CHECK(reference_sse(w, mask, 2) < reference_sse(w, mask, 1));
}

TEST_CASE("billm_quantize: lower output error than sign and ARB binarization under the same GPTQ") {
    const matrix_f x = correlated_inputs(512, 256, 41);
    const matrix_d h = hessian_of(x);
    const matrix_d s = h / 2.0;
    const matrix_f w = random_weights(32, 256, 42);
    const auto r = lowbit::billm_quantize(w, h);
    lowbit::gptq_options go;
    go.act_order = false;
    const auto sign = lowbit::gptq_quantize(w, h, lowbit::binary_quantizer<lowbit::sign_scale>{{true}}, lowbit::per_row{}, go);
    const auto arb = lowbit::gptq_quantize(w, h, lowbit::binary_quantizer<lowbit::arb>{}, lowbit::per_row{}, go);
    const double e = output_error(w, r.weights, s), es = output_error(w, sign.weights, s), ea = output_error(w, arb.weights, s);
    MESSAGE("tr(dS d^T): BiLLM " << e << " (" << r.stored_bits() << " b/w stored, " << r.paper_bits()
                                 << " by the paper's count), GPTQ sign " << es << ", GPTQ ARB " << ea);
    CHECK(e < 0.8 * es);
    CHECK(e < 0.8 * ea);
    REQUIRE(r.blocks.size() == 2);
    matrix_d hd = h;
    hd.diagonal().array() += r.damp * h.diagonal().mean();
    CHECK(r.damp == 0.01);
    CHECK(r.loss == doctest::Approx(output_error(w, r.weights, hd)).epsilon(1e-8));
    // bits: one sign and one group bit per weight, 7 fp16 per row per 128 columns, the salient extras
    const double floor_bits = 2.0 + 7.0 * 16.0 / 128.0;
    CHECK(r.stored_bits() >= floor_bits);
    CHECK(r.stored_bits() <= floor_bits + 50.0 / 128.0 + 8.0 / 32.0);
    CHECK(r.paper_bits() > 1.0);
    CHECK(r.paper_bits() < 1.0 + 49.0 / 128.0);
    // deterministic
    CHECK(lowbit::billm_quantize(w, h).weights == r.weights);
}

TEST_CASE("billm_quantize: three groups, salient and split searches against brute force, kept codes") {
    const matrix_f x = correlated_inputs(256, 64, 43);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(16, 64, 44);
    lowbit::billm_options opt;
    opt.gptq.block_size = 32;
    opt.salient_candidates = 12;
    opt.quantile_steps = 9;
    opt.keep_codes = true;
    const auto r = lowbit::billm_quantize(w, h, opt);
    REQUIRE(r.blocks.size() == 2);
    for (const auto& b : r.blocks) {
        REQUIRE(b.fits.size() == 3);
        CHECK(b.fits[0].order == 2);
        CHECK(b.fits[1].order == 1);
        CHECK(b.fits[2].order == 1);
        for (Eigen::Index i = 0; i < w.rows(); ++i)
            for (Eigen::Index j = 0; j < b.width; ++j)
                CHECK(int(b.fits[0].mask(i, j)) + int(b.fits[1].mask(i, j)) + int(b.fits[2].mask(i, j)) == 1);
        CHECK(!b.salient.empty());
        CHECK(static_cast<Eigen::Index>(b.salient.size()) <= opt.salient_candidates - 1);
        for (Eigen::Index j = 0; j < b.width; ++j) {
            const bool sal = std::find(b.salient.begin(), b.salient.end(), j) != b.salient.end();
            CHECK((sal ? b.fits[0].mask.col(j).all() : !b.fits[0].mask.col(j).any()));
        }
        matrix_f sum = matrix_f::Zero(w.rows(), b.width);
        for (const auto& f : b.fits) sum += f.dequantize();
        CHECK((sum - r.weights.middleCols(b.begin, b.width)).cwiseAbs().maxCoeff() == 0.0f);
    }
    // Block 0: rebuild Ω and redo both searches by brute force with the reference binarization.
    const matrix_f omega = lowbit_test::first_block_omega(w, h, 0.01, 32);
    const std::vector<Eigen::Index> cols = lowbit_test::columns_by_score(omega);
    const auto& b0 = r.blocks[0];
    double best = std::numeric_limits<double>::infinity(), chosen = 0;
    group_mask sal_chosen;
    for (std::size_t k = 1; k <= 11; ++k) {
        group_mask sal = group_mask::Constant(16, 32, false);
        for (std::size_t c = 0; c < k; ++c) sal.col(cols[c]).setConstant(true);
        const double e = reference_sse(omega, sal, 2) + reference_sse(omega, group_mask(!sal.array()), 2);
        best = std::min(best, e);
        if (k == b0.salient.size()) {
            chosen = e;
            sal_chosen = sal;
            CHECK(std::vector<Eigen::Index>(cols.begin(), cols.begin() + static_cast<std::ptrdiff_t>(k)) == b0.salient);
        }
    }
    CHECK(chosen <= best * (1 + 1e-5));
    // The split: quantiles of Ω with salient entries as 0, every candidate scored, the chosen one minimal.
    std::vector<double> vals;
    for (Eigen::Index i = 0; i < 16; ++i)
        for (Eigen::Index j = 0; j < 32; ++j) vals.push_back(sal_chosen(i, j) ? 0.0 : omega(i, j));
    std::sort(vals.begin(), vals.end());
    double best_split = std::numeric_limits<double>::infinity(), chosen_split = -1;
    for (int q = 0; q < 9; ++q) {
        const double pos = (0.1 + 0.1 * q) * static_cast<double>(vals.size() - 1);
        const auto lo = static_cast<std::size_t>(pos);
        const double p = vals[lo] + (pos - static_cast<double>(lo)) * (vals[std::min(lo + 1, vals.size() - 1)] - vals[lo]);
        group_mask low(16, 32), high(16, 32);
        for (Eigen::Index i = 0; i < 16; ++i)
            for (Eigen::Index j = 0; j < 32; ++j) {
                low(i, j) = !sal_chosen(i, j) && omega(i, j) < p;
                high(i, j) = !sal_chosen(i, j) && !(omega(i, j) < p);
            }
        const double e = reference_sse(omega, low, 1) + reference_sse(omega, high, 1);
        best_split = std::min(best_split, e);
        if (std::abs(p - b0.split) <= 1e-9 * std::max(1.0, std::abs(p))) {
            chosen_split = e;
            CHECK(low == b0.fits[1].mask);
            CHECK(high == b0.fits[2].mask);
        }
    }
    REQUIRE(chosen_split >= 0);
    CHECK(chosen_split <= best_split * (1 + 1e-5));
}

TEST_CASE("gram_fit: each group's rows never worse in e S e^T than the paper's fit, order 2 the S-weighted least squares") {
    const matrix_f x = correlated_inputs(512, 128, 51);
    const matrix_d h = hessian_of(x);
    const matrix_d s = h / 2.0;
    const matrix_f w = random_weights(24, 128, 52);
    lowbit::billm_options opt;
    opt.keep_codes = true;
    const auto paper = lowbit::billm_quantize(w, h, opt);
    opt.gram_fit = true;
    const auto gram = lowbit::billm_quantize(w, h, opt);
    REQUIRE(paper.blocks.size() == 1); // one block: both runs fit the same W1 with the same groups
    const auto& pf = paper.blocks[0].fits;
    const auto& gf = gram.blocks[0].fits;
    REQUIRE(gf.size() == 3);
    // e S eᵀ of one row of one group, the error restricted to the group's entries
    const auto row_error = [&](const lowbit::masked_binary_rows& f, Eigen::Index i) {
        const matrix_f q = f.dequantize();
        Eigen::VectorXd e = Eigen::VectorXd::Zero(128);
        for (Eigen::Index j = 0; j < 128; ++j)
            if (f.mask(i, j)) e(j) = static_cast<double>(w(i, j)) - q(i, j);
        return e.dot(s * e);
    };
    int improved = 0;
    for (std::size_t g = 0; g < 3; ++g) {
        CHECK(gf[g].mask == pf[g].mask);
        for (Eigen::Index i = 0; i < w.rows(); ++i) {
            const double eg = row_error(gf[g], i), ep = row_error(pf[g], i);
            CHECK(eg <= ep * (1 + 1e-6) + 1e-9);
            improved += eg < 0.99 * ep;
        }
    }
    CHECK(improved > 24);
    // The salient group keeps the residual signs; (μ, α₀, α₁) solve the S-weighted normal equations.
    const auto& sal = gf[0];
    CHECK(sal.signs[0] == pf[0].signs[0]);
    CHECK(sal.signs[1] == pf[0].signs[1]);
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        Eigen::MatrixXd basis = Eigen::MatrixXd::Zero(3, 128);
        Eigen::VectorXd target = Eigen::VectorXd::Zero(128);
        for (Eigen::Index j = 0; j < 128; ++j)
            if (sal.mask(i, j)) {
                basis(0, j) = 1.0;
                basis(1, j) = sal.signs[0](i, j);
                basis(2, j) = sal.signs[1](i, j);
                target(j) = w(i, j);
            }
        const Eigen::Vector3d want = (basis * s * basis.transpose()).ldlt().solve(basis * s * target);
        CHECK(sal.mean(i) == doctest::Approx(want(0)).epsilon(1e-4).scale(1e-3));
        CHECK(sal.alpha[0](i) == doctest::Approx(want(1)).epsilon(1e-4).scale(1e-3));
        CHECK(sal.alpha[1](i) == doctest::Approx(want(2)).epsilon(1e-4).scale(1e-3));
    }
    const double e_paper = output_error(w, paper.weights, s), e_gram = output_error(w, gram.weights, s);
    MESSAGE("tr(dS d^T): BiLLM " << e_paper << ", with gram_fit " << e_gram);
    CHECK(e_gram < e_paper);
}

TEST_CASE("split off: one non-salient group, fitted as the reference binarization, no group bits") {
    const matrix_f x = correlated_inputs(512, 128, 61);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(24, 128, 62);
    lowbit::billm_options opt;
    opt.keep_codes = true;
    opt.split = false;
    const auto r = lowbit::billm_quantize(w, h, opt);
    REQUIRE(r.blocks.size() == 1);
    const auto& b = r.blocks[0];
    CHECK(!r.split);
    CHECK(std::isinf(b.split));
    REQUIRE(b.fits.size() == 3);
    CHECK(!b.fits[2].mask.any());
    CHECK(b.fits[1].mask == group_mask(!b.fits[0].mask.array()));
    // block 0 sees W itself: the non-salient group is the order-1 reference binarization of W there
    const Eigen::MatrixXd want = reference_binarize(w, b.fits[1].mask, 1);
    CHECK((b.fits[1].dequantize().cast<double>() - want).cwiseAbs().maxCoeff() < 1e-5);
    // bits: a sign per weight, a second sign per salient weight, the column set, 5 fp16 per row
    const double k = static_cast<double>(b.salient.size());
    CHECK(k > 0);
    CHECK(r.stored_bits() == doctest::Approx((std::min(128.0, 7.0 * k) + 24.0 * (128.0 + k) + 24.0 * 80.0) / (24.0 * 128.0)));
    opt.split = true;
    const auto with = lowbit::billm_quantize(w, h, opt);
    CHECK(with.stored_bits() > r.stored_bits() + 1.0);
    CHECK(output_error(w, with.weights, h) < output_error(w, r.weights, h));
}

TEST_CASE("billm_quantize and binarize_masked: bad input") {
    const matrix_f w = random_weights(4, 8, 45);
    const matrix_d h = matrix_d::Identity(8, 8);
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, matrix_d::Identity(6, 6)), lowbit::shape_error);
    lowbit::billm_options opt;
    opt.salient_candidates = 0;
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, h, opt), lowbit::invalid_argument);
    opt = {};
    opt.quantile_steps = 0;
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, h, opt), lowbit::invalid_argument);
    opt = {};
    opt.gram_iters = -1;
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, h, opt), lowbit::invalid_argument);
    opt = {};
    opt.gptq.block_size = 0;
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, h, opt), lowbit::invalid_argument);
    matrix_f wn = w;
    wn(1, 2) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::billm_quantize(wn, h), lowbit::numeric_error);
    matrix_d hn = h;
    hn(0, 1) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::billm_quantize(w, hn), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::billm_quantize(matrix_f(0, 8), h), lowbit::shape_error);
    const group_mask all = group_mask::Constant(4, 8, true);
    CHECK_THROWS_AS((void)lowbit::binarize_masked(w, group_mask::Constant(4, 7, true), 1), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::binarize_masked(w, all, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::binarize_masked(wn, all, 1), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::binarize_masked(matrix_f(0, 0), group_mask(0, 0), 1), lowbit::shape_error);
    // One-column blocks: no salient candidate (k ≤ K − 1 = 0); every weight still binarized.
    opt = {};
    opt.gptq.block_size = 1;
    const auto r = lowbit::billm_quantize(w, h, opt);
    CHECK(r.weights.allFinite());
    for (const auto& b : r.blocks) CHECK(b.salient.empty());
    CHECK(r.paper_bits() == 1.0);
}

TEST_CASE("pack_billm: the packed layout dequantizes to the result within fp16 rounding, every option") {
    // 200 columns: blocks of 128 and 72 (padding to 80), act order permutes the columns
    const matrix_f x = correlated_inputs(512, 200, 71);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(12, 200, 72);
    for (const bool act_order : {false, true})
        for (const bool split : {true, false})
            for (const bool gram : {false, true}) {
                CAPTURE(act_order);
                CAPTURE(split);
                CAPTURE(gram);
                lowbit::billm_options opt;
                opt.keep_codes = true;
                opt.split = split;
                opt.gram_fit = gram;
                opt.gram_iters = 3;
                opt.gptq.act_order = act_order;
                const auto r = lowbit::billm_quantize(w, h, opt);
                const lowbit::salient_binary_matrix p = lowbit::pack_billm(r);
                REQUIRE(p.rows() == 12);
                REQUIRE(p.cols() == 200);
                REQUIRE(p.padded_cols() == 208);
                const matrix_f d = p.dequantize();
                const Eigen::ArrayXXd err = (d.cast<double>() - r.weights.cast<double>()).array().abs();
                CHECK((err <= std::ldexp(1.0, -11) * r.weights.cast<double>().array().abs() + std::ldexp(1.0, -24)).all());
                // the blocks carry BiLLM's salient counts; bits per row: a p1 bit per padded position, p2
                // bits on every position (split) or on the 16-column chunks holding salient columns,
                // 8 fp16 per block; per matrix: count, flags, 2 × 2 uint16 per block, the uint16 map
                double p2 = 0.0;
                for (std::size_t b = 0; b < 2; ++b) {
                    const auto k = static_cast<double>(r.blocks[b].salient.size());
                    CHECK(p.blocks()[b].salient == static_cast<Eigen::Index>(r.blocks[b].salient.size()));
                    p2 += split ? (b == 0 ? 128.0 : 80.0) : 16.0 * std::ceil(k / 16.0);
                }
                CHECK(p.split() == split);
                CHECK(p.bits_per_weight() == doctest::Approx((12.0 * (208.0 + p2 + 256.0) + 8.0 * (4 + 4 + 8 + 416)) / 2400.0));
            }
    lowbit::billm_options opt; // no kept codes: refused
    CHECK_THROWS_AS((void)lowbit::pack_billm(lowbit::billm_quantize(w, h, opt)), lowbit::invalid_argument);
}
