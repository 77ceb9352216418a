// Tests for lowbit/gptq.hpp. Oracles: the Hessian against (2/N)·XᵀX formed directly in double; the
// solver against a straightforward unblocked double-precision GPTQ recursion written here (explicit
// inverse, Cholesky of the inverse, every later column updated after every column); plain rounding
// (quantize_rtn / quantize_e2m_atq / absmean) as the baseline the solver must beat or, for S = I,
// equal exactly; the identity loss = tr(Δ H_d Δᵀ).
#include <lowbit/asym_ternary.hpp>
#include <lowbit/binary.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/mxfp.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/ternary.hpp>

#include <doctest/doctest.h>

#include "gptq_problem.hpp"

#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace {

using lowbit::matrix_d;
using lowbit::matrix_f;

using lowbit_test::correlated_inputs;
using lowbit_test::hessian_of;
using lowbit_test::output_error;
using lowbit_test::random_weights;

// The reference problem: dead columns fixed (H_jj = 1, W_:j = 0), processing order by diag H descending
// with act order, W and the undamped H in that order.
struct reference_problem {
    Eigen::MatrixXd h, w0, W, H;
    std::vector<Eigen::Index> perm;
};

reference_problem reference_prepare(const matrix_f& w, const matrix_d& h_in, bool act_order) {
    const Eigen::Index m = w.rows(), n = w.cols();
    reference_problem p{h_in, w.cast<double>(), Eigen::MatrixXd(m, n), Eigen::MatrixXd(n, n), {}};
    for (Eigen::Index j = 0; j < n; ++j)
        if (p.h(j, j) == 0) {
            p.h(j, j) = 1;
            p.w0.col(j).setZero();
        }
    p.perm.resize(static_cast<std::size_t>(n));
    std::iota(p.perm.begin(), p.perm.end(), Eigen::Index{0});
    if (act_order)
        std::stable_sort(p.perm.begin(), p.perm.end(), [&](Eigen::Index a, Eigen::Index b) { return p.h(a, a) > p.h(b, b); });
    for (Eigen::Index j = 0; j < n; ++j) {
        p.W.col(j) = p.w0.col(p.perm[static_cast<std::size_t>(j)]);
        for (Eigen::Index i = 0; i < n; ++i)
            p.H(i, j) = p.h(p.perm[static_cast<std::size_t>(i)], p.perm[static_cast<std::size_t>(j)]);
    }
    return p;
}

// The unblocked recursion (docs/sources.md §1.1 without lazy batching) on p.W with damping λ·mean(diag H):
// `quantize(j, col, out)` rounds processed column j (p.W holds every earlier update); every later column is
// updated after every column. Returns Q in the original column order.
template <class F>
matrix_f reference_sweep(reference_problem& p, double damp, F&& quantize, double* loss_out) {
    const Eigen::Index m = p.W.rows(), n = p.W.cols();
    Eigen::MatrixXd hd = p.H;
    hd.diagonal().array() += damp * hd.diagonal().mean();
    const Eigen::MatrixXd hinv = hd.llt().solve(Eigen::MatrixXd::Identity(n, n));
    const Eigen::MatrixXd U = hinv.llt().matrixU();
    Eigen::MatrixXd Qm(m, n);
    double loss = 0;
    lowbit::vector_f colf(m), out(m);
    for (Eigen::Index j = 0; j < n; ++j) {
        colf = p.W.col(j).cast<float>();
        quantize(j, colf, out);
        Qm.col(j) = out.cast<double>();
        const Eigen::VectorXd e = (p.W.col(j) - Qm.col(j)) / U(j, j);
        loss += e.squaredNorm();
        for (Eigen::Index k = j + 1; k < n; ++k) p.W.col(k) -= e * U(j, k);
    }
    matrix_f out_w(m, n);
    for (Eigen::Index j = 0; j < n; ++j) out_w.col(p.perm[static_cast<std::size_t>(j)]) = Qm.col(j).cast<float>();
    if (loss_out) *loss_out = loss;
    return out_w;
}

// Straightforward unblocked GPTQ in double with groups of `gs` processed columns (gs = n: per row), each
// fitted on its columns as updated so far, and the three tail policies; `gram`: fitted with H/2 of the group.
template <class Q>
matrix_f reference_gptq(const matrix_f& w, const matrix_d& h_in, const Q& quant, Eigen::Index gs,
                        lowbit::tail_policy tail, double damp, bool act_order, double* loss_out = nullptr,
                        bool gram = false) {
    reference_problem p = reference_prepare(w, h_in, act_order);
    const Eigen::Index m = w.rows(), n = w.cols();
    typename Q::params params;
    return reference_sweep(
        p, damp,
        [&](Eigen::Index j, const lowbit::vector_f& col, lowbit::vector_f& out) {
            if (j % gs == 0) {
                const Eigen::Index width = std::min(gs, n - j);
                matrix_f blk = matrix_f::Zero(m, tail == lowbit::tail_policy::zero_pad ? gs : width);
                blk.leftCols(width) = p.W.middleCols(j, width).cast<float>();
                params = quant.fit(blk);
                if constexpr (lowbit::GramAwareGroupQuantizer<Q>) {
                    if (gram) { // the group's S = H/2 (undamped), zero for padding columns
                        matrix_d g = matrix_d::Zero(blk.cols(), blk.cols());
                        g.topLeftCorner(width, width) = 0.5 * p.H.block(j, j, width, width);
                        params = quant.fit_with_gram(blk, g);
                    }
                }
            }
            quant.round_column(params, col, out);
        },
        loss_out);
}

} // namespace

