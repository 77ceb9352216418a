// libFuzzer target: the packed weight layouts (pack.hpp) and their kernels (gemm.hpp) fed raw bytes,
// as a saved model's `.codes` tensors or a GGUF file hand them over. Input: byte 0 picks the format
// (ternary2, int2, ternary_base3, binary1, int4) and whether rows carry offsets, bytes 1-3 the rows
// (1..5) and columns (1..330: up to two blocks of every format); the rest are the packed codes
// (repeated to the byte count the shape needs), activations are derived from them.
// Contract checked: the checked constructor throws lowbit::shape_error for a byte count that does
// not match and nothing else; an accepted matrix — any byte value, also digits no packer writes
// (ternary2 u = 3, base-3 bytes >= 243) — gives bit-identical act_int results on every ISA path
// this CPU runs and on the interleaved layout, interleave/deinterleave round-trips the bytes, and
// act_fp32 stays within a relative 1e-4 of the reference decoder (decode_codes) — no crash, leak or
// UB under ASan/UBSan.
// Build and run: scripts/fuzz.
#include <lowbit/gemm.hpp>
#include <lowbit/pack.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace {

template <class F>
void run(Eigen::Index rows, Eigen::Index cols, bool offsets, const std::uint8_t* data, std::size_t size) {
    using namespace lowbit;
    vector_f scale(rows), offset;
    for (Eigen::Index i = 0; i < rows; ++i) scale(i) = 0.25f + 0.125f * static_cast<float>(i);
    if (offsets) offset = vector_f::LinSpaced(rows, -0.5f, 0.5f);
    const std::size_t need = static_cast<std::size_t>(rows * packed_matrix<F>::blocks_for(cols) * pack_format<F>::block_bytes);
    if (size != need) { // the raw bytes as given: a wrong count is refused
        try {
            (void)packed_matrix<F>(rows, cols, typename packed_matrix<F>::buffer(data, data + size), scale, offset);
            std::abort();
        } catch (const shape_error&) {
        }
    }
    typename packed_matrix<F>::buffer bytes(need); // the bytes repeated to the size the shape needs
    for (std::size_t k = 0; k < need; ++k) bytes[k] = data[k % size];
    const packed_matrix<F> w(rows, cols, std::move(bytes), scale, offset);
    matrix_f x(2, cols);
    for (Eigen::Index j = 0; j < cols; ++j) {
        x(0, j) = static_cast<float>(static_cast<int>(data[static_cast<std::size_t>(j) % size]) - 128) / 64.0f;
        x(1, j) = static_cast<float>((j * 7) % 11) - 5.0f;
    }
    const matrix_f ref = gemm(w, x, act_int{8}, kernel_isa::scalar);
    for (auto isa : {kernel_isa::generic, kernel_isa::avx2, kernel_isa::avx512, kernel_isa::amx}) {
        if (!isa_available(isa)) continue;
        if (gemm(w, x, act_int{8}, isa) != ref) std::abort();
    }
    if (gemm(w, x, act_int{4}) != gemm(w, x, act_int{4}, kernel_isa::scalar)) std::abort();
    const auto iw = interleave(w);
    if (gemm(iw, x, act_int{8}, kernel_isa::scalar) != ref || gemm(iw, x, act_int{8}) != ref) std::abort();
    const auto back = deinterleave(iw);
    if (back.bytes() != w.bytes()) std::abort();
    // act_fp32 against the reference decoder
    const matrix_f wf = detail::dequantize_codes(w);
    const matrix_f want = x * wf.transpose();
    for (auto isa : {kernel_isa::scalar, kernel_isa::automatic}) {
        const matrix_f got = gemm(w, x, act_fp32{}, isa);
        const matrix_f one = gemv(w, x.row(1).transpose(), act_fp32{}, isa).transpose();
        for (Eigen::Index k = 0; k < x.rows(); ++k)
            for (Eigen::Index i = 0; i < rows; ++i) {
                const double bound = 1e-4 * (1.0 + (x.row(k).cwiseAbs() * wf.row(i).cwiseAbs().transpose())(0, 0));
                if (!(std::abs(got(k, i) - want(k, i)) <= bound)) std::abort();
            }
        if (!(((one.row(0) - want.row(1)).cwiseAbs().array() <= 1e-4f * (1.0f + want.row(1).cwiseAbs().array() * 64)).all()))
            std::abort();
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) return 0;
    const Eigen::Index rows = 1 + data[1] % 5;
    const Eigen::Index cols = 1 + (data[2] | (data[3] << 8)) % 330;
    const bool offsets = (data[0] & 8) != 0;
    const std::uint8_t* codes = data + 4;
    const std::size_t n = size - 4;
    if (n == 0) return 0;
    switch (data[0] % 5) {
    case 0: run<lowbit::ternary2>(rows, cols, offsets, codes, n); break;
    case 1: run<lowbit::int2>(rows, cols, offsets, codes, n); break;
    case 2: run<lowbit::ternary_base3>(rows, cols, offsets, codes, n); break;
    case 3: run<lowbit::binary1>(rows, cols, offsets, codes, n); break;
    default: run<lowbit::int4>(rows, cols, offsets, codes, n); break;
    }
    return 0;
}
