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
struct salient_binary_block {
    Eigen::Index width = 0;   ///< columns of the block (≥ 1)
    Eigen::Index salient = 0; ///< salient columns, 0 ≤ salient ≤ width
};

namespace detail {
/// fp16 bit pattern → float.
inline float fp16_bits_to_float(std::uint16_t h) {
    return static_cast<float>(Eigen::half(Eigen::half_impl::raw_uint16_to_half(h)));
}
/// fp16-exact float → its bit pattern.
inline std::uint16_t float_to_fp16_bits(float f) { return Eigen::half(f).x; }
} // namespace detail

/// BiLLM's packed weights (see the file comment). Models the weight policy of `quantized_linear`
/// (`rows()`, `cols()`, `bits_per_weight()`).
class salient_binary_matrix {
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
        : rows_(rows), cols_(cols), blocks_(std::move(blocks)), source_(std::move(source)), codes_(std::move(codes)), split_(split) {
        constexpr const char* where = "salient_binary_matrix";
        detail::require<shape_error>(rows >= 1 && cols >= 1, where, "the matrix is empty");
        detail::require(cols < 65535, where, "more than 65534 columns (the column map is stored as uint16)");
        detail::require<shape_error>(!blocks_.empty(), where, "no blocks");
        Eigen::Index total = 0;
        first_chunk_.assign(1, 0);
        for (const auto& b : blocks_) {
            detail::require<shape_error>(b.width >= 1 && b.width <= cols && b.salient >= 0 && b.salient <= b.width, where,
                                         "a block has width < 1, or salient outside [0, width]");
            total += b.width;
            detail::require<shape_error>(total <= cols, where, "the block widths exceed cols");
            const Eigen::Index chunks = (b.width + chunk_cols - 1) / chunk_cols;
            for (Eigen::Index c = 0; c < chunks; ++c) {
                chunk_p2_.push_back(split || c * chunk_cols < b.salient ? static_cast<std::int32_t>(p2_words_++) : -1);
                std::uint32_t sal = 0;
                for (Eigen::Index l = 0; l < chunk_cols; ++l)
                    if (c * chunk_cols + l < b.salient) sal |= 1u << l;
                chunk_salient_.push_back(static_cast<std::uint16_t>(sal));
            }
            first_chunk_.push_back(first_chunk_.back() + static_cast<std::int32_t>(chunks));
        }
        detail::require<shape_error>(total == cols, where, "the block widths do not sum to cols");
        const Eigen::Index chunks = first_chunk_.back();
        detail::require_dim(static_cast<Eigen::Index>(source_.size()), chunks * chunk_cols, where, "source entries");
        std::vector<char> seen(static_cast<std::size_t>(cols), 0);
        for (std::size_t b = 0; b < blocks_.size(); ++b)
            for (Eigen::Index t = 0; t < (first_chunk_[b + 1] - first_chunk_[b]) * chunk_cols; ++t) {
                const std::int32_t s = source_[static_cast<std::size_t>(first_chunk_[b] * chunk_cols + t)];
                if (t >= blocks_[b].width) {
                    detail::require(s == -1, where, "source holds a column on a padding position");
                    continue;
                }
                detail::require(s >= 0 && s < cols && !seen[static_cast<std::size_t>(s)], where,
                                "source is not a map of every column exactly once");
                seen[static_cast<std::size_t>(s)] = 1;
            }
        detail::require_dim(static_cast<Eigen::Index>(codes_.size()), rows * row_words(), where, "code words");
        const Eigen::Index nb = static_cast<Eigen::Index>(blocks_.size());
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
        std::size_t at = 0;
        auto take = [&](void* dst, std::size_t n) {
            detail::require<format_error>(bytes.size() - at >= n, where, "the bytes are truncated");
            if (n == 0) return; // an empty vector's data() may be null, which memcpy must not see
            std::memcpy(dst, bytes.data() + at, n);
            at += n;
        };
        detail::require<shape_error>(rows >= 1 && cols >= 1 && cols < 65535, where, "bad shape");
        std::uint32_t nb = 0, flags = 0;
        take(&nb, 4);
        take(&flags, 4);
        detail::require<format_error>(flags <= 1, where, "unknown flags");
        detail::require<format_error>(nb >= 1 && nb <= static_cast<std::uint32_t>(cols), where, "bad block count");
        std::vector<salient_binary_block> blocks(nb);
        Eigen::Index padded = 0, p2 = 0;
        for (auto& b : blocks) {
            std::uint16_t wv = 0, sv = 0;
            take(&wv, 2);
            take(&sv, 2);
            b.width = wv;
            b.salient = sv;
            padded += (b.width + chunk_cols - 1) / chunk_cols * chunk_cols;
            p2 += (flags & 1u) ? (b.width + chunk_cols - 1) / chunk_cols : (b.salient + chunk_cols - 1) / chunk_cols;
            detail::require<format_error>(padded <= cols + static_cast<Eigen::Index>(nb) * chunk_cols, where,
                                          "the block widths exceed the columns");
        }
        std::vector<std::uint16_t> src16(static_cast<std::size_t>(padded));
        take(src16.data(), src16.size() * 2);
        std::vector<std::int32_t> source(src16.size());
        for (std::size_t p = 0; p < src16.size(); ++p) source[p] = src16[p] == 0xFFFF ? -1 : src16[p];
        const auto words = static_cast<std::size_t>(rows * (padded / chunk_cols + p2));
        detail::require<format_error>((bytes.size() - at) == words * 2, where,
                                      "the code bytes do not match rows × (chunks + p2 words) uint16");
        std::vector<std::uint16_t> codes(words);
        take(codes.data(), words * 2);
        try {
            return salient_binary_matrix(rows, cols, std::move(blocks), std::move(source), (flags & 1u) != 0, std::move(codes), table);
        } catch (const error& e) { // shape, column map, table: the bytes (or table) are corrupt
            throw format_error(std::string("lowbit: ") + where + ": inconsistent bytes or table: " + e.what());
        }
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
        const auto nb = static_cast<std::uint32_t>(blocks_.size());
        put(&nb, 4);
        const std::uint32_t flags = split_ ? 1u : 0u;
        put(&flags, 4);
        for (const auto& b : blocks_) {
            const auto wv = static_cast<std::uint16_t>(b.width), sv = static_cast<std::uint16_t>(b.salient);
            put(&wv, 2);
            put(&sv, 2);
        }
        for (const std::int32_t s : source_) {
            const auto v = static_cast<std::uint16_t>(s < 0 ? 0xFFFF : s);
            put(&v, 2);
        }
        put(codes_.data(), codes_.size() * 2);
        return out;
    }