TEST_CASE("gptq_hessian: running mean equals (2/N) XᵀX, per-token weights scale rows by sqrt(a)") {
    const matrix_f x = correlated_inputs(100, 12, 1);
    lowbit::gptq_hessian h(12);
    h.add(x.topRows(37));
    h.add(x.middleRows(37, 50));
    h.add(x.bottomRows(13));
    CHECK(h.tokens() == 100);
    const Eigen::MatrixXd xd = x.cast<double>();
    const Eigen::MatrixXd ref = 2.0 / 100.0 * xd.transpose() * xd;
    CHECK((h.matrix() - ref).cwiseAbs().maxCoeff() <= 1e-12 * ref.cwiseAbs().maxCoeff());
    CHECK((h.matrix() - h.matrix().transpose()).cwiseAbs().maxCoeff() == 0.0);

    std::mt19937_64 rng(2);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    lowbit::vector_f a(100);
    for (auto& v : a) v = u(rng);
    lowbit::gptq_hessian hw(12);
    hw.add(x.topRows(60), a.head(60));
    hw.add(x.bottomRows(40), a.tail(40));
    Eigen::MatrixXd refw = Eigen::MatrixXd::Zero(12, 12);
    for (Eigen::Index t = 0; t < 100; ++t) refw += 2.0 / 100.0 * a(t) * xd.row(t).transpose() * xd.row(t);
    CHECK((hw.matrix() - refw).cwiseAbs().maxCoeff() <= 1e-12 * refw.cwiseAbs().maxCoeff());

    CHECK_THROWS_AS(lowbit::gptq_hessian(0), lowbit::invalid_argument);
    CHECK_THROWS_AS(h.add(matrix_f::Zero(3, 11)), lowbit::shape_error);
    CHECK_THROWS_AS(h.add(matrix_f(0, 12)), lowbit::shape_error);
    matrix_f bad = matrix_f::Zero(2, 12);
    bad(1, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(h.add(bad), lowbit::numeric_error);
    CHECK_THROWS_AS(hw.add(x.topRows(3), a.head(2)), lowbit::shape_error);
    lowbit::vector_f neg = lowbit::vector_f::Constant(3, -1.0f);
    CHECK_THROWS_AS(hw.add(x.topRows(3), neg), lowbit::invalid_argument);
}

TEST_CASE("blocked solver equals the unblocked double-precision reference recursion") {
    const matrix_f x = correlated_inputs(400, 100, 3);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(24, 100, 4);
    const lowbit::rtn_quantizer rtn4{4};
    const lowbit::mx_group_quantizer<lowbit::mxfp4> mx;
    struct cfg { Eigen::Index block; bool act; };
    for (const cfg c : {cfg{128, false}, cfg{16, false}, cfg{7, true}, cfg{32, true}}) {
        CAPTURE(c.block);
        CAPTURE(c.act);
        lowbit::gptq_options opt;
        opt.block_size = c.block;
        opt.act_order = c.act;
        double ref_loss = 0;
        // per row, RTN-4
        auto r = lowbit::gptq_quantize(w, h, rtn4, lowbit::per_row{}, opt);
        auto ref = reference_gptq(w, h, rtn4, 100, lowbit::tail_policy::error, 0.01, c.act, &ref_loss);
        CHECK((r.weights - ref).cwiseAbs().maxCoeff() <= 1e-4f);
        CHECK(r.loss == doctest::Approx(ref_loss).epsilon(1e-6));
        // groups of 48 processed columns with both tail policies (groups straddle blocks of 16/7/32)
        for (auto tail : {lowbit::tail_policy::smaller_last, lowbit::tail_policy::zero_pad}) {
            r = lowbit::gptq_quantize(w, h, rtn4, lowbit::per_group{48, tail}, opt);
            ref = reference_gptq(w, h, rtn4, 48, tail, 0.01, c.act, &ref_loss);
            CHECK((r.weights - ref).cwiseAbs().maxCoeff() <= 1e-4f);
            CHECK(r.loss == doctest::Approx(ref_loss).epsilon(1e-6));
            CHECK(r.params.size() == 3);
        }
        // MXFP4 blocks of 32 (tail: smaller_last)
        auto rm = lowbit::gptq_quantize(w, h, mx, lowbit::per_group{32, lowbit::tail_policy::smaller_last}, opt);
        auto refm = reference_gptq(w, h, mx, 32, lowbit::tail_policy::smaller_last, 0.01, c.act, &ref_loss);
        CHECK((rm.weights - refm).cwiseAbs().maxCoeff() <= 1e-4f);
        CHECK(rm.loss == doctest::Approx(ref_loss).epsilon(1e-6));
    }
}

// Reference GPTQ with static_groups=True, written from the reference algorithm: the parameters of
// every group of gs contiguous ORIGINAL columns are fitted up front on the dead-zeroed original W
// (with `weighted`: importance = diag H of the group), then the unblocked act-order recursion
// quantizes original column perm[j] with the parameters of group perm[j] / gs. Returns Q and params.
template <class Q>
matrix_f reference_static_gptq(const matrix_f& w, const matrix_d& h_in, const Q& quant, Eigen::Index gs, bool act_order,
                               bool weighted, std::vector<typename Q::params>& params, double* loss_out) {
    reference_problem p = reference_prepare(w, h_in, act_order);
    const Eigen::Index n = w.cols();
    params.clear();
    for (Eigen::Index g = 0; g * gs < n; ++g) {
        const Eigen::Index width = std::min(gs, n - g * gs);
        const matrix_f blk = p.w0.middleCols(g * gs, width).cast<float>();
        if (weighted) {
            lowbit::vector_f imp(width);
            for (Eigen::Index c = 0; c < width; ++c) imp(c) = static_cast<float>(p.h(g * gs + c, g * gs + c));
            params.push_back(quant.fit(blk, imp));
        } else {
            params.push_back(quant.fit(blk));
        }
    }
    return reference_sweep(
        p, 0.01,
        [&](Eigen::Index j, const lowbit::vector_f& col, lowbit::vector_f& out) {
            quant.round_column(params[static_cast<std::size_t>(p.perm[static_cast<std::size_t>(j)] / gs)], col, out);
        },
        loss_out);
}

TEST_CASE("static groups + act order: reference GPTQ's static_groups, params of the original column groups") {
    struct problem { Eigen::Index m, n, gs, block; };
    for (const problem pr : {problem{6, 16, 4, 128}, problem{24, 100, 20, 7}}) {
        CAPTURE(pr.n);
        const matrix_f x = correlated_inputs(300, pr.n, 11);
        matrix_d h = hessian_of(x);
        matrix_f w = random_weights(pr.m, pr.n, 12);
        // a dead column (H_jj = 0): zeroed before the static fit
        h.row(pr.n / 2).setZero();
        h.col(pr.n / 2).setZero();
        for (const bool weighted : {false, true}) {
            CAPTURE(weighted);
            lowbit::rtn_quantizer q{4, lowbit::int_mode::asymmetric};
            q.clip_grid = weighted ? 11 : 0;
            q.clip_min = 0.5f;
            lowbit::gptq_options opt;
            opt.act_order = true;
            opt.static_groups = true;
            opt.hessian_weighted_fit = weighted;
            opt.block_size = pr.block;
            const auto r = lowbit::gptq_quantize(w, h, q, lowbit::per_group{pr.gs}, opt);
            std::vector<lowbit::rtn_quantizer::params> ref_params;
            double ref_loss = 0;
            const matrix_f ref = reference_static_gptq(w, h, q, pr.gs, true, weighted, ref_params, &ref_loss);
            CHECK(r.static_groups);
            // act order really permutes (else the test would not distinguish static from dynamic groups)
            CHECK_FALSE(std::is_sorted(r.order.begin(), r.order.end()));
            REQUIRE(r.params.size() == ref_params.size());
            for (std::size_t g = 0; g < r.params.size(); ++g) {
                CHECK(r.groups[g].begin == static_cast<Eigen::Index>(g) * pr.gs);
                CHECK(r.params[g].scale == ref_params[g].scale);
                CHECK(r.params[g].zero == ref_params[g].zero);
            }
            CHECK((r.weights - ref).cwiseAbs().maxCoeff() <= 1e-4f);
            CHECK(r.loss == doctest::Approx(ref_loss).epsilon(1e-6));
            // every column on its ORIGINAL group's grid: s·(c − z) with an integer code c ∈ [0, 15]
            for (Eigen::Index i = 0; i < pr.m; ++i)
                for (Eigen::Index c = 0; c < pr.n; ++c) {
                    const auto& p = r.params[static_cast<std::size_t>(c / pr.gs)];
                    const double code = static_cast<double>(r.weights(i, c)) / p.scale(i) + p.zero(i);
                    CHECK(std::fabs(code - std::nearbyint(code)) < 1e-3);
                    CHECK(std::nearbyint(code) >= 0.0);
                    CHECK(std::nearbyint(code) <= 15.0);
                }
            CHECK(r.weights.col(pr.n / 2).isZero());
            // loss identity (on the dead-zeroed W and H with the dead diagonal set to 1)
            matrix_d hd = h;
            hd(pr.n / 2, pr.n / 2) = 1.0;
            hd.diagonal().array() += r.damp * hd.diagonal().mean();
            matrix_f wz = w;
            wz.col(pr.n / 2).setZero();
            CHECK(r.loss == doctest::Approx(output_error(wz, r.weights, hd)).epsilon(1e-8));
        }
    }
    // default stays dynamic; weighted fit needs a quantizer with fit(block, importance)
    const matrix_f w = random_weights(4, 16, 1);
    const matrix_d h = hessian_of(correlated_inputs(100, 16, 2));
    CHECK_FALSE(lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4}, lowbit::per_group{4}).static_groups);
    lowbit::gptq_options opt;
    opt.hessian_weighted_fit = true;
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, lowbit::mx_group_quantizer<lowbit::mxfp4>{}, lowbit::per_group{16}, opt),
                    lowbit::invalid_argument);
}

