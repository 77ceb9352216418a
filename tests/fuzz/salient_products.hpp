#pragma once
// The part of the salient-layout fuzz contract shared by fuzz_salient_binary and fuzz_salient_ternary:
// an accepted matrix serializes back to exactly the input bytes, and its fp32-activation products on
// every ISA path this CPU runs (1, 3 and 9 tokens: the row kernels and the batched decode) stay within
// (n + 16)·2⁻²⁴·Σ|w||x| + 1e-30 of a double product with its own dequantized weights. Aborts otherwise.
#include <lowbit/gemm.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

namespace lowbit_fuzz {

/// Checks `w` (a salient layout accepted from `bytes`) against the contract above; x is derived from data.
template <class W>
void check_salient_layout(const W& w, std::span<const std::uint8_t> bytes, const std::uint8_t* data, std::size_t size) {
    using namespace lowbit;
    const std::vector<std::uint8_t> back = w.bytes();
    if (back.size() != bytes.size() || !std::equal(back.begin(), back.end(), bytes.begin())) std::abort();
    const Eigen::Index rows = w.rows(), cols = w.cols();
    const matrix_f wf = w.dequantize();
    const matrix_d wd = wf.cast<double>();
    for (const Eigen::Index tokens : {1, 3, 9}) {
        matrix_f x(tokens, cols);
        for (Eigen::Index k = 0; k < tokens; ++k)
            for (Eigen::Index j = 0; j < cols; ++j)
                x(k, j) = static_cast<float>(static_cast<int>(data[static_cast<std::size_t>(j * 3 + k) % size]) - 128) / 16.0f;
        const matrix_d want = x.cast<double>() * wd.transpose();
        const matrix_d mass = x.cast<double>().cwiseAbs() * wd.cwiseAbs().transpose();
        for (auto isa : {kernel_isa::scalar, kernel_isa::generic, kernel_isa::avx2, kernel_isa::avx512, kernel_isa::amx}) {
            if (!isa_available(isa)) continue;
            const matrix_f got = gemm(w, x, act_fp32{}, isa);
            for (Eigen::Index k = 0; k < tokens; ++k)
                for (Eigen::Index i = 0; i < rows; ++i) {
                    const double bound = static_cast<double>(w.padded_cols() + 16) * 0x1p-24 * mass(k, i) + 1e-30;
                    if (!(std::abs(static_cast<double>(got(k, i)) - want(k, i)) <= bound)) std::abort();
                }
        }
    }
}

} // namespace lowbit_fuzz