    /// The table as floats (rows × blocks × 8, row-major). O(size).
    [[nodiscard]] vector_f table() const {
        vector_f t(static_cast<Eigen::Index>(lut_.size()));
        for (std::size_t e = 0; e < lut_.size(); ++e) t(static_cast<Eigen::Index>(e)) = detail::fp16_bits_to_float(lut_[e]);
        return t;
    }

    [[nodiscard]] Eigen::Index rows() const { return rows_; }                                   ///< out features
    [[nodiscard]] Eigen::Index cols() const { return cols_; }                                   ///< in features
    [[nodiscard]] Eigen::Index padded_cols() const { return first_chunk_.back() * chunk_cols; } ///< packed width
    [[nodiscard]] const std::vector<salient_binary_block>& blocks() const { return blocks_; }   ///< the blocks
    [[nodiscard]] const std::vector<std::int32_t>& source() const { return source_; }           ///< column map
    [[nodiscard]] const std::vector<std::uint16_t>& codes() const { return codes_; }            ///< code words
    [[nodiscard]] bool split() const { return split_; }                                         ///< p2 on every chunk
    [[nodiscard]] Eigen::Index p2_words() const { return p2_words_; }                          ///< p2 words per row
    [[nodiscard]] Eigen::Index row_words() const { return first_chunk_.back() + p2_words_; }   ///< code words per row

    /// Bits stored: the serialized bytes plus 16 per table entry. O(1).
    [[nodiscard]] double storage_bits() const {
        const double bytes = 8.0 + 4.0 * static_cast<double>(blocks_.size()) + 2.0 * static_cast<double>(source_.size()) +
                             2.0 * static_cast<double>(codes_.size());
        return 8.0 * bytes + 16.0 * static_cast<double>(lut_.size());
    }
    /// storage_bits() per weight.
    [[nodiscard]] double bits_per_weight() const {
        return storage_bits() / (static_cast<double>(rows_) * static_cast<double>(cols_));
    }

