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
#include <string>
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

TEST_CASE("FWHT float error within the stated bound of the double reference on every compiled path") {
    // bound: ‖ŷ − y‖₂ ≤ log2(n)·u·‖y‖₂ (scalar, AVX-512), (log2(n) + L)·u·‖y‖₂ (xsimd), u = 2⁻²⁴
    const double u = std::ldexp(1.0, -24);
    const double lanes = static_cast<double>(xsimd::batch<float>::size);
    for (std::size_t n : {16u, 64u, 256u, 512u, 2048u, 4096u, 16384u, 65536u}) {
        CAPTURE(n);
        const auto x = gaussian_matrix(1, static_cast<Eigen::Index>(n), static_cast<unsigned>(n) + 7);
        std::vector<double> ref(x.data(), x.data() + n);
        lowbit::detail::fwht_scalar(ref.data(), n); // double: error ~1e-16·log n, far below the float bound
        double ynorm = 0;
        for (double v : ref) ynorm += v * v;
        ynorm = std::sqrt(ynorm);
        const double m = std::log2(static_cast<double>(n));
        auto err = [&](const std::vector<float>& y) {
            double e = 0;
            for (std::size_t j = 0; j < n; ++j) e += (y[j] - ref[j]) * (y[j] - ref[j]);
            return std::sqrt(e);
        };
        std::vector<float> scalar(x.data(), x.data() + n), simd = scalar, dispatched = scalar;
        lowbit::detail::fwht_scalar(scalar.data(), n);
        lowbit::detail::fwht_simd(simd.data(), n);
        lowbit::detail::fwht_dispatch(dispatched.data(), n, 1.0f);
        CHECK(err(scalar) <= m * u * ynorm);
        CHECK(err(simd) <= (m + lanes) * u * ynorm);
        CHECK(err(dispatched) <= (m + lanes) * u * ynorm);
#if LOWBIT_HAVE_X86_KERNELS
        if (lowbit::detail::host_cpu_features().avx512) {
            CHECK(std::string(lowbit::detail::fwht_path<float>(n)) == "avx512");
            std::vector<float> k(x.data(), x.data() + n);
            lowbit::detail::fwht_avx512::fwht(k.data(), n);
            CHECK(k == scalar); // same butterflies, same roundings
            CHECK(err(k) <= m * u * ynorm);
            // the folded scale equals the separate multiply
            std::vector<float> ks(x.data(), x.data() + n), ss = scalar;
            const float s = 1.0f / std::sqrt(static_cast<float>(n));
            lowbit::detail::fwht_avx512::fwht(ks.data(), n, s);
            for (auto& v : ss) v *= s;
            CHECK(ks == ss);
        }
#endif
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
                        row{64, M::sylvester}, row{312, M::paley1}, row{172, M::williamson}}) {
        const Eigen::MatrixXi h = lowbit::hadamard_sign_matrix(r.k, r.m).cast<int>();
        CHECK(h.cwiseAbs().minCoeff() == 1);
        CHECK(h.cwiseAbs().maxCoeff() == 1);
        const Eigen::MatrixXi g = h * h.transpose();
        CHECK(g == Eigen::MatrixXi::Identity(r.k, r.k) * static_cast<int>(r.k));
    }
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(172, M::paley1), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(156, M::williamson), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(43, M::sylvester_windows), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(24, M::sylvester), lowbit::invalid_argument);
    CHECK_THROWS_AS((void)lowbit::hadamard_sign_matrix(12, M::random_orthogonal), lowbit::invalid_argument);
}

