#pragma once
/// \file salient_binary.hpp
/// The packed layout of BiLLM's binarized weights (billm.hpp) and its fp32-activation GEMM, so a
/// BiLLM layer runs from its stored bits instead of a dequantized dense copy.
///
/// Layout (`salient_binary_matrix`, `[rows x cols]`): the columns form blocks (BiLLM's GPTQ blocks, in
/// processing order); inside a block the k salient columns come first, then the other columns, then
/// zero padding to a multiple of 16. `source[p]` is the original column at packed position p (−1 on
/// padding), so a kernel gathers x once per token. Every weight has the code bit p1 (the first sign:
/// 1 → +1) and p2 (salient weight: the second sign; other weight: its group, 1 → the "high" group of
/// BiLLM's split). With `split` false the non-salient weights form one group: p2 is stored only for
/// the 16-column chunks that hold salient columns (0 elsewhere), so such a matrix stores ≈ 1 bit per
/// weight plus the salient second plane. Per row and block a table of 8 fp16 entries gives the weight:
///     w = table[4·salient + 2·p2 + p1]
/// i.e. entries 0..3 = μ_lo ∓ α_lo, μ_hi ∓ α_hi and entries 4..7 = μ_s + {−,+}α₀ + {−,−,+,+}α₁
/// (`pack_billm` in billm.hpp fills them; any 8-value table is valid).
/// Memory: per row, one uint16 p1 word per 16 columns, then the uint16 p2 words of the chunks that have
/// one (every chunk with `split`); 8 fp16 per row and block; the column map (uint16 per padded
/// column) and 2 uint16 per block.
/// `storage_bits()` counts exactly the serialized bytes (`bytes()`) plus 16 bits per table entry.
///
/// GEMM with fp32 activations (`gemm`, `gemm_into`; `quantized_linear<salient_binary_matrix, act_fp32>`):
/// y_ki = Σ_p w_ip·x_k,source[p], float accumulation. Paths: scalar (reference; also what generic
/// and neon requests run), avx2, avx512 (arch/salient_binary_x86.hpp; an amx request runs avx512).
/// From `salient_binary_batched_tokens` tokens on a non-scalar path, 64 decoded rows at a time are
/// multiplied with all tokens by Eigen. Error on every path:
///     |y_ki − Σ_p w_ip x_kp| ≤ (n + 16)·u·Σ_p |w_ip x_kp|   (n = padded columns, u = 2⁻²⁴).
/// `act_int{bits}` activations are quantize-dequantized on gemm.hpp's per-token grid, then run by
/// the fp32 kernel (no integer kernel for this layout).
///
/// Threads: none. The matrix is immutable after construction.

#include <lowbit/arch/salient_binary_x86.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/salient_columns.hpp>
#include <lowbit/detail/salient_gemm.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// One block of a salient-binary matrix: its columns and how many of them (the first) are salient.
using salient_binary_block = salient_column_block;

/// BiLLM's packed weights (see the file comment). Models the weight policy of `quantized_linear`
/// (`rows()`, `cols()`, `bits_per_weight()`).
class salient_binary_matrix : public detail::salient_matrix_base<salient_binary_matrix> {
public:
    static constexpr Eigen::Index chunk_cols = 16; ///< columns per code word
    static constexpr int table_entries = 8;        ///< table entries per row and block

    salient_binary_matrix() = default;

    /// \param rows, cols  the shape `[rows x cols]` (≥ 1; cols < 65535)
    /// \param blocks      the blocks in packed order; their widths sum to cols
    /// \param source      padded_cols entries: the original column of each packed position, −1 on the
    ///                    padding (positions width..⌈width/16⌉·16 − 1 of each block); every column once
    /// \param split       p2 stored for every chunk (BiLLM's split non-salient groups); false: only for
    ///                    chunks holding salient columns (`p2_words()` per row)
    /// \param codes       rows × `row_words()` uint16 (row-major; per row the p1 word of every chunk,
    ///                    bit l = position 16c + l, then the p2 words in chunk order)
    /// \param table       rows × blocks × 8 fp16-exact finite values (row-major: row, block, entry)
    /// \throws shape_error (sizes), invalid_argument (source not a column map of the blocks, table not
    ///         fp16-exact), numeric_error (NaN/Inf in the table). O(rows·blocks + cols).
    salient_binary_matrix(Eigen::Index rows, Eigen::Index cols, std::vector<salient_binary_block> blocks,
                          std::vector<std::int32_t> source, bool split, std::vector<std::uint16_t> codes, const vector_f& table)
        : salient_matrix_base(rows, cols, std::move(blocks), std::move(source), std::move(codes), "salient_binary_matrix"),
          split_(split) {
        constexpr const char* where = "salient_binary_matrix";
        for (const auto& b : map_.blocks)
            for (Eigen::Index c = 0; c < (b.width + chunk_cols - 1) / chunk_cols; ++c)
                chunk_p2_.push_back(split || c * chunk_cols < b.salient ? static_cast<std::int32_t>(p2_words_++) : -1);
        detail::require_dim(static_cast<Eigen::Index>(codes_.size()), rows * row_words(), where, "code words");
        const Eigen::Index nb = static_cast<Eigen::Index>(map_.blocks.size());
        detail::require_dim(table.size(), rows * nb * table_entries, where, "table entries");
        detail::require_finite(table, where, "table");
        lut_.resize(static_cast<std::size_t>(table.size()));
        for (Eigen::Index e = 0; e < table.size(); ++e) {
            lut_[static_cast<std::size_t>(e)] = detail::float_to_fp16_bits(table(e));
            detail::require(detail::fp16_bits_to_float(lut_[static_cast<std::size_t>(e)]) == table(e), where,
                            "the table is not fp16-exact (round it with Eigen::half first)");
        }
    }