    /// The weights `[rows x cols]` in the original column order. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f w(rows_, cols_);
        std::vector<float> row(static_cast<std::size_t>(padded_cols()));
        for (Eigen::Index i = 0; i < rows_; ++i) {
            decode_row_scalar(i, row.data());
            for (std::size_t p = 0; p < source_.size(); ++p)
                if (source_[p] >= 0) w(i, source_[p]) = row[p];
        }
        return w;
    }

    /// The arrays the kernels read.
    [[nodiscard]] detail::salient_binary_rows view() const {
        return {codes_.data(), lut_.data(), chunk_salient_.data(), chunk_p2_.data(), first_chunk_.data(), first_chunk_.back(),
                row_words(), static_cast<Eigen::Index>(blocks_.size())};
    }

    /// Row i decoded to float in packed order into dst (padded_cols() entries; the scalar reference).
    void decode_row_scalar(Eigen::Index i, float* dst) const {
        const Eigen::Index nb = static_cast<Eigen::Index>(blocks_.size());
        const detail::salient_binary_rows v = view();
        const std::uint16_t* words = codes_.data() + i * row_words();
        for (Eigen::Index b = 0; b < nb; ++b) {
            float t[table_entries];
            for (int e = 0; e < table_entries; ++e)
                t[e] = detail::fp16_bits_to_float(lut_[static_cast<std::size_t>((i * nb + b) * table_entries + e)]);
            for (Eigen::Index c = first_chunk_[static_cast<std::size_t>(b)]; c < first_chunk_[static_cast<std::size_t>(b) + 1]; ++c) {
                const std::uint32_t code = v.code(words, c);
                const unsigned sal = chunk_salient_[static_cast<std::size_t>(c)];
                for (int l = 0; l < chunk_cols; ++l) {
                    const unsigned e = 4u * ((sal >> l) & 1u) + 2u * ((code >> (16 + l)) & 1u) + ((code >> l) & 1u);
                    dst[c * chunk_cols + l] = t[e];
                }
            }
        }
    }

private:
    Eigen::Index rows_ = 0, cols_ = 0;
    std::vector<salient_binary_block> blocks_;
    std::vector<std::int32_t> source_;
    std::vector<std::uint16_t> codes_;
    bool split_ = true;
    Eigen::Index p2_words_ = 0;
    std::vector<std::uint16_t> lut_;
    std::vector<std::uint16_t> chunk_salient_;
    std::vector<std::int32_t> chunk_p2_;
    std::vector<std::int32_t> first_chunk_{0};
};

/// From this many tokens on, a non-scalar `gemm` decodes 64 rows at a time to float and multiplies
/// them with all tokens (Eigen GEMM) instead of decoding the weights per token.
inline constexpr Eigen::Index salient_binary_batched_tokens = 8;

/// Below `salient_binary_batched_tokens`, tokens go through the row kernels in groups of this many
/// (each decoded weight vector serves the whole group).
inline constexpr int salient_binary_token_group = 4;
#if LOWBIT_HAVE_X86_KERNELS
static_assert(salient_binary_token_group == detail::salient_binary_x86::max_tokens,
              "the x86 row kernels take exactly one token group");
#endif

/// Buffers of `gemm_into` for a salient-binary matrix (a call of a shape seen before allocates nothing).
struct salient_binary_workspace {
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x_packed; ///< tokens × padded cols
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> decoded;  ///< ≤ 64 × padded cols
    std::vector<float> dots;                                                        ///< per-token results
    std::vector<float> row;                                                         ///< one decoded row (scalar path)
};

