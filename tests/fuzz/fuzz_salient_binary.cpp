// libFuzzer target: BiLLM's salient-binary layout (salient_binary.hpp) read from raw bytes, as a saved
// model's `.codes` tensor of a "salient_binary" record hands them to `salient_binary_matrix::from_bytes`.
// Input: byte 0 picks the table values, byte 1 the rows (1..4), bytes 2-3 the columns (1..300); the
// rest are the serialized bytes (block count, flags, blocks, column map, code words). The table has
// rows × min(block count, cols) × 8 fp16 entries derived from the input.
// Contract checked: from_bytes throws lowbit::format_error and nothing else; an accepted matrix
// serializes back to exactly the input bytes, and its fp32-activation products on every ISA path this
// CPU runs (1, 3 and 9 tokens: the row kernels and the batched decode) stay within
// (n + 16)·2⁻²⁴·Σ|w||x| + 1e-30 of a double product with its own dequantized weights — no crash, leak
// or UB under ASan/UBSan.
// Build and run: scripts/fuzz.
#include <lowbit/salient_binary.hpp>

#include "salient_products.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    return lowbit_fuzz::fuzz_salient_layout<lowbit::salient_binary_matrix>(data, size, lowbit::salient_binary_matrix::table_entries);
}
