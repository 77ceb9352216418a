// Tests for lowbit/pcdvq.hpp. Oracles: the E8 theta series (240, 2160, 6720, 17520 points in the
// shells of squared norm 2, 4, 6, 8) and the 60° minimum angle of the E8 roots; brute-force pairwise
// angles of the greedy code; Max's (1960) Lloyd–Max table for the Gaussian (the half-normal is χ₁);
// scalar brute-force max-cosine / nearest-magnitude searches for encode. On stories260K (PCDVQ vs
// k-means at equal total bits): reconstructions decoded by hand from the codes and the tables, errors
// in double against the original weights, every stored bit counted in the test, the Hadamard rotation
// checked orthogonal, and Shannon's Gaussian rate–distortion bound as a floor on synthetic data.
#include <lowbit/hadamard.hpp>
#include <lowbit/io/llama2c.hpp>
#include <lowbit/orthogonal.hpp>
#include <lowbit/pcdvq.hpp>
#include <lowbit/vq.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"
#include "models.hpp"

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

namespace {

using lowbit_test::gaussian;

double min_pairwise_angle(const lowbit::matrix_f& d) {
    double maxcos = -1;
    for (Eigen::Index i = 0; i < d.rows(); ++i)
        for (Eigen::Index j = i + 1; j < d.rows(); ++j)
            maxcos = std::max(maxcos, d.row(i).cast<double>().dot(d.row(j).cast<double>()));
    return std::acos(std::min(1.0, maxcos));
}

float fp16(float x) { return static_cast<float>(Eigen::half(x)); }

// Bits of a k-means code of nv d-vectors with a K-entry FP16 codebook (indices + codebook).
double kmeans_bits(double nv, int d, Eigen::Index k) { return nv * std::log2(static_cast<double>(k)) + 16.0 * d * static_cast<double>(k); }

// The largest power of two K ≤ nv whose indices + FP16 codebook fit `budget` bits.
Eigen::Index largest_k(double nv, int d, double budget) {
    Eigen::Index k = 1;
    while (2 * k <= static_cast<Eigen::Index>(nv) && kmeans_bits(nv, d, 2 * k) <= budget) k *= 2;
    return k;
}

// PCDVQ pipeline of docs/sources.md §8.2 on one weight: W·Q (randomized Hadamard), FP16 row scales,
// codes; the reconstruction is rebuilt here from the codes and the tables (s·r̂·ĉ), then rotated
// back with Qᵀ. Returns ‖W − Ŵ‖² in double.
double pcdvq_sq_error(const lowbit::matrix_f& w, const lowbit::pcdvq_codebook& book, std::uint64_t seed) {
    lowbit::hadamard_options o;
    o.randomized = true;
    o.seed = seed;
    const lowbit::matrix_d q = lowbit::hadamard_transform(w.cols(), o).matrix();
    REQUIRE(lowbit::orthogonality_error(q) < 1e-9);
    const lowbit::matrix_f rot = (w.cast<double>() * q).cast<float>();
    const auto codes = lowbit::pcdvq_encode(rot, book);
    Eigen::MatrixXd hat(w.rows(), w.cols());
    const Eigen::Index per = w.cols() / 8;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index c = 0; c < per; ++c) {
            const auto v = static_cast<std::size_t>(i * per + c);
            const double r = static_cast<double>(fp16(codes.row_scale(i))) * book.magnitudes(codes.magnitude[v]);
            for (Eigen::Index j = 0; j < 8; ++j) hat(i, c * 8 + j) = r * book.directions(codes.direction[v], j);
        }
    return (w.cast<double>() - hat * q.transpose()).squaredNorm();
}

// Unit-RMS rows with FP16 scales s_i = fp16(‖w_i‖/√n).
lowbit::matrix_f unit_rows(const lowbit::matrix_f& w, std::vector<float>& scale) {
    lowbit::matrix_f u = w;
    scale.assign(static_cast<std::size_t>(w.rows()), 0.0f);
    for (Eigen::Index i = 0; i < w.rows(); ++i) {
        scale[static_cast<std::size_t>(i)] = fp16(w.row(i).norm() / std::sqrt(static_cast<float>(w.cols())));
        if (scale[static_cast<std::size_t>(i)] > 0) u.row(i) /= scale[static_cast<std::size_t>(i)];
    }
    return u;
}

