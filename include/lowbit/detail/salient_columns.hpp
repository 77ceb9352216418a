#pragma once
/// \file detail/salient_columns.hpp
/// The column map shared by the salient packed layouts (salient_binary.hpp: BiLLM, salient_ternary.hpp:
/// TRA-GPTQ): the columns form blocks (the solver's GPTQ blocks, in processing order); inside a block
/// the k salient columns come first, then the other columns, then zero padding to a multiple of 16.
/// `source[p]` is the original column at packed position p (−1 on padding), so a kernel gathers x
/// once per token. Serialized as, per block, uint16 width and uint16 salient count, then the map as
/// uint16 per padded position (0xFFFF on padding), little-endian (the layouts put their own header
/// before and their code words after it). Also the fp16 bit helpers of both layouts.

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// One block of a salient layout: its columns and how many of them (the first) are salient.
struct salient_column_block {
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

/// Columns per code word of the salient layouts.
inline constexpr Eigen::Index salient_chunk_cols = 16;

/// A validated column map (see the file comment) and what the kernels derive from it. O(cols + blocks).
struct salient_column_map {
    std::vector<salient_column_block> blocks; ///< the blocks in packed order
    std::vector<std::int32_t> source;         ///< padded_cols() entries: original column, −1 on padding
    std::vector<std::int32_t> first_chunk{0}; ///< blocks + 1: first 16-column chunk of each block
    std::vector<std::uint16_t> chunk_salient; ///< per chunk: bit l set if lane l is a salient column
    std::vector<std::uint16_t> chunk_real;    ///< per chunk: bit l set if lane l is a column (not padding)

    salient_column_map() = default;

    /// \param cols    columns of the matrix (1 ≤ cols < 65535)
    /// \param blocks  widths ≥ 1 summing to cols, 0 ≤ salient ≤ width
    /// \param source  ⌈width/16⌉·16 entries per block: every column once, −1 on the padding positions
    /// \throws shape_error (blocks, source size), invalid_argument (cols ≥ 65535, source not a column map).
    salient_column_map(Eigen::Index cols, std::vector<salient_column_block> b, std::vector<std::int32_t> s, const char* where)
        : blocks(std::move(b)), source(std::move(s)) {
        detail::require<shape_error>(cols >= 1, where, "the matrix is empty");
        detail::require(cols < 65535, where, "more than 65534 columns (the column map is stored as uint16)");
        detail::require<shape_error>(!blocks.empty(), where, "no blocks");
        Eigen::Index total = 0;
        for (const auto& blk : blocks) {
            detail::require<shape_error>(blk.width >= 1 && blk.width <= cols && blk.salient >= 0 && blk.salient <= blk.width, where,
                                         "a block has width < 1, or salient outside [0, width]");
            total += blk.width;
            detail::require<shape_error>(total <= cols, where, "the block widths exceed cols");
            const Eigen::Index chunks = (blk.width + salient_chunk_cols - 1) / salient_chunk_cols;
            for (Eigen::Index c = 0; c < chunks; ++c) {
                std::uint32_t sal = 0, real = 0;
                for (Eigen::Index l = 0; l < salient_chunk_cols; ++l) {
                    if (c * salient_chunk_cols + l < blk.salient) sal |= 1u << l;
                    if (c * salient_chunk_cols + l < blk.width) real |= 1u << l;
                }
                chunk_salient.push_back(static_cast<std::uint16_t>(sal));
                chunk_real.push_back(static_cast<std::uint16_t>(real));
            }
            first_chunk.push_back(first_chunk.back() + static_cast<std::int32_t>(chunks));
        }
        detail::require<shape_error>(total == cols, where, "the block widths do not sum to cols");
        detail::require_dim(static_cast<Eigen::Index>(source.size()), padded_cols(), where, "source entries");
        std::vector<char> seen(static_cast<std::size_t>(cols), 0);
        for (std::size_t bi = 0; bi < blocks.size(); ++bi)
            for (Eigen::Index t = 0; t < (first_chunk[bi + 1] - first_chunk[bi]) * salient_chunk_cols; ++t) {
                const std::int32_t v = source[static_cast<std::size_t>(first_chunk[bi] * salient_chunk_cols + t)];
                if (t >= blocks[bi].width) {
                    detail::require(v == -1, where, "source holds a column on a padding position");
                    continue;
                }
                detail::require(v >= 0 && v < cols && !seen[static_cast<std::size_t>(v)], where,
                                "source is not a map of every column exactly once");
                seen[static_cast<std::size_t>(v)] = 1;
            }
    }

    [[nodiscard]] Eigen::Index chunks() const { return first_chunk.back(); }                  ///< chunks per row
    [[nodiscard]] Eigen::Index padded_cols() const { return chunks() * salient_chunk_cols; } ///< packed width
    /// Bytes `write` appends.
    [[nodiscard]] std::size_t serialized_bytes() const { return 4 * blocks.size() + 2 * source.size(); }

