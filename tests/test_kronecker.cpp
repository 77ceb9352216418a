// Tests for lowbit/kronecker.hpp. Oracles: the published KOTMS factor-size examples (docs/sources.md §2.2);
// an element-by-element dense Kronecker product multiplied in double; C·M·B computed by hand per row.
#include <lowbit/kronecker.hpp>
#include <lowbit/orthogonal.hpp>

#include <doctest/doctest.h>

#include "gaussian_matrix.hpp"

#include <random>

namespace {
using lowbit_test::gaussian;
} // namespace

TEST_CASE("KOTMS factor-size rule reproduces the published examples") {
    struct row {
        Eigen::Index m, n, l, r;
    };
    for (const row e : {row{4096, 4096, 8, 512}, row{4096, 11008, 16, 688}, row{1024, 4096, 16, 256},
                        row{4096, 14336, 16, 896}, row{4096, 12288, 16, 768}, row{8192, 8192, 8, 1024},
                        // stories260K shapes worked by hand: r0 = floor(sqrt(m n / 64))
                        row{64, 64, 8, 8}, row{32, 64, 16, 4}, row{172, 64, 8, 8}, row{64, 172, 43, 4},
                        row{1, 1, 1, 1}, row{1, 7, 7, 1}}) {
        CAPTURE(e.m);
        CAPTURE(e.n);
        const auto s = lowbit::kotms_factor_sizes(e.m, e.n);
        CHECK(s.l == e.l);
        CHECK(s.r == e.r);
    }
    CHECK_THROWS_AS((void)lowbit::kotms_factor_sizes(0, 4), lowbit::invalid_argument);
}

TEST_CASE("kronecker_product matches its definition") {
    lowbit::matrix_d a(2, 2), b(2, 3);
    a << 1, 2, 3, 4;
    b << 0, 5, -1, 6, 7, 8;
    const auto k = lowbit::kronecker_product(a, b);
    CHECK(k.rows() == 4);
    CHECK(k.cols() == 6);
    CHECK(k(0, 1) == 5);
    CHECK(k(1, 5) == 2 * 8);
    CHECK(k(3, 3) == 4 * 6);
    CHECK(k(2, 2) == 3 * -1);
}

TEST_CASE("kronecker apply equals the dense product and C·M·B per row") {
    for (auto [l, r] : {std::pair<Eigen::Index, Eigen::Index>{4, 8}, {8, 8}, {16, 4}, {1, 12}, {12, 1}, {3, 5}}) {
        const lowbit::kronecker_rotation t{lowbit::random_orthogonal(l, 1).cast<float>(),
                                           lowbit::random_orthogonal(r, 2).cast<float>()};
        const auto x = gaussian(7, l * r, 3);
        lowbit::matrix_f got = x;
        t.apply_rows(got);
        const Eigen::MatrixXd want = x.cast<double>() * t.matrix();
        CHECK((got.cast<double>() - want).cwiseAbs().maxCoeff() < 1e-5);
        // per row: C · M · B with M the row-major l×r view
        for (Eigen::Index i = 0; i < x.rows(); ++i) {
            const Eigen::MatrixXd mm = Eigen::Map<const lowbit::matrix_f>(x.row(i).data(), l, r).cast<double>();
            const Eigen::MatrixXd cmb = t.left.cast<double>() * mm * t.right.cast<double>();
            for (Eigen::Index a = 0; a < l; ++a)
                for (Eigen::Index b = 0; b < r; ++b) CHECK(std::abs(got(i, a * r + b) - cmb(a, b)) < 1e-5);
        }
        CHECK(lowbit::orthogonality_error(t.matrix()) < 1e-6);
        // a strided view (columns of a wider matrix) takes the per-row path and agrees
        lowbit::matrix_f wide = gaussian(7, l * r + 3, 4);
        wide.leftCols(l * r) = x;
        t.apply_rows(wide.leftCols(l * r));
        CHECK((wide.leftCols(l * r) - got).cwiseAbs().maxCoeff() < 1e-6);
    }
}

TEST_CASE("identity factors leave rows unchanged") {
    const auto t = lowbit::kronecker_rotation::identity({4, 6});
    CHECK(t.dim() == 24);
    const auto x = gaussian(3, 24, 5);
    lowbit::matrix_f y = x;
    t.apply_rows(y);
    CHECK(y == x);
}

TEST_CASE("bad input is refused with lowbit errors") {
    const auto t = lowbit::kronecker_rotation::identity({4, 6});
    lowbit::matrix_f wrong = lowbit::matrix_f::Zero(2, 25);
    CHECK_THROWS_AS(t.apply_rows(wrong), lowbit::shape_error);
    lowbit::kronecker_rotation bad{lowbit::matrix_f::Zero(2, 3), lowbit::matrix_f::Identity(2, 2)};
    lowbit::matrix_f x = lowbit::matrix_f::Zero(1, 4);
    CHECK_THROWS_AS(bad.apply_rows(x), lowbit::shape_error);
}
