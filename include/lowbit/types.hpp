#pragma once
/// \file types.hpp
/// Matrix aliases and the argument checks shared by every public function.
///
/// Layout convention: weights are row-major `[out x in]` (PyTorch `nn.Linear`), `y = W x`;
/// activations are row-major `[tokens x in]`.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>

LOWBIT_BEGIN_NAMESPACE

/// Row-major dynamic float matrix (the layout of weights and activations).
using matrix_f = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Row-major dynamic double matrix (reference computations, Hessians).
using matrix_d = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Row-major int8 matrix (quantization codes).
using matrix_i8 = Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// Dense float column vector.
using vector_f = Eigen::VectorXf;
/// Dense double column vector.
using vector_d = Eigen::VectorXd;
/// Read-only view of any float matrix expression with inner stride 1 (row-major storage).
using cref_matrix_f = Eigen::Ref<const matrix_f>;
/// Read-only view of a float vector.
using cref_vector_f = Eigen::Ref<const vector_f>;

namespace detail {

/// Throws `numeric_error` if any element of `m` is NaN or Inf. O(size).
template <class Derived>
inline void require_finite(const Eigen::DenseBase<Derived>& m, const char* where, const char* name) {
    const auto& d = m.derived();
    for (Eigen::Index i = 0; i < d.rows(); ++i)
        for (Eigen::Index j = 0; j < d.cols(); ++j)
            if (!std::isfinite(static_cast<double>(d(i, j))))
                throw numeric_error(std::string("lowbit: ") + where + ": argument '" + name +
                                    "' contains NaN or Inf");
}

/// Throws `shape_error` if `m` has no elements.
template <class Derived>
inline void require_nonempty(const Eigen::DenseBase<Derived>& m, const char* where, const char* name) {
    if (m.size() == 0)
        throw shape_error(std::string("lowbit: ") + where + ": argument '" + name + "' is empty");
}

/// Throws `shape_error` unless `got == want`, naming both.
inline void require_dim(Eigen::Index got, Eigen::Index want, const char* where, const char* what) {
    if (got != want)
        throw shape_error(std::string("lowbit: ") + where + ": " + what + " is " + std::to_string(got) +
                          ", expected " + std::to_string(want));
}

} // namespace detail

LOWBIT_END_NAMESPACE
