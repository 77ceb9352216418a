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
    using namespace lowbit;
    if (size < 4) return 0;
    const Eigen::Index rows = 1 + data[1] % 4;
    const Eigen::Index cols = 1 + (data[2] | (data[3] << 8)) % 300;
    const std::span<const std::uint8_t> bytes(data + 4, size - 4);
    std::uint32_t nb = 0;
    if (bytes.size() >= 4) std::memcpy(&nb, bytes.data(), 4);
    const Eigen::Index blocks = std::min<Eigen::Index>(nb, cols);
    vector_f table(rows * blocks * salient_binary_matrix::table_entries);
    for (Eigen::Index e = 0; e < table.size(); ++e) // fp16-exact: k/32, k in −128..127 (byte 0 shifts the pattern)
        table(e) = static_cast<float>(static_cast<int>(data[static_cast<std::size_t>(e + data[0]) % size]) - 128) / 32.0f;
    salient_binary_matrix w;
    try {
        w = salient_binary_matrix::from_bytes(rows, cols, bytes, table);
    } catch (const format_error&) {
        return 0;
    }
    lowbit_fuzz::check_salient_layout(w, bytes, data, size);
    return 0;
}
