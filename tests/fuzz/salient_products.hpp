#pragma once
// The part of the salient-layout fuzz contract shared by fuzz_salient_binary and fuzz_salient_ternary:
// an accepted matrix serializes back to exactly the input bytes, and its fp32-activation products on
// every ISA path this CPU runs (1, 3 and 9 tokens: the row kernels and the batched decode) stay within
// (n + 16)·2⁻²⁴·Σ|w||x| + 1e-30 of a double product with its own dequantized weights. Aborts otherwise.
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

/// The whole fuzz target of a salient layout W (`salient_binary_matrix` or `salient_ternary_matrix`):
/// byte 0 picks the fp16 values, byte 1 the rows (1..4), bytes 2-3 the columns (1..300), the rest are
/// the serialized bytes handed to W::from_bytes with rows × min(block count, cols) × `per_block`
/// values; a format_error is the expected refusal, anything accepted meets check_salient_layout.
template <class W>
int fuzz_salient_layout(const std::uint8_t* data, std::size_t size, Eigen::Index per_block) {
    using namespace lowbit;
    if (size < 4) return 0;
    const Eigen::Index rows = 1 + data[1] % 4;
    const Eigen::Index cols = 1 + (data[2] | (data[3] << 8)) % 300;
    const std::span<const std::uint8_t> bytes(data + 4, size - 4);
    std::uint32_t nb = 0;
    if (bytes.size() >= 4) std::memcpy(&nb, bytes.data(), 4);
    const Eigen::Index blocks = std::min<Eigen::Index>(nb, cols);
    vector_f values(rows * blocks * per_block);
    for (Eigen::Index e = 0; e < values.size(); ++e) // fp16-exact: k/32, k in −128..127 (byte 0 shifts the pattern)
        values(e) = static_cast<float>(static_cast<int>(data[static_cast<std::size_t>(e + data[0]) % size]) - 128) / 32.0f;
    W w;
    try {
        w = W::from_bytes(rows, cols, bytes, values);
    } catch (const format_error&) {
        return 0;
    }
    check_salient_layout(w, bytes, data, size);
    return 0;
}

} // namespace lowbit_fuzz
