#pragma once
/// \file granularity.hpp
/// Granularity policies: which elements of a weight `[out x in]` (or activation `[tokens x in]`)
/// matrix share one set of quantization parameters.
///
/// | policy       | parameters                        | shape of a parameter matrix |
/// |--------------|-----------------------------------|-----------------------------|
/// | `per_tensor` | one set for the whole matrix      | `[1 x 1]`                   |
/// | `per_row`    | one set per output channel (row)  | `[rows x 1]`                |
/// | `per_token`  | one set per token (activation row)| `[rows x 1]`                |
/// | `per_group`  | one set per row and per G columns | `[rows x ceil(cols / G)]`   |
///
/// `per_group{G, tail}` splits the input dimension into consecutive groups of G ≥ 1 columns. When
/// G does not divide `cols` the tail policy decides, never silently:
/// - `tail_policy::error`        — throw `shape_error` (the default);
/// - `tail_policy::smaller_last` — the last group holds the `cols mod G` remaining columns;
/// - `tail_policy::zero_pad`     — the last group is fitted as if padded with zero columns to G
///                                  (the padding takes part in the fit, e.g. in a mean or a range,
///                                  but is not stored or dequantized).
/// In every case column j belongs to group `j / G`.

#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// What `per_group` does with a last group narrower than G.
enum class tail_policy {
    error,        ///< refuse: `cols` must be a multiple of G
    smaller_last, ///< last group has `cols mod G` columns
    zero_pad      ///< last group is fitted padded with zeros to G columns
};

/// Granularity tag: one parameter set for the whole matrix.
struct per_tensor {};
/// Granularity tag: one parameter set per row (output channel of a weight).
struct per_row {};
/// Granularity tag: one parameter set per row of an activation matrix `[tokens x in]` (a token).
struct per_token {};
/// Granularity value: one parameter set per row and per `size` consecutive input columns.
struct per_group {
    Eigen::Index size = 128;               ///< G ≥ 1
    tail_policy tail = tail_policy::error; ///< what to do when G does not divide the column count
};

/// One group of consecutive columns: `[begin, begin + width)`, fitted as `padded_width` columns
/// (`padded_width > width` only for the last group under `tail_policy::zero_pad`).
struct column_group {
    Eigen::Index begin = 0;        ///< first column
    Eigen::Index width = 0;        ///< stored columns
    Eigen::Index padded_width = 0; ///< columns the fit sees (stored + zero padding)
};

/// Compile-time facts about a granularity policy. The primary template refuses unknown types.
template <class G>
struct granularity_traits {
    static_assert(detail::dependent_false<G>,
                  "lowbit: unknown granularity (use per_tensor, per_row, per_token or per_group)");
};
/// `per_tensor`: parameters shared by all rows.
template <>
struct granularity_traits<per_tensor> {
    static constexpr bool shared_across_rows = true; ///< one parameter row for all rows
};
/// `per_row`: one parameter row per matrix row.
template <>
struct granularity_traits<per_row> {
    static constexpr bool shared_across_rows = false; ///< one parameter row per matrix row
};
/// `per_token`: one parameter row per token.
template <>
struct granularity_traits<per_token> {
    static constexpr bool shared_across_rows = false; ///< one parameter row per matrix row
};
/// `per_group`: one parameter row per matrix row, one column per group.
template <>
struct granularity_traits<per_group> {
    static constexpr bool shared_across_rows = false; ///< one parameter row per matrix row
};

/// True for the four granularity types of this header.
template <class G>
concept Granularity = std::is_same_v<G, per_tensor> || std::is_same_v<G, per_row> ||
                      std::is_same_v<G, per_token> || std::is_same_v<G, per_group>;

/// Checks a `per_group` against `cols` columns: G ≥ 1 (`invalid_argument`) and, under
/// `tail_policy::error`, `cols mod G == 0` (`shape_error`). `where` names the caller.
inline void check_granularity(const per_group& g, Eigen::Index cols, const char* where) {
    detail::require(g.size >= 1, where, "group size must be >= 1, got " + std::to_string(g.size));
    if (g.tail == tail_policy::error && cols % g.size != 0)
        throw shape_error(std::string("lowbit: ") + where + ": " + std::to_string(cols) +
                          " columns are not a multiple of the group size " + std::to_string(g.size) +
                          " (choose tail_policy::smaller_last or tail_policy::zero_pad)");
}
/// Whole-row granularities have nothing to check.
template <class G>
    requires(!std::is_same_v<G, per_group>)
inline void check_granularity(const G&, Eigen::Index, const char*) {}

/// The column groups of a matrix with `cols` columns under granularity `g`, in column order.
/// Whole-row granularities give one group `{0, cols, cols}`. Throws as `check_granularity`.
/// Complexity O(cols / G).
template <Granularity G>
[[nodiscard]] inline std::vector<column_group> column_groups(Eigen::Index cols, const G& g, const char* where) {
    check_granularity(g, cols, where);
    if constexpr (std::is_same_v<G, per_group>) {
        std::vector<column_group> out;
        out.reserve(static_cast<std::size_t>((cols + g.size - 1) / g.size));
        for (Eigen::Index b = 0; b < cols; b += g.size) {
            const Eigen::Index w = std::min(g.size, cols - b);
            out.push_back({b, w, g.tail == tail_policy::zero_pad ? g.size : w});
        }
        return out;
    } else {
        return {column_group{0, cols, cols}};
    }
}

/// Number of parameter columns (groups) for `cols` columns under `g`.
template <Granularity G>
[[nodiscard]] inline Eigen::Index group_count(Eigen::Index cols, const G& g) {
    if constexpr (std::is_same_v<G, per_group>)
        return g.size >= 1 ? (cols + g.size - 1) / g.size : 0;
    else
        return 1;
}

/// Width of one parameter group for `cols` columns (G for `per_group`, `cols` otherwise); the
/// group of column j is `j / group_width(cols, g)`.
template <Granularity G>
[[nodiscard]] inline Eigen::Index group_width(Eigen::Index cols, const G& g) {
    if constexpr (std::is_same_v<G, per_group>)
        return g.size;
    else
        return cols > 0 ? cols : 1;
}

namespace detail {

/// True for granularities that give every row its own parameters over column groups (per_row,
/// per_group): the ones weight quantizers without a shared-across-rows fit accept.
template <class G>
inline constexpr bool row_wise_granularity = std::is_same_v<G, per_row> || std::is_same_v<G, per_group>;

/// Copies the columns of group `cg` of `w` into a `[rows x padded_width]` matrix, zero-padded.
inline matrix_f padded_block(const cref_matrix_f& w, const column_group& cg) {
    matrix_f b = matrix_f::Zero(w.rows(), cg.padded_width);
    b.leftCols(cg.width) = w.middleCols(cg.begin, cg.width);
    return b;
}

/// The `[padded_width x padded_width]` block of an input Gram matrix `s` for group `cg`, zero in the
/// padding; an empty matrix when `s` is null (unweighted fits).
inline matrix_d padded_gram_block(const matrix_d* s, const column_group& cg) {
    if (!s) return {};
    matrix_d g = matrix_d::Zero(cg.padded_width, cg.padded_width);
    g.topLeftCorner(cg.width, cg.width) = s->block(cg.begin, cg.begin, cg.width, cg.width);
    return g;
}

} // namespace detail

LOWBIT_END_NAMESPACE