    /// Appends per block uint16 width and salient count, then the map (uint16, 0xFFFF on padding).
    void write(std::vector<std::uint8_t>& out) const {
        auto put16 = [&](std::uint16_t v) {
            out.push_back(static_cast<std::uint8_t>(v & 0xFFu));
            out.push_back(static_cast<std::uint8_t>(v >> 8));
        };
        for (const auto& blk : blocks) {
            put16(static_cast<std::uint16_t>(blk.width));
            put16(static_cast<std::uint16_t>(blk.salient));
        }
        for (const std::int32_t v : source) put16(static_cast<std::uint16_t>(v < 0 ? 0xFFFF : v));
    }
};

/// A cursor over serialized bytes that throws format_error instead of reading past the end.
struct salient_byte_reader {
    std::span<const std::uint8_t> bytes; ///< the input
    const char* where = "";              ///< the caller, for messages
    std::size_t at = 0;                  ///< bytes consumed

    /// Copies the next n bytes to dst. \throws format_error if fewer are left.
    void take(void* dst, std::size_t n) {
        detail::require<format_error>(bytes.size() - at >= n, where, "the bytes are truncated");
        if (n == 0) return; // an empty vector's data() may be null, which memcpy must not see
        std::memcpy(dst, bytes.data() + at, n);
        at += n;
    }
    /// Bytes not consumed yet.
    [[nodiscard]] std::size_t left() const { return bytes.size() - at; }

    /// Reads `nb` blocks and their column map as `salient_column_map::write` wrote them, for a matrix of
    /// `cols` columns (only their sizes are checked here: the map's constructor checks the rest).
    /// \throws format_error (truncated, block count or widths impossible for cols).
    std::pair<std::vector<salient_column_block>, std::vector<std::int32_t>> read_columns(std::uint32_t nb, Eigen::Index cols) {
        detail::require<format_error>(nb >= 1 && nb <= static_cast<std::uint32_t>(cols), where, "bad block count");
        std::vector<salient_column_block> blocks(nb);
        Eigen::Index padded = 0;
        for (auto& blk : blocks) {
            std::uint16_t wv = 0, sv = 0;
            take(&wv, 2);
            take(&sv, 2);
            blk.width = wv;
            blk.salient = sv;
            padded += (blk.width + salient_chunk_cols - 1) / salient_chunk_cols * salient_chunk_cols;
            detail::require<format_error>(padded <= cols + static_cast<Eigen::Index>(nb) * salient_chunk_cols, where,
                                          "the block widths exceed the columns");
        }
        std::vector<std::uint16_t> src16(static_cast<std::size_t>(padded));
        take(src16.data(), src16.size() * 2);
        std::vector<std::int32_t> source(src16.size());
        for (std::size_t p = 0; p < src16.size(); ++p) source[p] = src16[p] == 0xFFFF ? -1 : src16[p];
        return {std::move(blocks), std::move(source)};
    }

    /// What `read_header` reads.
    struct header {
        std::uint32_t flags = 0;                  ///< the layout's flags
        std::vector<salient_column_block> blocks; ///< the blocks
        std::vector<std::int32_t> source;         ///< the column map
    };
    /// The header of a salient layout: uint32 block count, uint32 flags (≤ max_flags), then the blocks
    /// and their column map, for a matrix of `rows` × `cols`.
    /// \throws shape_error (rows < 1, cols outside 1..65534), format_error (truncated, unknown flags,
    ///         block count or widths impossible for cols).
    [[nodiscard]] header read_header(Eigen::Index rows, Eigen::Index cols, std::uint32_t max_flags) {
        detail::require<shape_error>(rows >= 1 && cols >= 1 && cols < 65535, where, "bad shape");
        std::uint32_t nb = 0;
        header h;
        take(&nb, 4);
        take(&h.flags, 4);
        detail::require<format_error>(h.flags <= max_flags, where, "unknown flags");
        auto [blocks, source] = read_columns(nb, cols);
        h.blocks = std::move(blocks);
        h.source = std::move(source);
        return h;
    }