TEST_CASE("loss equals tr(Δ H_damped Δᵀ)") {
    const matrix_f x = correlated_inputs(300, 64, 5);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(16, 64, 6);
    for (bool act : {false, true}) {
        lowbit::gptq_options opt;
        opt.act_order = act;
        const auto r = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{3}, lowbit::per_group{16}, opt);
        matrix_d hd = h;
        hd.diagonal().array() += r.damp * h.diagonal().mean();
        CHECK(r.loss == doctest::Approx(output_error(w, r.weights, hd)).epsilon(1e-8));
    }
}

TEST_CASE("GPTQ lowers tr(ΔSΔᵀ) against plain rounding on correlated inputs") {
    const matrix_f x = correlated_inputs(512, 128, 7);
    const matrix_d h = hessian_of(x);
    const matrix_d s = h / 2.0;
    const matrix_f w = random_weights(32, 128, 8);
    // RTN-3 per row, RTN-4 per group of 32, MXFP4.
    {
        const lowbit::rtn_quantizer q{3};
        const double plain = output_error(w, lowbit::quantize_rtn(w, q).dequantize(), s);
        const double g = output_error(w, lowbit::gptq_quantize(w, h, q).weights, s);
        MESSAGE("RTN-3 per row: plain " << plain << ", GPTQ " << g);
        CHECK(g < 0.7 * plain);
    }
    {
        const lowbit::rtn_quantizer q{4};
        const double plain = output_error(w, lowbit::quantize_rtn(w, q, lowbit::per_group{32}).dequantize(), s);
        lowbit::gptq_options opt;
        opt.act_order = true;
        const double g = output_error(w, lowbit::gptq_quantize(w, h, q, lowbit::per_group{32}, opt).weights, s);
        MESSAGE("RTN-4 g32: plain " << plain << ", GPTQ act-order " << g);
        CHECK(g < 0.7 * plain);
    }
    {
        const double plain = output_error(w, lowbit::mx_fake_quantize<lowbit::mxfp4>(w), s);
        const double g = output_error(
            w, lowbit::gptq_quantize(w, h, lowbit::mx_group_quantizer<lowbit::mxfp4>{}, lowbit::per_group{32}).weights, s);
        MESSAGE("MXFP4: plain " << plain << ", GPTQ " << g);
        CHECK(g < 0.7 * plain);
    }
}

