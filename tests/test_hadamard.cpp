// Tests for lowbit/hadamard.hpp. Oracles: the dense Sylvester matrix H_ij = (−1)^popcount(i&j) multiplied in
// double; the integer identity H Hᵀ = K·I for every generated sign matrix; a hand-worked table of which
// construction each LLM width gets (number theory worked on paper: 11008 = 43·2^8 and 343 = 7^3 ≡ 3 mod 4 ⇒
// Paley I of order 344, ...); a dense (A ⊗ H_P)/√n built element by element.
#include <lowbit/hadamard.hpp>

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

lowbit::matrix_f gaussian_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.0f, 1.0f);
    lowbit::matrix_f m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = g(rng);
    return m;
}

// Rows `idx` of the float transform's Q (apply to unit rows), Gram against the identity.
double sampled_row_orthogonality(const lowbit::hadamard_transform& t, int samples, unsigned seed) {
    const Eigen::Index n = t.dim();
    std::mt19937_64 rng(seed);
    std::vector<Eigen::Index> idx{0, n - 1};
    for (int s = 0; s < samples; ++s) idx.push_back(static_cast<Eigen::Index>(rng() % static_cast<std::uint64_t>(n)));
    std::sort(idx.begin(), idx.end());
    idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
    lowbit::matrix_f rows = lowbit::matrix_f::Zero(static_cast<Eigen::Index>(idx.size()), n);
    for (std::size_t k = 0; k < idx.size(); ++k) rows(static_cast<Eigen::Index>(k), idx[k]) = 1.0f;
    t.apply_rows(rows);
    const Eigen::MatrixXd r = rows.cast<double>();
    return (r * r.transpose() - Eigen::MatrixXd::Identity(r.rows(), r.rows())).cwiseAbs().maxCoeff();
}

} // namespace

TEST_CASE("FWHT equals the dense Sylvester product (float and double, every size to 4096)") {
    for (std::size_t n = 1; n <= 4096; n *= 2) {
        const auto x = gaussian_matrix(1, static_cast<Eigen::Index>(n), static_cast<unsigned>(n));
        Eigen::VectorXd want = Eigen::VectorXd::Zero(static_cast<Eigen::Index>(n));
        for (std::size_t i = 0; i < n; ++i)
            for (std::size_t j = 0; j < n; ++j)
                want(static_cast<Eigen::Index>(j)) += ((std::popcount(i & j) & 1) ? -1.0 : 1.0) * x(0, static_cast<Eigen::Index>(i));
        std::vector<float> xf(x.data(), x.data() + n);
        std::vector<double> xd(xf.begin(), xf.end());
        lowbit::fwht_inplace(std::span<float>(xf));
        lowbit::fwht_inplace(std::span<double>(xd));
        double ef = 0, ed = 0;
        for (std::size_t j = 0; j < n; ++j) {
            ef = std::max(ef, std::abs(xf[j] - want(static_cast<Eigen::Index>(j))));
            ed = std::max(ed, std::abs(xd[j] - want(static_cast<Eigen::Index>(j))));
        }
        const double scale = std::sqrt(static_cast<double>(n)) * (1 + std::log2(static_cast<double>(n)));
        CHECK(ef <= 4e-7 * scale * 4);
        CHECK(ed <= 1e-15 * scale * 8);
        // normalised variant: norm preserved
        std::vector<double> xn(xd.size());
        for (std::size_t j = 0; j < n; ++j) xn[j] = x(0, static_cast<Eigen::Index>(j));
        lowbit::fwht_inplace(std::span<double>(xn), lowbit::hadamard_norm::orthonormal);
        double a = 0, b = 0;
        for (std::size_t j = 0; j < n; ++j) {
            a += xn[j] * xn[j];
            b += static_cast<double>(x(0, static_cast<Eigen::Index>(j))) * x(0, static_cast<Eigen::Index>(j));
        }
        CHECK(a == doctest::Approx(b).epsilon(1e-12));
    }
}

TEST_CASE("FWHT SIMD path equals the scalar reference exactly on integers") {
    for (std::size_t n : {2u, 4u, 8u, 16u, 32u, 64u, 128u, 1024u}) {
        std::vector<float> a(n), b(n);
        std::mt19937 rng(static_cast<unsigned>(n));
        for (std::size_t i = 0; i < n; ++i) a[i] = b[i] = static_cast<float>(static_cast<int>(rng() % 201) - 100);
        lowbit::detail::fwht_simd(a.data(), n);
        lowbit::detail::fwht_scalar(b.data(), n);
        CHECK(a == b); // integers < 2^24: both exact
    }
}