    /// The matrix of serialized `bytes` (as `bytes()` writes them) and its table.
    /// \throws format_error (truncated or inconsistent bytes, or a table the constructor refuses).
    [[nodiscard]] static salient_binary_matrix from_bytes(Eigen::Index rows, Eigen::Index cols, std::span<const std::uint8_t> bytes,
                                                          const vector_f& table) {
        constexpr const char* where = "salient_binary_matrix::from_bytes";
        detail::salient_byte_reader in{bytes, where};
        auto h = in.read_header(rows, cols, 1);
        Eigen::Index words = 0;
        for (const auto& b : h.blocks)
            words += (b.width + chunk_cols - 1) / chunk_cols +
                     ((h.flags & 1u) ? (b.width + chunk_cols - 1) / chunk_cols : (b.salient + chunk_cols - 1) / chunk_cols);
        std::vector<std::uint16_t> codes = in.read_codes(rows, words);
        return detail::salient_from_bytes(where, [&] {
            return salient_binary_matrix(rows, cols, std::move(h.blocks), std::move(h.source), (h.flags & 1u) != 0, std::move(codes), table);
        });
    }

    /// The serialized form: uint32 block count, uint32 flags (bit 0: split), per block uint16 width and
    /// salient count, the column map (uint16, 0xFFFF on padding), the code words (uint16), all
    /// little-endian. O(size).
    [[nodiscard]] std::vector<std::uint8_t> bytes() const {
        std::vector<std::uint8_t> out;
        auto put = [&](const void* p, std::size_t n) {
            const auto* b = static_cast<const std::uint8_t*>(p);
            out.insert(out.end(), b, b + n);
        };
        const auto nb = static_cast<std::uint32_t>(map_.blocks.size());
        put(&nb, 4);
        const std::uint32_t flags = split_ ? 1u : 0u;
        put(&flags, 4);
        map_.write(out);
        put(codes_.data(), codes_.size() * 2);
        return out;
    }

    /// The table as floats (rows × blocks × 8, row-major). O(size).
    [[nodiscard]] vector_f table() const {
        vector_f t(static_cast<Eigen::Index>(lut_.size()));
        for (std::size_t e = 0; e < lut_.size(); ++e) t(static_cast<Eigen::Index>(e)) = detail::fp16_bits_to_float(lut_[e]);
        return t;
    }

    [[nodiscard]] bool split() const { return split_; }                                ///< p2 on every chunk
    [[nodiscard]] Eigen::Index p2_words() const { return p2_words_; }                 ///< p2 words per row
    [[nodiscard]] Eigen::Index row_words() const { return map_.chunks() + p2_words_; } ///< code words per row

    /// Bits stored: the serialized bytes plus 16 per table entry. O(1).
    [[nodiscard]] double storage_bits() const { return 8.0 * serialized_bytes() + 16.0 * static_cast<double>(lut_.size()); }

    /// The arrays the kernels read.
    [[nodiscard]] detail::salient_binary_rows view() const {
        return {codes_.data(), lut_.data(), map_.chunk_salient.data(), chunk_p2_.data(), map_.first_chunk.data(), map_.chunks(),
                row_words(), static_cast<Eigen::Index>(map_.blocks.size())};
    }