// ‖W − Ŵ‖² of a k-means code of the unit-RMS rows cut into d-vectors (vector v = row·(n/d) + chunk),
// decoded here from the codes and the FP16-rounded centroids.
double kmeans_sq_error(const lowbit::matrix_f& w, const std::vector<float>& scale, int d, const lowbit::matrix_f& centroids,
                       const std::uint32_t* codes) {
    const Eigen::Index per = w.cols() / d;
    double se = 0;
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index c = 0; c < per; ++c)
            for (Eigen::Index j = 0; j < d; ++j) {
                const double hat = static_cast<double>(scale[static_cast<std::size_t>(i)]) *
                                   fp16(centroids(codes[i * per + c], j));
                const double e = static_cast<double>(w(i, c * d + j)) - hat;
                se += e * e;
            }
    return se;
}

// Model-wide comparison on the 30 stories260K linears whose width is a multiple of 8 (w2 is 172
// wide): PCDVQ with b_d = bits − 1, b_r = 1 against k-means (d = 8, 4, 2) with one codebook per tensor
// and with one model-wide codebook (counted once), each k-means K the largest power of two whose
// indices + codebook fit PCDVQ's index + Hadamard-sign bits. Relative errors and total bits per weight.
struct vq_comparison {
    double pcdvq = 0, pcdvq_bits = 0;
    double per_tensor[3] = {}, per_tensor_bits[3] = {};
    double model_wide[3] = {}, model_wide_bits[3] = {};
};

vq_comparison compare_on_stories260k(int bits) {
    constexpr int dims[3] = {8, 4, 2};
    auto ck = lowbit::io::read_llama2c(lowbit_test::stories260k("stories260K.bin"));
    std::vector<const lowbit::matrix_f*> ws;
    for (const auto& l : lowbit::io::linear_weights(ck))
        if (l.weight->cols() % 8 == 0) ws.push_back(l.weight);
    REQUIRE(ws.size() == 30);
    const auto book = lowbit::make_pcdvq_codebook({bits - 1, 1, 16, 100}); // E8 ball of §8.2 (norm ≤ 4)
    vq_comparison r;
    double ss = 0, weights = 0, scale_bits = 0, budget_all = 0;
    double se_t[3] = {}, se_m[3] = {};
    std::vector<std::vector<float>> scales(ws.size());
    std::vector<lowbit::matrix_f> units(ws.size());
    for (std::size_t t = 0; t < ws.size(); ++t) {
        const lowbit::matrix_f& w = *ws[t];
        const double nv8 = static_cast<double>(w.size()) / 8, m = static_cast<double>(w.rows()), n = static_cast<double>(w.cols());
        ss += w.cast<double>().squaredNorm();
        weights += static_cast<double>(w.size());
        r.pcdvq += pcdvq_sq_error(w, book, 1000 + t);
        const double budget = nv8 * bits + n; // PCDVQ's indices + Hadamard signs (scales are shared)
        r.pcdvq_bits += budget + 16 * m;
        budget_all += budget;
        scale_bits += 16 * m;
        units[t] = unit_rows(w, scales[t]);
        for (int k = 0; k < 3; ++k) {
            const double nv = static_cast<double>(w.size()) / dims[k];
            const Eigen::Index kt = largest_k(nv, dims[k], budget);
            const auto km = lowbit::weighted_kmeans(lowbit::to_vectors(units[t], dims[k]), lowbit::matrix_f(), {kt, 30, 1});
            se_t[k] += kmeans_sq_error(w, scales[t], dims[k], km.centroids, km.codes.data());
            r.per_tensor_bits[k] += kmeans_bits(nv, dims[k], kt) + 16 * m;
            CHECK(kmeans_bits(nv, dims[k], kt) <= budget); // never more storage than PCDVQ, tensor by tensor
        }
    }
    for (int k = 0; k < 3; ++k) {
        const double nv = weights / dims[k];
        const Eigen::Index km_k = largest_k(nv, dims[k], budget_all);
        lowbit::matrix_f all(static_cast<Eigen::Index>(nv), dims[k]);
        Eigen::Index at = 0;
        for (const auto& u : units) {
            const auto v = lowbit::to_vectors(u, dims[k]);
            all.middleRows(at, v.rows()) = v;
            at += v.rows();
        }
        const auto km = lowbit::weighted_kmeans(all, lowbit::matrix_f(), {km_k, 20, 1});
        std::size_t off = 0;
        for (std::size_t t = 0; t < ws.size(); ++t) {
            se_m[k] += kmeans_sq_error(*ws[t], scales[t], dims[k], km.centroids, km.codes.data() + off);
            off += static_cast<std::size_t>(ws[t]->size() / dims[k]);
        }
        r.model_wide_bits[k] = kmeans_bits(nv, dims[k], km_k) + scale_bits;
    }
    r.pcdvq = std::sqrt(r.pcdvq / ss);
    r.pcdvq_bits /= weights;
    for (int k = 0; k < 3; ++k) {
        r.per_tensor[k] = std::sqrt(se_t[k] / ss);
        r.model_wide[k] = std::sqrt(se_m[k] / ss);
        r.per_tensor_bits[k] /= weights;
        r.model_wide_bits[k] /= weights;
        CHECK(r.per_tensor_bits[k] <= r.pcdvq_bits);
        CHECK(r.model_wide_bits[k] <= r.pcdvq_bits);
    }
    MESSAGE("index bits " << bits << ": PCDVQ " << r.pcdvq << " at " << r.pcdvq_bits << " b/w; k-means per tensor d=8,4,2: "
                          << r.per_tensor[0] << ", " << r.per_tensor[1] << ", " << r.per_tensor[2]
                          << "; model-wide d=8,4,2: " << r.model_wide[0] << ", " << r.model_wide[1] << ", " << r.model_wide[2]);
    return r;
}

} // namespace