    /// The rest of the bytes as `rows` rows of `row_words` uint16 code words.
    /// \throws format_error (any other length).
    [[nodiscard]] std::vector<std::uint16_t> read_codes(Eigen::Index rows, Eigen::Index row_words) {
        const std::size_t row_bytes = 2 * static_cast<std::size_t>(row_words);
        detail::require<format_error>(row_bytes == 0 ? left() == 0 : left() % row_bytes == 0 && left() / row_bytes == static_cast<std::size_t>(rows),
                                      where, "the code bytes do not match rows × code words per row (uint16)");
        std::vector<std::uint16_t> codes(left() / 2);
        take(codes.data(), codes.size() * 2);
        return codes;
    }
};

/// `make()`, with every lowbit error it throws turned into format_error (a layout built from bytes:
/// the bytes or their fp16 values are corrupt).
template <class Make>
[[nodiscard]] auto salient_from_bytes(const char* where, Make&& make) -> decltype(make()) {
    try {
        return make();
    } catch (const error& e) {
        throw format_error(std::string("lowbit: ") + where + ": inconsistent bytes or fp16 values: " + e.what());
    }
}

/// What both salient layouts hold and show: the shape, the column map and the code words;
/// `dequantize()` through the layout's `decode_row_scalar`, `bits_per_weight()` through its
/// `storage_bits()` (CRTP).
template <class Derived>
class salient_matrix_base {
public:
    [[nodiscard]] Eigen::Index rows() const { return rows_; }                                        ///< out features
    [[nodiscard]] Eigen::Index cols() const { return cols_; }                                        ///< in features
    [[nodiscard]] Eigen::Index padded_cols() const { return map_.padded_cols(); }                   ///< packed width
    [[nodiscard]] const std::vector<salient_column_block>& blocks() const { return map_.blocks; }   ///< the blocks
    [[nodiscard]] const std::vector<std::int32_t>& source() const { return map_.source; }           ///< column map
    [[nodiscard]] const std::vector<std::uint16_t>& codes() const { return codes_; }                ///< code words

    /// storage_bits() per weight.
    [[nodiscard]] double bits_per_weight() const {
        return static_cast<const Derived&>(*this).storage_bits() / (static_cast<double>(rows_) * static_cast<double>(cols_));
    }

    /// The weights `[rows x cols]` in the original column order. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        matrix_f w(rows_, cols_);
        std::vector<float> row(static_cast<std::size_t>(padded_cols()));
        for (Eigen::Index i = 0; i < rows_; ++i) {
            static_cast<const Derived&>(*this).decode_row_scalar(i, row.data());
            for (std::size_t p = 0; p < map_.source.size(); ++p)
                if (map_.source[p] >= 0) w(i, map_.source[p]) = row[p];
        }
        return w;
    }

protected:
    salient_matrix_base() = default;
    /// \throws as `salient_column_map`, shape_error (rows < 1).
    salient_matrix_base(Eigen::Index rows, Eigen::Index cols, std::vector<salient_column_block> blocks,
                        std::vector<std::int32_t> source, std::vector<std::uint16_t> codes, const char* where)
        : rows_(rows), cols_(cols), map_(cols, std::move(blocks), std::move(source), where), codes_(std::move(codes)) {
        detail::require<shape_error>(rows >= 1, where, "the matrix is empty");
    }
    /// Bytes `bytes()` writes: 8 of header, the map, the code words.
    [[nodiscard]] double serialized_bytes() const {
        return 8.0 + static_cast<double>(map_.serialized_bytes()) + 2.0 * static_cast<double>(codes_.size());
    }

    Eigen::Index rows_ = 0, cols_ = 0;  ///< shape
    salient_column_map map_;            ///< blocks, column map, chunk masks
    std::vector<std::uint16_t> codes_;  ///< code words, row-major
};

/// The column map a salient layout gets from a solver's blocks (BiLLM's and TRA-GPTQ's results): per
/// block (`begin`, `width`, `salient`: block-relative processing columns, in their order) the salient
/// columns, then the others ascending, then padding; processing column p is original column order[p]
/// (identity when `order` is empty).
struct salient_packing {
    std::vector<salient_column_block> blocks; ///< widths and salient counts
    std::vector<std::int32_t> source;         ///< original column per packed position, −1 on padding
    std::vector<Eigen::Index> packed_col;     ///< block-relative processing column per packed position, −1 on padding
};

/// `salient_packing` of `solver_blocks` (each with `begin`, `width`, `salient`). O(cols).
template <class Block>
[[nodiscard]] inline salient_packing salient_packing_of(const std::vector<Block>& solver_blocks, const std::vector<Eigen::Index>& order) {
    salient_packing out;
    for (const auto& b : solver_blocks) {
        out.blocks.push_back({b.width, static_cast<Eigen::Index>(b.salient.size())});
        std::vector<char> is_salient(static_cast<std::size_t>(b.width), 0);
        for (const Eigen::Index j : b.salient) is_salient[static_cast<std::size_t>(j)] = 1;
        std::vector<Eigen::Index> cols(b.salient.begin(), b.salient.end());
        for (Eigen::Index j = 0; j < b.width; ++j)
            if (!is_salient[static_cast<std::size_t>(j)]) cols.push_back(j);
        const Eigen::Index padded = (b.width + salient_chunk_cols - 1) / salient_chunk_cols * salient_chunk_cols;
        for (Eigen::Index t = 0; t < padded; ++t) {
            const bool real = t < b.width;
            const Eigen::Index j = real ? cols[static_cast<std::size_t>(t)] : -1;
            out.packed_col.push_back(j);
            const Eigen::Index proc = b.begin + j;
            out.source.push_back(real ? static_cast<std::int32_t>(order.empty() ? proc : order[static_cast<std::size_t>(proc)]) : -1);
        }
    }
    return out;
}

} // namespace detail

LOWBIT_END_NAMESPACE