TEST_CASE("S = I: GPTQ equals plain rounding exactly") {
    const matrix_f w = random_weights(10, 64, 9);
    const matrix_d h = matrix_d::Identity(64, 64);
    for (bool act : {false, true}) {
        lowbit::gptq_options opt;
        opt.act_order = act;
        const lowbit::rtn_quantizer q{4};
        CHECK(lowbit::gptq_quantize(w, h, q, lowbit::per_row{}, opt).weights == lowbit::quantize_rtn(w, q).dequantize());
        CHECK(lowbit::gptq_quantize(w, h, q, lowbit::per_group{16}, opt).weights ==
              lowbit::quantize_rtn(w, q, lowbit::per_group{16}).dequantize());
        CHECK(lowbit::gptq_quantize(w, h, lowbit::mx_group_quantizer<lowbit::mxfp4>{}, lowbit::per_group{32}, opt).weights ==
              lowbit::mx_fake_quantize<lowbit::mxfp4>(w));
    }
}

TEST_CASE("damping retry on a singular Hessian; failures throw") {
    // X rows (1,1), (2,2): H = (2/2)·[[5,5],[5,5]] exactly, so the second pivot is exactly 0.
    matrix_f x(2, 2);
    x << 1, 1, 2, 2;
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(3, 2, 10);
    lowbit::gptq_options opt;
    opt.damp = 0.0;
    const auto r = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4}, lowbit::per_row{}, opt);
    CHECK(r.damp_retries == 1);
    CHECK(r.damp == 0.01);
    CHECK(r.weights.allFinite());
    opt.max_damp_retries = 0;
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4}, lowbit::per_row{}, opt), lowbit::numeric_error);
    const matrix_d neg = -matrix_d::Identity(2, 2);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, neg, lowbit::rtn_quantizer{4}), lowbit::numeric_error);
}