    /// Row i decoded to float in packed order into dst (padded_cols() entries; the scalar reference).
    void decode_row_scalar(Eigen::Index i, float* dst) const {
        const Eigen::Index nb = static_cast<Eigen::Index>(map_.blocks.size());
        const detail::salient_binary_rows v = view();
        const std::uint16_t* words = codes_.data() + i * row_words();
        for (Eigen::Index b = 0; b < nb; ++b) {
            float t[table_entries];
            for (int e = 0; e < table_entries; ++e)
                t[e] = detail::fp16_bits_to_float(lut_[static_cast<std::size_t>((i * nb + b) * table_entries + e)]);
            for (Eigen::Index c = map_.first_chunk[static_cast<std::size_t>(b)]; c < map_.first_chunk[static_cast<std::size_t>(b) + 1]; ++c) {
                const std::uint32_t code = v.code(words, c);
                const unsigned sal = map_.chunk_salient[static_cast<std::size_t>(c)];
                for (int l = 0; l < chunk_cols; ++l) {
                    const unsigned e = 4u * ((sal >> l) & 1u) + 2u * ((code >> (16 + l)) & 1u) + ((code >> l) & 1u);
                    dst[c * chunk_cols + l] = t[e];
                }
            }
        }
    }

private:
    bool split_ = true;
    Eigen::Index p2_words_ = 0;
    std::vector<std::uint16_t> lut_;
    std::vector<std::int32_t> chunk_p2_;
};

/// From this many tokens on, a non-scalar `gemm` decodes 64 rows at a time to float and multiplies
/// them with all tokens (Eigen GEMM) instead of decoding the weights per token.
inline constexpr Eigen::Index salient_binary_batched_tokens = detail::salient_batched_tokens;

/// Below `salient_binary_batched_tokens`, tokens go through the row kernels in groups of this many
/// (each decoded weight vector serves the whole group).
inline constexpr int salient_binary_token_group = detail::salient_token_group;
#if LOWBIT_HAVE_X86_KERNELS
static_assert(salient_binary_token_group == detail::salient_binary_x86::max_tokens,
              "the x86 row kernels take exactly one token group");
#endif

/// Buffers of `gemm_into` for a salient-binary matrix (a call of a shape seen before allocates nothing).
using salient_binary_workspace = salient_workspace;

/// Y = X·Wᵀ `[tokens x rows]` into y for a salient-binary matrix with fp32 activations (see the file
/// comment for paths and the error bound). O(tokens·rows·cols).
/// \throws shape_error (x.cols() ≠ cols, empty x, y of the wrong shape), numeric_error (NaN/Inf in
///         x), invalid_argument (an ISA this CPU lacks).
inline void gemm_into(const salient_binary_matrix& w, const cref_matrix_f& x, act_fp32, Eigen::Ref<matrix_f> y,
                      salient_binary_workspace& ws, kernel_isa isa = kernel_isa::automatic) {
    const kernel_isa path = detail::salient_gemm_start(w, x, y, ws, isa, "gemm(salient_binary_matrix)");
    [[maybe_unused]] const detail::salient_binary_rows v = w.view();
    [[maybe_unused]] const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    [[maybe_unused]] const bool avx2 = LOWBIT_HAVE_X86_KERNELS && path == kernel_isa::avx2;
    detail::salient_gemm_run(
        w, y, ws, avx512 || avx2,
        [&]([[maybe_unused]] Eigen::Index i, [[maybe_unused]] float* dst) {
#if LOWBIT_HAVE_X86_KERNELS
            if (avx512) detail::salient_binary_x86::decode_row_avx512(v, i, dst);
            else detail::salient_binary_x86::decode_row_avx2(v, i, dst);
#endif
        },
        [&]([[maybe_unused]] Eigen::Index r0, [[maybe_unused]] Eigen::Index r1, [[maybe_unused]] const float* const* xp,
            [[maybe_unused]] int nt, [[maybe_unused]] float* out, [[maybe_unused]] Eigen::Index ldo) {
#if LOWBIT_HAVE_X86_KERNELS
            if (avx512) detail::salient_binary_x86::dot_rows_avx512(v, r0, r1, xp, nt, out, ldo);
            else detail::salient_binary_x86::dot_rows_avx2(v, r0, r1, xp, nt, out, ldo);
#endif
        });
}

/// Y = X·Wᵀ into a new matrix (`gemm_into` with a fresh workspace). \throws as gemm_into.
[[nodiscard]] inline matrix_f gemm(const salient_binary_matrix& w, const cref_matrix_f& x, act_fp32 act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    return detail::salient_gemm(w, x, act, isa);
}

/// Salient-binary weights × fp32 activations in `quantized_linear` (workspace local to the call).
template <>
struct linear_kernel<salient_binary_matrix, act_fp32> : detail::salient_linear_fp32<salient_binary_matrix> {};

/// Salient-binary weights × symmetric per-token integer activations: quantize-dequantize on the
/// grid of gemm.hpp's `quantize_activations`, then the fp32 kernel.
template <>
struct linear_kernel<salient_binary_matrix, act_int> : detail::salient_linear_int<salient_binary_matrix> {};

LOWBIT_END_NAMESPACE