TEST_CASE("E8 directions follow the theta series and the roots are 60 degrees apart") {
    const auto roots = lowbit::e8_directions(2);
    CHECK(roots.rows() == 240);
    CHECK(lowbit::e8_directions(4).rows() == 240 + 2160);
    CHECK(lowbit::e8_directions(6).rows() == 240 + 2160 + 6720);
    // Shell 8 holds 17520 points, 240 of which are 2·(root): same directions.
    CHECK(lowbit::e8_directions(8).rows() == 240 + 2160 + 6720 + 17520 - 240);
    for (Eigen::Index i = 0; i < roots.rows(); ++i) CHECK(roots.row(i).norm() == doctest::Approx(1.0).epsilon(1e-6));
    // Inner products of unit roots lie in {±1, ±1/2, 0}.
    for (Eigen::Index i = 0; i < roots.rows(); i += 7)
        for (Eigen::Index j = 0; j < roots.rows(); ++j) {
            const double c = roots.row(i).cast<double>().dot(roots.row(j).cast<double>());
            const double r2 = std::round(2 * c);
            CHECK(std::fabs(2 * c - r2) < 1e-6);
        }
    CHECK(min_pairwise_angle(roots) == doctest::Approx(std::numbers::pi / 3).epsilon(1e-6));
}