TEST_CASE("dead columns are zeroed and quantized as zeros") {
    matrix_f x = correlated_inputs(200, 16, 11);
    x.col(5).setZero();
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(8, 16, 12);
    const auto r = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4});
    CHECK(r.weights.allFinite());
    const auto ref = reference_gptq(w, h, lowbit::rtn_quantizer{4}, 16, lowbit::tail_policy::error, 0.01, false);
    CHECK((r.weights - ref).cwiseAbs().maxCoeff() <= 1e-4f);
    // Asymmetric RTN represents 0 exactly (integer zero point).
    CHECK(r.weights.col(5).cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("act order: diag-descending order and invariance under input-channel permutation") {
    const matrix_f x = correlated_inputs(300, 40, 13);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(12, 40, 14);
    lowbit::gptq_options opt;
    opt.act_order = true;
    const lowbit::rtn_quantizer q{3};
    const auto r = lowbit::gptq_quantize(w, h, q, lowbit::per_group{8}, opt);
    for (std::size_t p = 1; p < r.order.size(); ++p) CHECK(h(r.order[p - 1], r.order[p - 1]) >= h(r.order[p], r.order[p]));
    // Permute the input channels of W and H consistently: the result is the same, permuted.
    std::vector<Eigen::Index> perm(40);
    std::iota(perm.begin(), perm.end(), Eigen::Index{0});
    std::mt19937_64 rng(15);
    std::shuffle(perm.begin(), perm.end(), rng);
    matrix_f wp(12, 40);
    matrix_d hp(40, 40);
    for (Eigen::Index j = 0; j < 40; ++j) {
        wp.col(j) = w.col(perm[static_cast<std::size_t>(j)]);
        for (Eigen::Index i = 0; i < 40; ++i) hp(i, j) = h(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
    }
    const auto rp = lowbit::gptq_quantize(wp, hp, q, lowbit::per_group{8}, opt);
    double maxdiff = 0;
    for (Eigen::Index j = 0; j < 40; ++j)
        maxdiff = std::max(maxdiff, static_cast<double>((rp.weights.col(j) - r.weights.col(perm[static_cast<std::size_t>(j)])).cwiseAbs().maxCoeff()));
    CHECK(maxdiff <= 1e-4);
    CHECK(rp.loss == doctest::Approx(r.loss).epsilon(1e-9));
    // Without act order the result depends on the column order in general (the property is not vacuous).
    const auto r0 = lowbit::gptq_quantize(w, h, q, lowbit::per_group{8});
    const auto rp0 = lowbit::gptq_quantize(wp, hp, q, lowbit::per_group{8});
    CHECK(std::fabs(r0.loss - rp0.loss) > 1e-6 * r0.loss);
}

TEST_CASE("gram_fit: each group's E2M-ATQ stage 2 uses the group's H/2 (unblocked reference), act order and tails") {
    const matrix_f x = correlated_inputs(400, 36, 81);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(10, 36, 82);
    const lowbit::e2m_atq_quantizer q{};
    for (bool act_order : {false, true}) {
        CAPTURE(act_order);
        lowbit::gptq_options opt;
        opt.act_order = act_order;
        opt.block_size = 8;
        opt.gram_fit = true;
        const auto r = lowbit::gptq_quantize(w, h, q, lowbit::per_row{}, opt);
        const matrix_f ref = reference_gptq(w, h, q, 36, lowbit::tail_policy::smaller_last, opt.damp, act_order, nullptr, true);
        CHECK((r.weights - ref).cwiseAbs().maxCoeff() <= 1e-4f);
        const auto rg = lowbit::gptq_quantize(w, h, q, lowbit::per_group{10, lowbit::tail_policy::zero_pad}, opt);
        const matrix_f refg = reference_gptq(w, h, q, 10, lowbit::tail_policy::zero_pad, opt.damp, act_order, nullptr, true);
        CHECK((rg.weights - refg).cwiseAbs().maxCoeff() <= 1e-4f);
        // the Gram changes the fit (the option is not ignored)
        opt.gram_fit = false;
        const auto r0 = lowbit::gptq_quantize(w, h, q, lowbit::per_row{}, opt);
        CHECK((r0.weights - r.weights).cwiseAbs().maxCoeff() > 1e-3f);
    }
    lowbit::gptq_options bad;
    bad.gram_fit = true;
    CHECK_THROWS_WITH_AS((void)lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4}, lowbit::per_row{}, bad),
                         doctest::Contains("fit_with_gram"), lowbit::invalid_argument);
}

