// libFuzzer target: TRA-GPTQ's salient-ternary layout (salient_ternary.hpp) read from raw bytes, as a saved
// model's `.codes` tensor of a "salient_ternary" record hands them to `salient_ternary_matrix::from_bytes`.
// Input: byte 0 picks the parameter values, byte 1 the rows (1..4), bytes 2-3 the columns (1..300); the
// rest are the serialized bytes (block count, flags, blocks, column map, code words). The parameters
// are rows × min(block count, cols) × 10 fp16 values derived from the input.
// Contract checked: from_bytes throws lowbit::format_error and nothing else; an accepted matrix
// serializes back to exactly the input bytes, and its fp32-activation products on every ISA path this
// CPU runs (1, 3 and 9 tokens: the row kernels and the batched decode) stay within
// (n + 16)·2⁻²⁴·Σ|w||x| + 1e-30 of a double product with its own dequantized weights — no crash, leak
// or UB under ASan/UBSan.
// Build and run: scripts/fuzz.
#include <lowbit/salient_ternary.hpp>

#include "salient_products.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return lowbit_fuzz::fuzz_salient_layout<lowbit::salient_ternary_matrix>(data, size, lowbit::salient_ternary_matrix::params_per_block);
}