TEST_CASE("greedy spherical code: stated size and minimum angle") {
    const auto cand = lowbit::e8_directions(6);
    for (Eigen::Index count : {2, 16, 64, 256}) {
        const auto code = lowbit::greedy_spherical_code(cand, count);
        CHECK(code.directions.rows() == count);
        CHECK(code.min_angle == doctest::Approx(min_pairwise_angle(code.directions)).epsilon(1e-9));
        for (Eigen::Index i = 0; i < count; ++i) CHECK(code.directions.row(i).norm() == doctest::Approx(1.0).epsilon(1e-6));
    }
    // Every pick is a farthest point: its largest cosine to the rows selected before it is the
    // smallest among all candidates not selected yet (brute force over the candidate set).
    {
        const auto small = lowbit::e8_directions(4);
        const auto code = lowbit::greedy_spherical_code(small, 64);
        const Eigen::MatrixXd sel = code.directions.cast<double>(), all = small.cast<double>();
        for (Eigen::Index s = 1; s < 64; ++s) {
            const Eigen::MatrixXd prev = sel.topRows(s);
            const double picked = (prev * sel.row(s).transpose()).maxCoeff();
            double best = 3;
            for (Eigen::Index i = 0; i < all.rows(); ++i) {
                const Eigen::VectorXd c = prev * all.row(i).transpose();
                if (c.maxCoeff() > 1 - 1e-9) continue; // already selected
                best = std::min(best, c.maxCoeff());
            }
            CHECK(picked <= best + 1e-12);
        }
    }
    // The first two picks are antipodal; 16 picks from the E8 directions are pairwise ≥ 60° apart.
    CHECK(lowbit::greedy_spherical_code(cand, 2).min_angle == doctest::Approx(std::numbers::pi));
    CHECK(lowbit::greedy_spherical_code(cand, 16).min_angle >= std::numbers::pi / 3 - 1e-9);
    // Selecting all 240 roots from the roots: the 60° root spacing.
    CHECK(lowbit::greedy_spherical_code(lowbit::e8_directions(2), 240).min_angle == doctest::Approx(std::numbers::pi / 3));
    CHECK_THROWS_AS((void)lowbit::greedy_spherical_code(cand, 0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::greedy_spherical_code(cand, cand.rows() + 1), lowbit::invalid_argument);
}

TEST_CASE("chi Lloyd-Max matches Max's Gaussian table for one degree of freedom") {
    // Max (1960): optimum 4-level Gaussian quantizer outputs ±0.4528, ±1.510; 8-level ±0.2451,
    // ±0.7560, ±1.344, ±2.152. The half-normal (χ₁) optimum is the positive half.
    const auto q2 = lowbit::chi_lloyd_max(2, 1, 300);
    CHECK(q2(0) == doctest::Approx(0.4528).epsilon(2e-3));
    CHECK(q2(1) == doctest::Approx(1.510).epsilon(2e-3));
    const auto q4 = lowbit::chi_lloyd_max(4, 1, 500);
    const double want[4] = {0.2451, 0.7560, 1.344, 2.152};
    for (int k = 0; k < 4; ++k) CHECK(q4(k) == doctest::Approx(want[k]).epsilon(2e-3));
    // χ₈: ascending, inside the bulk of the distribution (mean ≈ 2.74).
    const auto q8 = lowbit::chi_lloyd_max(4, 8);
    for (int k = 1; k < 4; ++k) CHECK(q8(k) > q8(k - 1));
    CHECK(q8(0) > 1.0);
    CHECK(q8(3) < 5.0);
    CHECK_THROWS_AS((void)lowbit::chi_lloyd_max(0, 8), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::chi_lloyd_max(4, 0), lowbit::invalid_argument);
}

TEST_CASE("pcdvq encode/decode: max-cosine directions, nearest magnitudes, unit-norm directions") {
    const auto book = lowbit::make_pcdvq_codebook({8, 2, 6, 100});
    CHECK(book.directions.rows() == 256);
    CHECK(book.magnitudes.size() == 4);
    CHECK(book.min_angle == doctest::Approx(min_pairwise_angle(book.directions)).epsilon(1e-9));
    lowbit::matrix_f w = gaussian(6, 32, 7);
    w.row(2).setZero();
    const auto codes = lowbit::pcdvq_encode(w, book);
    const auto dec = lowbit::pcdvq_decode(codes, book);
    CHECK(codes.row_scale(2) == 0.0f);
    CHECK(dec.row(2).isZero());
    for (Eigen::Index i = 0; i < 6; ++i) {
        const double s = w.row(i).cast<double>().norm() / std::sqrt(32.0);
        CHECK(codes.row_scale(i) == doctest::Approx(s).epsilon(1e-6));
        if (s == 0) continue;
        for (Eigen::Index c = 0; c < 4; ++c) {
            const auto v = static_cast<std::size_t>(i * 4 + c);
            const Eigen::VectorXd x = w.row(i).segment(c * 8, 8).cast<double>().transpose() / s;
            const Eigen::VectorXd u = x.normalized();
            double best = -2;
            for (Eigen::Index k = 0; k < 256; ++k) best = std::max(best, book.directions.row(k).cast<double>().dot(u));
            CHECK(book.directions.row(codes.direction[v]).cast<double>().dot(u) >= best - 1e-9);
            const double r = x.norm();
            for (Eigen::Index k = 0; k < 4; ++k)
                CHECK(std::fabs(r - book.magnitudes(codes.magnitude[v])) <= std::fabs(r - book.magnitudes(k)) + 1e-9);
            // Decoded vector = s·r̂·(unit direction).
            const Eigen::VectorXd d = dec.row(i).segment(c * 8, 8).cast<double>().transpose();
            const double rhat = book.magnitudes(codes.magnitude[v]) * codes.row_scale(i);
            CHECK(d.norm() == doctest::Approx(rhat).epsilon(1e-5));
            CHECK((d / rhat).norm() == doctest::Approx(1.0).epsilon(1e-5));
        }
    }
    // Decoding is reproducible.
    CHECK(lowbit::pcdvq_decode(codes, book) == dec);
}

TEST_CASE("pcdvq: more direction bits lower the direction error on Gaussian data") {
    const auto w = gaussian(64, 64, 9);
    double prev = 1e30;
    for (int bd : {4, 6, 8}) {
        const auto book = lowbit::make_pcdvq_codebook({bd, 2, 6, 100});
        const auto dec = lowbit::pcdvq_decode(lowbit::pcdvq_encode(w, book), book);
        const double err = (w - dec).cast<double>().squaredNorm() / w.cast<double>().squaredNorm();
        CHECK(err < prev);
        prev = err;
    }
}

TEST_CASE("pcdvq bad input") {
    const auto book = lowbit::make_pcdvq_codebook({4, 1, 2, 10});
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(gaussian(2, 12, 1), book), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(lowbit::matrix_f(0, 8), book), lowbit::shape_error);
    lowbit::matrix_f nan = gaussian(2, 8, 2);
    nan(1, 1) = INFINITY;
    CHECK_THROWS_AS((void)lowbit::pcdvq_encode(nan, book), lowbit::numeric_error);
    CHECK_THROWS_AS((void)lowbit::make_pcdvq_codebook({9, 2, 2, 10}), lowbit::invalid_argument); // 512 > 240 roots
    CHECK_THROWS_WITH((void)lowbit::make_pcdvq_codebook({9, 2, 2, 10}), doctest::Contains("fewer than 2^direction_bits"));
    CHECK_THROWS_AS((void)lowbit::make_pcdvq_codebook({0, 2, 2, 10}), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::e8_directions(1), lowbit::invalid_argument);
    auto codes = lowbit::pcdvq_encode(gaussian(2, 8, 3), book);
    codes.direction[0] = 60000;
    CHECK_THROWS_AS((void)lowbit::pcdvq_decode(codes, book), lowbit::invalid_argument);
    codes.direction.pop_back();
    CHECK_THROWS_AS((void)lowbit::pcdvq_decode(codes, book), lowbit::shape_error);
}

