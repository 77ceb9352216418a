#pragma once
// Oracles shared by the rotation-learning tests (test_kotms, test_okt): weight-like heavy-tailed matrices,
// the EM objective of a mixture with the E-step's statistics held fixed (double-precision path), and a dense
// search over every 2x2 orthogonal matrix (rotations and reflections) for the Procrustes M-step checks.
#include <lowbit/kotms.hpp>
#include <lowbit/orthogonal.hpp>

#include "gaussian_matrix.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lowbit_test {

/// Weight-like `[rows x cols]` matrix: Student-t with 4 degrees of freedom, scale 0.02.
inline lowbit::matrix_f heavy_matrix(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
    return student_t(rows, cols, seed, 4.0f, 0.02f);
}

/// The EM objective of the mixture `spec` for rows of `wd` rotated by C·M·B (double), with the E-step's
/// statistics `e` fixed: the Q-function (`q`: responsibilities frozen) or the NLL at fixed row means and scales.
inline double mixture_fixed_stats(const lowbit::matrix_d& wd, const lowbit::matrix_d& c, const lowbit::matrix_d& b,
                                  const lowbit::detail::mixture_eval& e, const lowbit::detail::mixture_spec& spec,
                                  bool q) {
    return lowbit::detail::mixture_shaping_loss(lowbit::detail::kronecker_rotate_rows(wd, c, b), spec, &e.row_scale,
                                                q ? &e.resp : nullptr, false, &e.row_mean)
        .nll;
}

/// min f(Q) over every 2x2 orthogonal Q on a grid of `steps` angles: rotations [c −s; s c] and reflections
/// [c s; s −c]. The grid's worst-case angle error is π/steps.
template <class F>
double min_over_2x2_orthogonal(F&& f, int steps = 3600) {
    double best = std::numeric_limits<double>::infinity();
    for (int i = 0; i < steps; ++i) {
        const double th = 2 * M_PI * i / steps, cs = std::cos(th), sn = std::sin(th);
        lowbit::matrix_d rot(2, 2), ref(2, 2);
        rot << cs, -sn, sn, cs;
        ref << cs, sn, sn, -cs;
        best = std::min({best, f(rot), f(ref)});
    }
    return best;
}

} // namespace lowbit_test