TEST_CASE("gptq_quantize: bad input") {
    const matrix_f w = random_weights(4, 8, 16);
    const matrix_d h = matrix_d::Identity(8, 8);
    const lowbit::rtn_quantizer q{4};
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, matrix_d::Identity(7, 7), q), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, matrix_d::Identity(8, 7), q), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(matrix_f(0, 8), h, q), lowbit::shape_error);
    matrix_f wn = w;
    wn(1, 2) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(wn, h, q), lowbit::numeric_error);
    matrix_d hn = h;
    hn(3, 3) = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, hn, q), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, q, lowbit::per_group{3}), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, q, lowbit::per_group{0}), lowbit::invalid_argument);
    lowbit::gptq_options opt;
    opt.block_size = 0;
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, q, lowbit::per_row{}, opt), lowbit::invalid_argument);
    opt = {};
    opt.damp = -1;
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, q, lowbit::per_row{}, opt), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{9}), lowbit::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// TRA-GPTQ
// ---------------------------------------------------------------------------------------------

namespace {

// Independent greedy residual ternary on one masked row (docs/sources.md §2.3 steps 1–3, repeated).
double greedy_sse(const matrix_f& v, const lowbit::group_mask& mask, int terms) {
    double sse = 0;
    for (Eigen::Index i = 0; i < v.rows(); ++i) {
        std::vector<double> resid, orig;
        for (Eigen::Index j = 0; j < v.cols(); ++j)
            if (mask(i, j)) orig.push_back(v(i, j));
        if (orig.empty()) continue;
        resid = orig;
        for (int t = 0; t < terms; ++t) {
            double mu = 0;
            for (double r : resid) mu += r;
            mu /= static_cast<double>(resid.size());
            double ma = 0;
            for (double r : resid) ma += std::fabs(r - mu);
            const double delta = 0.75 * ma / static_cast<double>(resid.size());
            double tc = 0, tt = 0;
            std::vector<int> tv(resid.size());
            for (std::size_t k = 0; k < resid.size(); ++k) {
                const double c = resid[k] - mu;
                tv[k] = c > delta ? 1 : c < -delta ? -1 : 0;
                tc += tv[k] * c;
                tt += std::abs(tv[k]);
            }
            const double alpha = tc / (tt + 1e-8);
            for (std::size_t k = 0; k < resid.size(); ++k) resid[k] -= mu + alpha * tv[k];
        }
        for (double r : resid) sse += r * r;
    }
    return sse;
}

} // namespace

TEST_CASE("TRA-GPTQ: lower output error than plain E2M-ATQ and absmean on correlated inputs") {
    const matrix_f x = correlated_inputs(512, 256, 21);
    const matrix_d h = hessian_of(x);
    const matrix_d s = h / 2.0;
    const matrix_f w = random_weights(32, 256, 22);
    const auto r = lowbit::tra_gptq_quantize(w, h);
    const double tra = output_error(w, r.weights, s);
    const double atq = output_error(w, lowbit::quantize_e2m_atq(w).dequantize(), s);
    const double atq_s = output_error(w, lowbit::quantize_e2m_atq(w, lowbit::e2m_atq{}, lowbit::per_group{128}, s).dequantize(), s);
    const double am = output_error(w, lowbit::quantize_ternary(w, lowbit::absmean{}).dequantize(), s);
    MESSAGE("tr(dS d^T): TRA-GPTQ " << tra << ", E2M-ATQ per row " << atq << ", E2M-ATQ g128 with S " << atq_s
                                    << ", absmean " << am);
    CHECK(tra < 0.8 * atq);
    CHECK(tra < 0.8 * atq_s);
    CHECK(tra < 0.8 * am);
    CHECK(r.blocks.size() == 2);
    matrix_d hd = h;
    hd.diagonal().array() += r.damp * h.diagonal().mean();
    CHECK(r.damp == 0.1);
    CHECK(r.loss == doctest::Approx(output_error(w, r.weights, hd)).epsilon(1e-8));
}