/// Y = X·Wᵀ `[tokens x rows]` into y for a salient-binary matrix with fp32 activations (see the file
/// comment for paths and the error bound). O(tokens·rows·cols).
/// \throws shape_error (x.cols() ≠ cols, empty x, y of the wrong shape), numeric_error (NaN/Inf in
///         x), invalid_argument (an ISA this CPU lacks).
inline void gemm_into(const salient_binary_matrix& w, const cref_matrix_f& x, act_fp32, Eigen::Ref<matrix_f> y,
                      salient_binary_workspace& ws, kernel_isa isa = kernel_isa::automatic) {
    constexpr const char* where = "gemm(salient_binary_matrix)";
    detail::require_dim(x.cols(), w.cols(), where, "x.cols()");
    detail::require_nonempty(x, where, "x");
    detail::require_finite(x, where, "x");
    detail::require_dim(y.rows(), x.rows(), where, "y.rows()");
    detail::require_dim(y.cols(), w.rows(), where, "y.cols()");
    const kernel_isa path = detail::resolve_isa(isa, where);
    const Eigen::Index tokens = x.rows(), rows = w.rows(), np = w.padded_cols();
    ws.x_packed.resize(tokens, np);
    const auto& src = w.source();
    for (Eigen::Index k = 0; k < tokens; ++k)
        for (Eigen::Index p = 0; p < np; ++p) {
            const std::int32_t s = src[static_cast<std::size_t>(p)];
            ws.x_packed(k, p) = s >= 0 ? x(k, s) : 0.0f;
        }
    const detail::salient_binary_rows v = w.view();
    [[maybe_unused]] const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    [[maybe_unused]] const bool avx2 = LOWBIT_HAVE_X86_KERNELS && path == kernel_isa::avx2;
    if (tokens >= salient_binary_batched_tokens && (avx512 || avx2)) {
        constexpr Eigen::Index block_rows = 64;
        ws.decoded.resize(std::min(block_rows, rows), np);
        for (Eigen::Index r0 = 0; r0 < rows; r0 += block_rows) {
            const Eigen::Index nr = std::min(block_rows, rows - r0);
            for (Eigen::Index i = 0; i < nr; ++i) {
#if LOWBIT_HAVE_X86_KERNELS
                if (avx512) detail::salient_binary_x86::decode_row_avx512(v, r0 + i, ws.decoded.row(i).data());
                else detail::salient_binary_x86::decode_row_avx2(v, r0 + i, ws.decoded.row(i).data());
#endif
            }
            y.middleCols(r0, nr).noalias() = ws.x_packed * ws.decoded.topRows(nr).transpose();
        }
        return;
    }
    constexpr int group = salient_binary_token_group;
    ws.dots.resize(static_cast<std::size_t>(rows) * group);
    std::vector<float>& row = ws.row;
    for (Eigen::Index k0 = 0; k0 < tokens; k0 += group) {
        const int nt = static_cast<int>(std::min<Eigen::Index>(group, tokens - k0));
        const float* xp[group] = {};
        for (int k = 0; k < nt; ++k) xp[k] = ws.x_packed.row(k0 + k).data();
        float* d = ws.dots.data();
#if LOWBIT_HAVE_X86_KERNELS
        if (avx512) detail::salient_binary_x86::dot_rows_avx512(v, 0, rows, xp, nt, d, rows);
        else if (avx2) detail::salient_binary_x86::dot_rows_avx2(v, 0, rows, xp, nt, d, rows);
        else
#endif
        {
            row.resize(static_cast<std::size_t>(np));
            for (Eigen::Index i = 0; i < rows; ++i) {
                w.decode_row_scalar(i, row.data());
                for (int k = 0; k < nt; ++k) {
                    float acc = 0.0f;
                    for (Eigen::Index p = 0; p < np; ++p) acc += row[static_cast<std::size_t>(p)] * xp[k][p];
                    d[k * rows + i] = acc;
                }
            }
        }
        for (int k = 0; k < nt; ++k)
            for (Eigen::Index i = 0; i < rows; ++i) y(k0 + k, i) = d[k * rows + i];
    }
}

/// Y = X·Wᵀ into a new matrix (`gemm_into` with a fresh workspace). \throws as gemm_into.
[[nodiscard]] inline matrix_f gemm(const salient_binary_matrix& w, const cref_matrix_f& x, act_fp32 act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    salient_binary_workspace ws;
    matrix_f y(x.rows(), w.rows());
    gemm_into(w, x, act, y, ws, isa);
    return y;
}

/// Salient-binary weights × fp32 activations in `quantized_linear` (workspace local to the call).
template <>
struct linear_kernel<salient_binary_matrix, act_fp32> {
    static void run(const salient_binary_matrix& w, const act_fp32& act, const cref_matrix_f& x, matrix_f& y) {
        y.resize(x.rows(), w.rows());
        salient_binary_workspace ws;
        gemm_into(w, x, act, y, ws);
    }
};

/// Salient-binary weights × symmetric per-token integer activations: quantize-dequantize on the
/// grid of gemm.hpp's `quantize_activations`, then the fp32 kernel.
template <>
struct linear_kernel<salient_binary_matrix, act_int> {
    static void run(const salient_binary_matrix& w, const act_int& act, const cref_matrix_f& x, matrix_f& y) {
        const matrix_f xq = detail::int_fake_quantize(x, act.bits);
        linear_kernel<salient_binary_matrix, act_fp32>::run(w, act_fp32{}, xq, y);
    }
};

LOWBIT_END_NAMESPACE