TEST_CASE("fwht_rows transforms every row") {
    lowbit::matrix_d m = gaussian_matrix(5, 64, 3).cast<double>();
    lowbit::matrix_d want = m;
    for (Eigen::Index r = 0; r < 5; ++r) {
        std::vector<double> row(want.row(r).data(), want.row(r).data() + 64);
        lowbit::detail::fwht_scalar(row.data(), 64);
        for (int j = 0; j < 64; ++j) want(r, j) = row[static_cast<std::size_t>(j)] / 8.0;
    }
    lowbit::fwht_rows(m, lowbit::hadamard_norm::orthonormal);
    CHECK((m - want).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("Paley and Sylvester sign matrices are Hadamard: H Hᵀ = K I exactly") {
    struct row {
        Eigen::Index k;
        lowbit::hadamard_method m;
    };
    using M = lowbit::hadamard_method;
    for (const row r : {row{12, M::paley1}, row{20, M::paley1}, row{28, M::paley1}, row{36, M::paley2}, row{44, M::paley1},
                        row{52, M::paley2}, row{60, M::paley1}, row{108, M::paley1}, row{140, M::paley1},
                        row{284, M::paley1}, row{344, M::paley1}, row{924, M::paley2}, row{28, M::paley2},
                        row{64, M::sylvester}, row{312, M::paley1}}) {
        const Eigen::MatrixXi h = lowbit::hadamard_sign_matrix(r.k, r.m).cast<int>();
        CHECK(h.cwiseAbs().minCoeff() == 1);
        CHECK(h.cwiseAbs().maxCoeff() == 1);
        const Eigen::MatrixXi g = h * h.transpose();
        CHECK(g == Eigen::MatrixXi::Identity(r.k, r.k) * static_cast<int>(r.k));
    }
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(172, M::paley1), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(24, M::sylvester), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(12, M::random_orthogonal), lowbit::invalid_argument);
}

TEST_CASE("GF(p^k) arithmetic: prime powers and the quadratic character") {
    CHECK(lowbit::detail::prime_power(343).p == 7);
    CHECK(lowbit::detail::prime_power(343).k == 3);
    CHECK(lowbit::detail::prime_power(171).k == 0);
    CHECK(lowbit::detail::prime_power(1).k == 0);
    CHECK(lowbit::detail::prime_power(2).k == 1);
    // GF(9): exactly 4 non-zero squares; every non-zero element has an inverse (field).
    const lowbit::detail::galois_field f9(lowbit::detail::prime_power(9));
    const auto chi = f9.quadratic_character();
    CHECK(std::count(chi.begin(), chi.end(), 1) == 4);
    CHECK(std::count(chi.begin(), chi.end(), -1) == 4);
    for (long a = 1; a < 9; ++a) {
        int inverses = 0;
        for (long b = 1; b < 9; ++b) inverses += f9.mul(a, b) == 1;
        CHECK(inverses == 1);
    }
}

TEST_CASE("hadamard_construction: hand-worked table for LLM widths") {
    using M = lowbit::hadamard_method;
    struct row {
        Eigen::Index n;
        M m;
        Eigen::Index k;
        long q;
    };
    for (const row r : {row{4096, M::sylvester, 1, 0}, row{288, M::paley2, 36, 17}, row{768, M::paley1, 12, 11},
                        row{1376, M::paley1, 344, 343}, row{1536, M::paley1, 12, 11}, row{3584, M::paley1, 28, 27},
                        row{4544, M::paley1, 284, 283}, row{11008, M::paley1, 344, 343},
                        row{13696, M::random_orthogonal, 107, 0}, row{14336, M::paley1, 28, 27},
                        row{29568, M::paley2, 924, 461}, row{40, M::paley1, 20, 19}, row{6, M::random_orthogonal, 3, 0},
                        row{172, M::random_orthogonal, 43, 0}, row{1, M::sylvester, 1, 0}}) {
        const auto info = lowbit::hadamard_construction(r.n);
        CAPTURE(r.n);
        CHECK(info.method == r.m);
        CHECK(info.block == r.k);
        CHECK(info.pow2 * info.block == r.n);
        CHECK(info.q == r.q);
        CHECK(info.is_hadamard() == (r.m != M::random_orthogonal));
        CHECK(!info.describe().empty());
    }
}

TEST_CASE("hadamard_transform equals the dense (A ⊗ H_P)/√n product") {
    for (Eigen::Index n : {24, 40, 48, 72, 104, 6, 20, 64}) {
        CAPTURE(n);
        const lowbit::hadamard_transform t(n);
        const auto& info = t.info();
        const Eigen::Index K = info.block, P = info.pow2;
        Eigen::MatrixXd a;
        if (info.is_hadamard())
            a = K == 1 ? Eigen::MatrixXd::Ones(1, 1)
                       : Eigen::MatrixXd(lowbit::hadamard_sign_matrix(K, info.method).cast<double>());
        else
            a = lowbit::random_orthogonal(K, lowbit::hadamard_options{}.fallback_seed) * std::sqrt(static_cast<double>(K));
        Eigen::MatrixXd q(n, n);
        for (Eigen::Index i = 0; i < n; ++i)
            for (Eigen::Index j = 0; j < n; ++j)
                q(i, j) = a(i / P, j / P) * ((std::popcount(static_cast<unsigned>((i % P) & (j % P))) & 1) ? -1.0 : 1.0) /
                          std::sqrt(static_cast<double>(n));
        const auto x = gaussian_matrix(3, n, 9);
        lowbit::matrix_f got = x;
        t.apply_rows(got);
        const Eigen::MatrixXd want = x.cast<double>() * q;
        CHECK((got.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-5);
        CHECK((t.matrix() - q).cwiseAbs().maxCoeff() < 1e-12);
    }
}

TEST_CASE("orthogonality ‖QᵀQ − I‖ ≤ 1e-5 in float for every LLM width") {
    // Full QᵀQ for the small widths; 64 sampled rows of Q (all pairs) for the large ones.
    for (Eigen::Index n : {288, 768}) {
        const lowbit::hadamard_transform t(n, {.randomized = true, .seed = 5});
        lowbit::matrix_f q = lowbit::matrix_f::Identity(n, n);
        t.apply_rows(q);
        CHECK(lowbit::orthogonality_error(q) <= 1e-5);
    }
    for (Eigen::Index n : {1376, 1536, 3584, 4544, 11008, 13696, 14336, 29568, 156, 172}) {
        CAPTURE(n);
        for (bool randomized : {false, true}) {
            const lowbit::hadamard_transform t(n, {.randomized = randomized, .seed = 1});
            CHECK(sampled_row_orthogonality(t, 62, static_cast<unsigned>(n)) <= 1e-5);
        }
    }
}

TEST_CASE("full QᵀQ for the large widths" * doctest::test_suite("long")) {
    for (Eigen::Index n : {1376, 1536, 3584, 4544}) {
        const lowbit::hadamard_transform t(n);
        lowbit::matrix_f q = lowbit::matrix_f::Identity(n, n);
        t.apply_rows(q);
        CHECK(lowbit::orthogonality_error(q) <= 1e-5);
    }
}

TEST_CASE("randomised Hadamard = signs then Hadamard; deterministic per seed") {
    const Eigen::Index n = 768;
    const lowbit::hadamard_transform plain(n), r1(n, {.randomized = true, .seed = 42}), r2(n, {.randomized = true, .seed = 42}),
        r3(n, {.randomized = true, .seed = 43});
    CHECK(r1.signs() == r2.signs());
    CHECK(r1.signs() != r3.signs());
    CHECK(r1.signs().cwiseAbs().isOnes());
    const auto x = gaussian_matrix(4, n, 1);
    lowbit::matrix_f a = x, b = x * r1.signs().asDiagonal();
    r1.apply_rows(a);
    plain.apply_rows(b);
    CHECK((a - b).cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("double path agrees with the float path") {
    for (Eigen::Index n : {1376, 4096, 13696}) {
        const lowbit::hadamard_transform t(n, {.randomized = true, .seed = 3});
        const auto x = gaussian_matrix(2, n, 4);
        lowbit::matrix_f f = x;
        lowbit::matrix_d d = x.cast<double>();
        t.apply_rows(f);
        t.apply_rows(d);
        CHECK((f.cast<double>() - d).cwiseAbs().maxCoeff() < 1e-5);
        CHECK(d.norm() == doctest::Approx(x.cast<double>().norm()).epsilon(1e-12));
    }
}

TEST_CASE("bad input is refused with lowbit errors") {
    std::vector<float> v(12);
    CHECK_THROWS_AS(lowbit::fwht_inplace(std::span<float>(v)), lowbit::shape_error);
    CHECK_THROWS_WITH(lowbit::fwht_inplace(std::span<float>(v)), doctest::Contains("power of two"));
    std::vector<float> empty;
    CHECK_THROWS_AS(lowbit::fwht_inplace(std::span<float>(empty)), lowbit::shape_error);
    lowbit::matrix_f m = lowbit::matrix_f::Zero(2, 12);
    CHECK_THROWS_AS(lowbit::fwht_rows(m), lowbit::shape_error);
    CHECK_THROWS_AS((void)lowbit::hadamard_construction(0), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_construction(2 * 8191), lowbit::invalid_argument); // odd factor > 4096
    CHECK_THROWS_AS(lowbit::hadamard_transform(13696, {.require_hadamard = true}), lowbit::invalid_argument);
    CHECK_THROWS_WITH(lowbit::hadamard_transform(13696, {.require_hadamard = true}), doctest::Contains("13696"));
    CHECK_NOTHROW(lowbit::hadamard_transform(11008, {.require_hadamard = true}));
    const lowbit::hadamard_transform t(768);
    lowbit::matrix_f wrong = lowbit::matrix_f::Zero(2, 767);
    CHECK_THROWS_AS(t.apply_rows(wrong), lowbit::shape_error);
}