TEST_CASE("TRA-GPTQ: partition, salient search against a brute-force oracle, kept codes") {
    const matrix_f x = correlated_inputs(256, 64, 23);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(16, 64, 24);
    lowbit::tra_gptq_options opt;
    opt.gptq.block_size = 32;
    opt.salient_candidates = 12;
    opt.quantile_steps = 9;
    opt.keep_codes = true;
    const auto r = lowbit::tra_gptq_quantize(w, h, opt);
    REQUIRE(r.blocks.size() == 2);
    for (const auto& b : r.blocks) {
        REQUIRE(b.fits.size() == 4);
        // The four masks partition the block.
        for (Eigen::Index i = 0; i < w.rows(); ++i)
            for (Eigen::Index j = 0; j < b.width; ++j) {
                int cnt = 0;
                for (const auto& f : b.fits) cnt += f.mask(i, j) ? 1 : 0;
                CHECK(cnt == 1);
            }
        // Salient columns hold exactly the first two masks; orders 2, 2, 1, 1.
        CHECK(b.fits[0].order == 2);
        CHECK(b.fits[1].order == 2);
        CHECK(b.fits[2].order == 1);
        CHECK(b.fits[3].order == 1);
        CHECK(!b.salient.empty());
        CHECK(static_cast<Eigen::Index>(b.salient.size()) <= opt.salient_candidates - 1);
        for (Eigen::Index c : b.salient) CHECK((b.fits[0].mask.col(c).array() || b.fits[1].mask.col(c).array()).all());
        // The weights of the block are the sum of the four fits (q fixed at block start).
        matrix_f sum = matrix_f::Zero(w.rows(), b.width);
        for (const auto& f : b.fits) sum += f.dequantize();
        CHECK((sum - r.weights.middleCols(b.begin, b.width)).cwiseAbs().maxCoeff() == 0.0f);
    }
    // Block 0 sees the original weights: rebuild Ω and check the salient search by brute force.
    const matrix_f omega = lowbit_test::first_block_omega(w, h, 0.1, 32);
    const std::vector<Eigen::Index> cols = lowbit_test::columns_by_score(omega);
    double best = std::numeric_limits<double>::infinity(), chosen = 0;
    const std::size_t k_chosen = r.blocks[0].salient.size();
    for (std::size_t k = 1; k <= 11; ++k) {
        lowbit::group_mask sal = lowbit::group_mask::Constant(16, 32, false);
        for (std::size_t c = 0; c < k; ++c) sal.col(cols[c]).setConstant(true);
        const lowbit::group_mask rest = !sal.array();
        const double e = greedy_sse(omega, sal, 2) + greedy_sse(omega, rest, 2);
        best = std::min(best, e);
        if (k == k_chosen) chosen = e;
        if (k == k_chosen) {
            std::vector<Eigen::Index> top(cols.begin(), cols.begin() + static_cast<std::ptrdiff_t>(k));
            CHECK(top == r.blocks[0].salient);
        }
    }
    CHECK(chosen <= best * (1 + 1e-5));
}

TEST_CASE("TRA-GPTQ: bad input") {
    const matrix_f w = random_weights(4, 8, 25);
    const matrix_d h = matrix_d::Identity(8, 8);
    CHECK_THROWS_AS((void)lowbit::tra_gptq_quantize(w, matrix_d::Identity(6, 6)), lowbit::shape_error);
    lowbit::tra_gptq_options opt;
    opt.salient_candidates = 0;
    CHECK_THROWS_AS((void)lowbit::tra_gptq_quantize(w, h, opt), lowbit::invalid_argument);
    opt = {};
    opt.quantile_steps = 0;
    CHECK_THROWS_AS((void)lowbit::tra_gptq_quantize(w, h, opt), lowbit::invalid_argument);
    matrix_f wn = w;
    wn(0, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS((void)lowbit::tra_gptq_quantize(wn, h), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::tra_gptq_quantize(matrix_f(0, 8), h), lowbit::shape_error);
    // Tiny blocks (1 column) are handled: no salient candidates beyond k = 0.
    opt = {};
    opt.gptq.block_size = 1;
    const auto r = lowbit::tra_gptq_quantize(w, h, opt);
    CHECK(r.weights.allFinite());
}

TEST_CASE("pack_gptq: packed codes dequantize to the GPTQ result and run in the kernels") {
    const matrix_f x = correlated_inputs(256, 300, 71);
    const matrix_f w = random_weights(12, 300, 72);
    const matrix_d h = hessian_of(x);
    const auto close = [](const matrix_f& a, const matrix_f& b) {
        return ((a - b).cwiseAbs().array() <= 1e-5f * (1.0f + b.cwiseAbs().array())).all();
    };
    const lowbit::vector_f xin = x.row(0).transpose();
    SUBCASE("int4 from rtn_quantizer{4, symmetric}") {
        const auto res = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4, lowbit::int_mode::symmetric});
        const auto pw = lowbit::pack_gptq<lowbit::int4>(res);
        CHECK(close(pw.dequantize(), res.weights));
        const lowbit::vector_f y = lowbit::gemv(pw, xin, lowbit::act_fp32{});
        const lowbit::vector_f want = res.weights * xin;
        CHECK((y - want).cwiseAbs().maxCoeff() <= 1e-3f * (1.0f + want.cwiseAbs().maxCoeff()));
    }
    SUBCASE("int4 from asymmetric rtn") {
        const auto res = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4, lowbit::int_mode::asymmetric});
        CHECK(close(lowbit::pack_gptq<lowbit::int4>(res).dequantize(), res.weights));
    }
    SUBCASE("ternary2 and ternary_base3 from E2M-ATQ") {
        const auto res = lowbit::gptq_quantize(w, h, lowbit::e2m_atq_quantizer{});
        CHECK(close(lowbit::pack_gptq<lowbit::ternary2>(res).dequantize(), res.weights));
        CHECK(close(lowbit::pack_gptq<lowbit::ternary_base3>(res).dequantize(), res.weights));
    }
    SUBCASE("binary1 from binary_quantizer") {
        const auto res = lowbit::gptq_quantize(w, h, lowbit::binary_quantizer<lowbit::arb>{});
        CHECK(close(lowbit::pack_gptq<lowbit::binary1>(res).dequantize(), res.weights));
    }
    SUBCASE("a wrong format or a grouped result is refused") {
        const auto res = lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{4, lowbit::int_mode::symmetric});
        CHECK_THROWS_AS((void)lowbit::pack_gptq<lowbit::ternary2>(res), lowbit::invalid_argument);
        const auto grouped = lowbit::gptq_quantize(w, h, lowbit::e2m_atq_quantizer{}, lowbit::per_group{100});
        CHECK_THROWS_WITH_AS((void)lowbit::pack_gptq<lowbit::ternary2>(grouped),
                             doctest::Contains("per_row"), lowbit::invalid_argument);
    }
}