TEST_CASE("pcdvq never beats Shannon's Gaussian rate-distortion bound (bit-accounting sanity)") {
    // i.i.d. N(0, 1) weights: no code of R bits per weight reaches a relative MSE below 2^(−2R).
    // R counts everything PCDVQ stores (indices, FP16 row scales, Hadamard signs).
    const auto w = gaussian(64, 64, 21);
    for (int bits : {8, 12}) {
        const auto book = lowbit::make_pcdvq_codebook({bits - 1, 1, 8, 100});
        const double rel_mse = pcdvq_sq_error(w, book, 5) / w.cast<double>().squaredNorm();
        const double rate = (static_cast<double>(w.size()) / 8 * bits + 16.0 * 64 + 64) / static_cast<double>(w.size());
        CHECK(rel_mse > std::exp2(-2 * rate));
        CHECK(rel_mse < 1.0);
    }
}

TEST_CASE("stories260K: at equal total bits PCDVQ has lower weight error than k-means VQ with per-tensor codebooks") {
    // 1.26 and 1.76 total bits per weight (8 and 12 index bits per 8 weights + FP16 row scales + signs).
    for (int bits : {8, 12}) {
        const auto r = compare_on_stories260k(bits);
        for (int k = 0; k < 3; ++k) CHECK(r.pcdvq < r.per_tensor[k]);
        if (bits == 8) {
            // Not a win under every definition: a k-means codebook shared by the whole model (counted
            // once) has lower error at 1.26 b/w (docs/vq.md has the numbers).
            CHECK(r.model_wide[1] < r.pcdvq);
        } else {
            for (int k = 0; k < 3; ++k) CHECK(r.pcdvq < r.model_wide[k]);
        }
    }
}

TEST_CASE("stories260K: at 2.25 b/w PCDVQ beats every k-means VQ, model-wide codebooks included" * doctest::test_suite("long")) {
    const auto r = compare_on_stories260k(16);
    for (int k = 0; k < 3; ++k) {
        CHECK(r.pcdvq < r.per_tensor[k]);
        CHECK(r.pcdvq < r.model_wide[k]);
    }
}