TEST_CASE("the stored Williamson quadruple: symmetric circulants whose squares sum to 4m·I") {
    for (const auto& w : lowbit::detail::williamson_quadruples) {
        const long m = w.m;
        std::vector<std::vector<int>> a(4, std::vector<int>(static_cast<std::size_t>(m)));
        long squares = 0;
        for (int t = 0; t < 4; ++t) {
            CHECK(std::string(w.rows[t]).size() == static_cast<std::size_t>(m));
            long sum = 0;
            for (long j = 0; j < m; ++j) sum += a[t][static_cast<std::size_t>(j)] = w.rows[t][j] == '+' ? 1 : -1;
            for (long j = 1; j < m; ++j) CHECK(a[t][static_cast<std::size_t>(j)] == a[t][static_cast<std::size_t>(m - j)]); // symmetric
            squares += sum * sum;
        }
        CHECK(squares == 4 * m); // row sums: 7² + 7² + 7² + 5² = 172
        // Σ_t periodic autocorrelation of a_t at every shift s ≠ 0 is zero (⇔ Σ A_t A_tᵀ = 4m·I)
        for (long sh = 1; sh < m; ++sh) {
            long paf = 0;
            for (int t = 0; t < 4; ++t)
                for (long j = 0; j < m; ++j) paf += a[t][static_cast<std::size_t>(j)] * a[t][static_cast<std::size_t>((j + sh) % m)];
            CHECK(paf == 0);
        }
    }
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
                        row{1376, M::williamson, 172, 0}, row{1536, M::paley1, 12, 11}, row{3584, M::paley1, 28, 27},
                        row{4544, M::paley1, 284, 283}, row{11008, M::williamson, 172, 0},
                        row{13696, M::random_orthogonal, 107, 0}, row{14336, M::paley1, 28, 27},
                        row{29568, M::paley2, 924, 461}, row{40, M::paley1, 20, 19}, row{6, M::random_orthogonal, 3, 0},
                        row{172, M::williamson, 172, 0}, row{344, M::williamson, 172, 0}, row{1, M::sylvester, 1, 0},
                        row{156, M::random_orthogonal, 39, 0}, row{312, M::paley1, 312, 311}}) {
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

TEST_CASE("hadamard_construction with the bounded_cost policy: dense blocks ≤ 64, else Sylvester windows") {
    using M = lowbit::hadamard_method;
    const auto bc = lowbit::hadamard_policy::bounded_cost;
    struct row {
        Eigen::Index n;
        M m;
        Eigen::Index k;
    };
    for (const row r : {row{4096, M::sylvester, 1}, row{288, M::paley2, 36}, row{768, M::paley1, 12}, row{1376, M::sylvester_windows, 43},
                        row{1536, M::paley1, 12}, row{3584, M::paley1, 28}, row{4544, M::sylvester_windows, 71},
                        row{11008, M::sylvester_windows, 43}, row{13696, M::sylvester_windows, 107}, row{14336, M::paley1, 28},
                        row{29568, M::sylvester_windows, 231}, row{6, M::sylvester_windows, 3}}) {
        CAPTURE(r.n);
        const auto info = lowbit::hadamard_construction(r.n, bc);
        CHECK(info.method == r.m);
        CHECK(info.block == r.k);
        CHECK(info.block * info.pow2 == r.n);
        CHECK(info.dense_cost_per_element() <= lowbit::hadamard_max_dense_block);
        CHECK(info.is_hadamard() == (r.m != M::sylvester_windows));
    }
    CHECK(lowbit::hadamard_construction(11008).dense_cost_per_element() == 172);
    CHECK(lowbit::hadamard_construction(11008, bc).describe().find("W_43") == 0);
}

TEST_CASE("Sylvester windows: orthogonal, Kronecker with H_P, incoherent like a Haar block, every input reaches every output") {
    const auto bc = lowbit::hadamard_policy::bounded_cost;
    for (Eigen::Index n : {6, 43, 172, 1376, 107 * 4}) {
        CAPTURE(n);
        const lowbit::hadamard_transform t(n, {.policy = bc});
        const Eigen::Index K = t.info().block, P = t.info().pow2;
        const Eigen::MatrixXd q = t.matrix();
        CHECK(lowbit::orthogonality_error(q) <= 1e-12);
        // Q = Wᵀ ⊗ H_P / √P: every P×P block is a multiple of the Sylvester H_P
        for (Eigen::Index bi = 0; bi < K; bi += std::max<Eigen::Index>(1, K / 5))
            for (Eigen::Index bj = 0; bj < K; ++bj) {
                const double c = q(bi * P, bj * P);
                for (Eigen::Index i = 0; i < P; ++i)
                    for (Eigen::Index j = 0; j < P; ++j) {
                        const double h = (std::popcount(static_cast<unsigned>(i & j)) & 1) ? -1.0 : 1.0;
                        CHECK(std::abs(q(bi * P + i, bj * P + j) - c * h) < 1e-12);
                    }
            }
        // incoherence max |Q_ij|·√n: Hadamard 1, dense Haar R_b 3.3–3.9 at these sizes; measured 1.48–3.26
        CHECK(q.cwiseAbs().maxCoeff() * std::sqrt(static_cast<double>(n)) <= 3.5);
        // no structural zeros in the odd-factor mixing
        Eigen::MatrixXd w(K, K);
        for (Eigen::Index i = 0; i < K; ++i)
            for (Eigen::Index j = 0; j < K; ++j) w(i, j) = q(i * P, j * P);
        CHECK(w.cwiseAbs().minCoeff() > 1e-9);
        // float path equals the double path
        const auto x = gaussian_matrix(3, n, 2);
        lowbit::matrix_f f = x;
        t.apply_rows(f);
        CHECK((f.cast<double>() - x.cast<double>() * q).cwiseAbs().maxCoeff() < 1e-5);
    }
}

TEST_CASE("hadamard_transform equals the dense (A ⊗ H_P)/√n product") {
    for (Eigen::Index n : {24, 40, 48, 72, 104, 6, 20, 64, 172, 344}) {
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

TEST_CASE("Williamson widths with P ≥ 16 (eigenbasis path) equal the dense (H_172 ⊗ H_P)/√n product") {
    const Eigen::MatrixXd h = lowbit::hadamard_sign_matrix(172, lowbit::hadamard_method::williamson).cast<double>();
    for (Eigen::Index n : {172 * 16, 11008}) {
        CAPTURE(n);
        const lowbit::hadamard_transform t(n, {.randomized = true, .seed = 4});
        const Eigen::Index P = t.info().pow2;
        CHECK(t.info().method == lowbit::hadamard_method::williamson);
        const auto x = gaussian_matrix(1, n, 6);
        // oracle: y_j = Σ_i s_i x_i H(i/P, j/P) H_P(i%P, j%P) / √n, by blocks: Y = Hᵀ (X_s H_P) / √n
        Eigen::MatrixXd xs(172, P);
        for (Eigen::Index i = 0; i < n; ++i) xs(i / P, i % P) = static_cast<double>(x(0, i)) * t.signs()(i);
        Eigen::MatrixXd hp(P, P);
        for (Eigen::Index i = 0; i < P; ++i)
            for (Eigen::Index j = 0; j < P; ++j) hp(i, j) = (std::popcount(static_cast<unsigned>(i & j)) & 1) ? -1.0 : 1.0;
        const Eigen::MatrixXd want = h.transpose() * xs * hp / std::sqrt(static_cast<double>(n));
        lowbit::matrix_f f = x;
        lowbit::matrix_d d = x.cast<double>();
        t.apply_rows(f);
        t.apply_rows(d);
        double ef = 0, ed = 0;
        for (Eigen::Index i = 0; i < n; ++i) {
            ef = std::max(ef, std::abs(static_cast<double>(f(0, i)) - want(i / P, i % P)));
            ed = std::max(ed, std::abs(d(0, i) - want(i / P, i % P)));
        }
        CHECK(ef < 1e-5);
        CHECK(ed < 1e-12);
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
    for (Eigen::Index n : {288, 768, 1376, 1536, 3584, 4544, 11008, 13696, 14336, 29568, 156, 172}) {
        CAPTURE(n);
        for (bool randomized : {false, true})
            for (auto policy : {lowbit::hadamard_policy::exact_first, lowbit::hadamard_policy::bounded_cost}) {
                const lowbit::hadamard_transform t(n, {.randomized = randomized, .seed = 1, .policy = policy});
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
    CHECK_THROWS_AS(lowbit::hadamard_transform(11008, {.require_hadamard = true, .policy = lowbit::hadamard_policy::bounded_cost}),
                    lowbit::invalid_argument);
    CHECK_NOTHROW(lowbit::hadamard_transform(14336, {.require_hadamard = true, .policy = lowbit::hadamard_policy::bounded_cost}));
    // NaN / Inf rows: numeric_error on every construction and on the plain FWHT
    for (Eigen::Index n : {4096, 768, 11008, 13696}) {
        CAPTURE(n);
        for (auto policy : {lowbit::hadamard_policy::exact_first, lowbit::hadamard_policy::bounded_cost}) {
            const lowbit::hadamard_transform h(n, {.randomized = true, .policy = policy});
            for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
                lowbit::matrix_f x = lowbit::matrix_f::Ones(2, n);
                x(1, n / 3) = bad;
                CHECK_THROWS_AS(h.apply_rows(x), lowbit::numeric_error);
            }
        }
    }
    std::vector<float> nan_row(64, 1.0f);
    nan_row[17] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(lowbit::fwht_inplace(std::span<float>(nan_row)), lowbit::numeric_error);
    lowbit::matrix_d inf_rows = lowbit::matrix_d::Ones(3, 32);
    inf_rows(2, 5) = -std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS(lowbit::fwht_rows(inf_rows), lowbit::numeric_error);
    const lowbit::hadamard_transform t(768);
    lowbit::matrix_f wrong = lowbit::matrix_f::Zero(2, 767);
    CHECK_THROWS_AS(t.apply_rows(wrong), lowbit::shape_error);
}