TEST_CASE("pack_gptq_grouped_int4: the packed codes are the static groups' grid indices, kernels run it") {
    const Eigen::Index m = 7, n = 384; // 3 groups of 128
    const matrix_f x = correlated_inputs(600, n, 31);
    const matrix_d h = hessian_of(x);
    const matrix_f w = random_weights(m, n, 32);
    lowbit::gptq_options opt;
    opt.act_order = true;
    opt.static_groups = true;
    const lowbit::rtn_quantizer q{4, lowbit::int_mode::asymmetric};
    const auto r = lowbit::gptq_quantize(w, h, q, lowbit::per_group{128}, opt);
    const auto pw = lowbit::pack_gptq_grouped_int4(r, 128);
    REQUIRE(pw.groups() == 3);
    const lowbit::matrix_i8 t = pw.codes().codes();
    for (Eigen::Index i = 0; i < m; ++i)
        for (Eigen::Index j = 0; j < n; ++j) {
            const auto& p = r.params[static_cast<std::size_t>(j / 128)];
            // oracle: the value of code t + 8 on the group's grid s·(c − z) is the GPTQ weight
            CHECK(p.scale(i) * (static_cast<float>(t(i, j) + 8) - p.zero(i)) == doctest::Approx(r.weights(i, j)).epsilon(1e-6));
            CHECK(pw.scale()(i, j / 128) == static_cast<float>(Eigen::half(p.scale(i))));
        }
    // dequantized within the fp16 rounding of α and μ
    const matrix_f d = pw.dequantize();
    for (Eigen::Index i = 0; i < m; ++i)
        for (Eigen::Index j = 0; j < n; ++j) {
            const auto& p = r.params[static_cast<std::size_t>(j / 128)];
            const double bound = std::ldexp(1.0, -11) * (8.0 * std::fabs(p.scale(i)) + std::fabs(p.scale(i) * (8.0 - p.zero(i)))) + 1e-6;
            CHECK(std::fabs(double(d(i, j)) - double(r.weights(i, j))) <= bound);
        }
    // the integer kernels: y ≈ x·dequantized (int8 activations: within s/2 per activation)
    const matrix_f xv = x.topRows(2);
    const matrix_f y = lowbit::gemm(pw, xv, lowbit::act_int{8});
    const matrix_f yf = xv * d.transpose();
    CHECK((y - yf).cwiseAbs().maxCoeff() <= 0.02f * yf.cwiseAbs().maxCoeff());
    // refused: dynamic groups, groups of 64, a 5-bit run (codes beyond 15), a G that is not the run's
    lowbit::gptq_options dyn = opt;
    dyn.static_groups = false;
    CHECK_THROWS_AS((void)lowbit::pack_gptq_grouped_int4(lowbit::gptq_quantize(w, h, q, lowbit::per_group{128}, dyn), 128),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack_gptq_grouped_int4(lowbit::gptq_quantize(w, h, q, lowbit::per_group{64}, opt), 64),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack_gptq_grouped_int4(lowbit::gptq_quantize(w, h, lowbit::rtn_quantizer{5}, lowbit::per_group{128}, opt), 128),
                    lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::pack_gptq_grouped_int4(r, 256), lowbit::invalid_argument);
}
