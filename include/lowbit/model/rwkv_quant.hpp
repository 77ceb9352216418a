#pragma once
/// \file model/rwkv_quant.hpp
/// RWKVQuant (docs/sources.md §10) on RWKV-4 models (rwkv.hpp): per weight matrix, the coarse-to-fine
/// uniformity proxy (rwkv_proxy.hpp) chooses scalar quantization (GPTQ on a uniform grid with
/// per-group fp16 scale and zero point) or vector quantization (GPTVQ-style: weighted k-means
/// codebooks over 2-vectors, Hessian-weighted, with GPTQ error feedback, 8-bit codebooks); the
/// codebooks of the matrices whose outputs enter an element-wise product (att receptance, ffn
/// receptance, att key) weight each output row by the product's sensitivity (§10.3). Baselines at
/// the same bits: RTN, GPTQ, VQ alone.
///
/// Storage (everything stored is counted by `storage_bits()`):
/// - scalar (`grouped_int_linear`): `bits`-bit codes, and per row and group of `group_size`
///   columns an fp16 scale and an fp16 zero point: bits + 32/group_size per weight (3.25 at 3/128);
/// - vector (`vq_linear`): per d-vector a log2(K)-bit index (K = 2^(bits·d): `bits` per weight), and
///   per tile of `tile_rows` × `tile_cols` weights a codebook of K·d int8 values plus an fp16 scale:
///   bits + (K·d·8 + 16)/(tile_rows·tile_cols) per weight (3.254 at 3 bits, d 2, 64 × 64 tiles).
/// Both operators keep the decoded float weight for `apply` (Eigen GEMM; the codes and codebooks
/// are kept for saving). Embedding, head and every element-wise vector stay float.
///
/// Pipeline (`rwkv_quantize`), layer by layer so each layer sees the inputs of the already
/// quantized earlier layers: capture the inputs of the layer's 7 linears over the calibration
/// windows (each 512-token window from the zero state), accumulate one GPTQ Hessian per linear
/// (H = 2/N Σ xᵀx) and, for the product paths, the row weights a_r = E_t[g_{t,r}²] (g from
/// `rwkv_hooks::on_product_sensitivity`); quantize the 7 linears; replace them.
///
/// Determinism: no threads; k-means seeds derive from `seed`, the layer, slot and tile.
///
/// Compile time: `rwkv_quantize` and the grouped / VQ solvers are function templates with one defaulted,
/// unused parameter (`template <class = void>`; call them as ordinary functions), so their Eigen
/// decompositions and solvers are compiled only in a translation unit that calls them
/// (docs/compile_time.md).

#include <lowbit/config.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gptq.hpp>
#include <lowbit/granularity.hpp>
#include <lowbit/io/dtype_convert.hpp>
#include <lowbit/io/safetensors.hpp>
#include <lowbit/model/rwkv.hpp>
#include <lowbit/rtn.hpp>
#include <lowbit/rwkv_proxy.hpp>
#include <lowbit/types.hpp>
#include <lowbit/vq.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <span>
#include <memory>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE


// ---------------------------------------------------------------------------------------------
// Scalar path: grouped integer grids with fp16 parameters
// ---------------------------------------------------------------------------------------------

/// `GroupQuantizer` (concepts.hpp): the asymmetric RTN grid of rtn.hpp per row of a column group,
/// with scale and zero point rounded to fp16 before use (so the stored parameters are exactly the
/// ones the codes were chosen with). A scale that rounds to 0 becomes the smallest fp16 subnormal.
struct fp16_grid_quantizer {
    int bits = 3; ///< 2..8
    /// Per-row scale and zero point (fp16 values).
    using params = rtn_quantizer::params;
    /// Fits one grid per row of `block` `[rows x g]`. \throws invalid_argument (bits).
    [[nodiscard]] params fit(const cref_matrix_f& block) const {
        rtn_quantizer q;
        q.bits = bits;
        params p = q.fit(block);
        for (Eigen::Index i = 0; i < p.scale.size(); ++i) {
            p.scale(i) = std::max(detail::round_fp16(p.scale(i)), 0x1.0p-24f);
            p.zero(i) = detail::round_fp16(p.zero(i));
        }
        return p;
    }
    /// out(i) = s_i·(clamp(round(col(i)/s_i) + z_i, 0, 2^bits − 1) − z_i).
    void round_column(const params& p, const cref_vector_f& col, Eigen::Ref<vector_f> out) const {
        for (Eigen::Index i = 0; i < col.size(); ++i) {
            const int_grid g{p.scale(i), p.zero(i)};
            out(i) = detail::int_value(detail::int_code(col(i), g, bits), g);
        }
    }
};
static_assert(GroupQuantizer<fp16_grid_quantizer>);

/// A linear layer stored as `bits`-bit codes with per-(row, group) fp16 scale and zero point:
/// w_ij = s_{i,g}·(q_ij − z_{i,g}), g = j / group_size. Models `LinearOperator`.
class grouped_int_linear {
public:
    /// \param codes  `[out x in]` codes in [0, 2^bits − 1]; \param scale, zero `[out x groups]`.
    /// \throws shape_error (sizes disagree), invalid_argument (bits, group_size, code range).
    grouped_int_linear(matrix_u8 codes, matrix_f scale, matrix_f zero, int bits, Eigen::Index group_size)
        : codes_(std::move(codes)), scale_(std::move(scale)), zero_(std::move(zero)), bits_(bits), group_(group_size) {
        constexpr const char* where = "grouped_int_linear";
        detail::require_bits(bits_, where);
        detail::require(group_ >= 1, where, "group_size must be >= 1");
        detail::require<shape_error>(codes_.size() > 0, where, "argument 'codes' is empty");
        const Eigen::Index groups = (codes_.cols() + group_ - 1) / group_;
        detail::require_dim(scale_.rows(), codes_.rows(), where, "rows of 'scale'");
        detail::require_dim(scale_.cols(), groups, where, "columns of 'scale'");
        detail::require_dim(zero_.rows(), codes_.rows(), where, "rows of 'zero'");
        detail::require_dim(zero_.cols(), groups, where, "columns of 'zero'");
        detail::require(codes_.maxCoeff() < (1 << bits_), where, "a code exceeds 2^bits − 1");
        w_.resize(codes_.rows(), codes_.cols());
        for (Eigen::Index i = 0; i < w_.rows(); ++i)
            for (Eigen::Index j = 0; j < w_.cols(); ++j)
                w_(i, j) = detail::int_value(codes_(i, j), int_grid{scale_(i, j / group_), zero_(i, j / group_)});
    }
    /// Encodes `w` (each value on its group's grid, e.g. a GPTQ result) with the given parameters.
    /// \throws as the constructor.
    [[nodiscard]] static grouped_int_linear encode(const matrix_f& w, const matrix_f& scale, const matrix_f& zero, int bits,
                                                   Eigen::Index group_size) {
        matrix_u8 codes(w.rows(), w.cols());
        for (Eigen::Index i = 0; i < w.rows(); ++i)
            for (Eigen::Index j = 0; j < w.cols(); ++j)
                codes(i, j) = detail::int_code(w(i, j), int_grid{scale(i, j / group_size), zero(i, j / group_size)}, bits);
        return {std::move(codes), scale, zero, bits, group_size};
    }
    [[nodiscard]] Eigen::Index in_features() const { return w_.cols(); }  ///< in
    [[nodiscard]] Eigen::Index out_features() const { return w_.rows(); } ///< out
    /// y = x·Ŵᵀ with the decoded weights (Eigen GEMM). O(tokens·in·out).
    void apply(const matrix_f& x, matrix_f& y) const {
        y.resize(x.rows(), w_.rows());
        y.noalias() = x * w_.transpose();
    }
    /// bits·in·out + 32 per (row, group) (fp16 scale and zero point).
    [[nodiscard]] double storage_bits() const {
        return static_cast<double>(bits_) * static_cast<double>(codes_.size()) + 32.0 * static_cast<double>(scale_.size());
    }
    [[nodiscard]] const matrix_f& weight() const { return w_; }     ///< decoded weights `[out x in]`
    [[nodiscard]] const matrix_u8& codes() const { return codes_; } ///< codes `[out x in]`
    [[nodiscard]] const matrix_f& scale() const { return scale_; }  ///< `[out x groups]` fp16 values
    [[nodiscard]] const matrix_f& zero() const { return zero_; }    ///< `[out x groups]` fp16 values
    [[nodiscard]] int bits() const { return bits_; }                ///< code bits
    [[nodiscard]] Eigen::Index group_size() const { return group_; } ///< columns per group

private:
    matrix_u8 codes_;
    matrix_f scale_, zero_;
    int bits_;
    Eigen::Index group_;
    matrix_f w_;
};

/// RTN of `w` `[m x n]` on `fp16_grid_quantizer` grids per row and group of `group_size` columns
/// (the last group may be narrower). O(m·n). \throws invalid_argument (bits, group_size), shape_error.
template <class = void>
[[nodiscard]] grouped_int_linear rtn_grouped(const matrix_f& w, int bits, Eigen::Index group_size) {
    detail::require(group_size >= 1, "rtn_grouped", "group_size must be >= 1");
    detail::require_nonempty(w, "rtn_grouped", "w");
    const fp16_grid_quantizer q{bits};
    const Eigen::Index groups = (w.cols() + group_size - 1) / group_size;
    matrix_f scale(w.rows(), groups), zero(w.rows(), groups), wq(w.rows(), w.cols());
    vector_f out(w.rows());
    for (Eigen::Index g = 0; g < groups; ++g) {
        const Eigen::Index b = g * group_size, width = std::min(group_size, w.cols() - b);
        const auto p = q.fit(w.middleCols(b, width));
        scale.col(g) = p.scale;
        zero.col(g) = p.zero;
        for (Eigen::Index j = b; j < b + width; ++j) {
            q.round_column(p, w.col(j), out);
            wq.col(j) = out;
        }
    }
    return grouped_int_linear::encode(wq, scale, zero, bits, group_size);
}

/// GPTQ (gptq.hpp) of `w` with Hessian `h` on `fp16_grid_quantizer` grids per row and group of
/// `group_size` columns (the last group may be narrower; no activation order, so groups are
/// contiguous columns).
/// `loss` receives the GPTQ loss when given. O(n³ + m·n²).
/// \throws as gptq_quantize.
template <class = void>
[[nodiscard]] grouped_int_linear gptq_grouped(const matrix_f& w, const Eigen::Ref<const matrix_d>& h, int bits,
                                              Eigen::Index group_size, gptq_options opt = {}, double* loss = nullptr) {
    opt.act_order = false;
    const auto r = gptq_quantize(w, h, fp16_grid_quantizer{bits}, per_group{group_size, tail_policy::smaller_last}, opt);
    const auto groups = static_cast<Eigen::Index>(r.params.size());
    matrix_f scale(w.rows(), groups), zero(w.rows(), groups);
    for (Eigen::Index g = 0; g < groups; ++g) {
        scale.col(g) = r.params[static_cast<std::size_t>(g)].scale;
        zero.col(g) = r.params[static_cast<std::size_t>(g)].zero;
    }
    if (loss) *loss = r.loss;
    return grouped_int_linear::encode(r.weights, scale, zero, bits, group_size);
}

// ---------------------------------------------------------------------------------------------
// Vector path: GPTVQ-style codebooks with error feedback
// ---------------------------------------------------------------------------------------------

/// Settings of `gptvq_quantize`.
struct gptvq_options {
    int bits = 3;                  ///< bits per weight of the indices: K = 2^(bits·dim) centroids
    int dim = 2;                   ///< vector length d (consecutive columns of a row)
    Eigen::Index tile_rows = 64;   ///< rows sharing a codebook
    Eigen::Index tile_cols = 64;   ///< columns sharing a codebook (multiple of dim; divides n)
    int codebook_bits = 8;         ///< centroids stored as signed integers of this width with an fp16 scale (0: float, 32 bits each)
    int kmeans_iterations = 20;    ///< Lloyd iterations
    std::uint64_t seed = 0;        ///< k-means++ seed (tile t uses seed + t)
    gptq_options gptq{};           ///< damping and block size of the error feedback (act_order is ignored)
    /// \throws invalid_argument naming the bad field.
    void validate(const char* where) const {
        detail::require(dim >= 1 && dim <= 4, where, "dim must lie in [1, 4]");
        detail::require(bits >= 1 && bits * dim <= 16, where, "bits·dim must lie in [1, 16]");
        detail::require(tile_rows >= 1 && tile_cols >= 1 && tile_cols % dim == 0, where,
                        "tile_rows >= 1 and tile_cols a positive multiple of dim");
        detail::require(codebook_bits == 0 || (codebook_bits >= 2 && codebook_bits <= 16), where,
                        "codebook_bits must be 0 or lie in [2, 16]");
        detail::require(kmeans_iterations >= 0, where, "kmeans_iterations must be >= 0");
        gptq.validate(where);
    }
};

/// A linear layer stored as vector-quantization indices and per-tile codebooks: row i, columns
/// [c·d, c·d + d) hold codebook[tile(i, c)] row codes(i, c). Models `LinearOperator`.
class vq_linear {
public:
    /// \param codes      `[out x in/d]` indices into the tile's codebook.
    /// \param codebooks  per tile (row-tile major: tile = (i / tile_rows)·col_tiles + (c·d / tile_cols)), `[K x d]`
    ///                   values as decoded (already rounded to their stored precision).
    /// \param index_bits stored bits per index (log2 K); \param codebook_value_bits bits per stored
    ///                   centroid value (8, or 32 for float), plus 16 per codebook for its scale when < 32.
    /// \throws shape_error (sizes disagree), invalid_argument (an index ≥ K).
    vq_linear(std::vector<std::uint16_t> codes, Eigen::Index out, Eigen::Index in, int dim, std::vector<matrix_f> codebooks,
              Eigen::Index tile_rows, Eigen::Index tile_cols, int index_bits, int codebook_value_bits)
        : codes_(std::move(codes)), books_(std::move(codebooks)), out_(out), in_(in), dim_(dim), tr_(tile_rows), tc_(tile_cols),
          index_bits_(index_bits), book_bits_(codebook_value_bits) {
        constexpr const char* where = "vq_linear";
        detail::require<shape_error>(out_ > 0 && in_ > 0 && dim_ > 0 && in_ % dim_ == 0, where, "bad shape or dim");
        detail::require<shape_error>(tc_ % dim_ == 0 && in_ % tc_ == 0, where, "tile_cols must divide in and be a multiple of dim");
        const Eigen::Index row_tiles = (out_ + tr_ - 1) / tr_, col_tiles = in_ / tc_;
        detail::require_dim(static_cast<Eigen::Index>(books_.size()), row_tiles * col_tiles, where, "number of codebooks");
        detail::require_dim(static_cast<Eigen::Index>(codes_.size()), out_ * (in_ / dim_), where, "number of codes");
        w_.resize(out_, in_);
        for (Eigen::Index i = 0; i < out_; ++i)
            for (Eigen::Index c = 0; c < in_ / dim_; ++c) {
                const matrix_f& cb = books_[static_cast<std::size_t>((i / tr_) * col_tiles + (c * dim_) / tc_)];
                detail::require_dim(cb.cols(), dim_, where, "codebook columns");
                const std::uint16_t k = codes_[static_cast<std::size_t>(i * (in_ / dim_) + c)];
                detail::require(k < cb.rows(), where, "a code is outside its codebook");
                w_.row(i).segment(c * dim_, dim_) = cb.row(k);
            }
    }
    [[nodiscard]] Eigen::Index in_features() const { return in_; }   ///< in
    [[nodiscard]] Eigen::Index out_features() const { return out_; } ///< out
    /// y = x·Ŵᵀ with the decoded weights (Eigen GEMM). O(tokens·in·out).
    void apply(const matrix_f& x, matrix_f& y) const {
        y.resize(x.rows(), out_);
        y.noalias() = x * w_.transpose();
    }
    /// index_bits per d-vector + per codebook K·d·codebook_value_bits (+16 for the fp16 scale of an
    /// integer codebook).
    [[nodiscard]] double storage_bits() const {
        double b = static_cast<double>(index_bits_) * static_cast<double>(codes_.size());
        for (const auto& cb : books_) b += static_cast<double>(cb.size()) * book_bits_ + (book_bits_ < 32 ? 16.0 : 0.0);
        return b;
    }
    [[nodiscard]] const matrix_f& weight() const { return w_; }                        ///< decoded `[out x in]`
    [[nodiscard]] const std::vector<std::uint16_t>& codes() const { return codes_; }  ///< indices, row-major `[out x in/d]`
    [[nodiscard]] const std::vector<matrix_f>& codebooks() const { return books_; }   ///< per tile `[K x d]`
    [[nodiscard]] int dim() const { return dim_; }                                     ///< d
    [[nodiscard]] Eigen::Index tile_rows() const { return tr_; }                       ///< rows per tile
    [[nodiscard]] Eigen::Index tile_cols() const { return tc_; }                       ///< columns per tile
    [[nodiscard]] int index_bits() const { return index_bits_; }                       ///< stored bits per index
    [[nodiscard]] int codebook_value_bits() const { return book_bits_; }               ///< counted bits per centroid value

private:
    std::vector<std::uint16_t> codes_;
    std::vector<matrix_f> books_;
    Eigen::Index out_, in_;
    int dim_;
    Eigen::Index tr_, tc_;
    int index_bits_, book_bits_;
    matrix_f w_;
};

namespace detail {
/// Rounds a codebook to `bits`-bit signed integers times one fp16 scale (max |c| / (2^(bits−1) − 1)).
inline void quantize_codebook(matrix_f& cb, int bits) {
    if (bits == 0) return;
    const float amax = cb.cwiseAbs().maxCoeff();
    if (amax == 0.0f) return;
    const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
    const float s = std::max(round_fp16(amax / qmax), 0x1.0p-24f);
    for (Eigen::Index i = 0; i < cb.size(); ++i) cb.data()[i] = s * std::clamp(std::nearbyint(cb.data()[i] / s), -qmax, qmax);
}
} // namespace detail

/// GPTVQ-style vector quantization of `w` `[m x n]` with Hessian `h` `[n x n]` (RWKVQuant's VQ
/// path, docs/sources.md §10.3): columns are processed in GPTQ order with error feedback (gptq.hpp's
/// sweep); at the first column of every tile column (tile_cols wide) one codebook per tile of
/// tile_rows rows is fitted by weighted k-means (k-means++ then Lloyd) on the tile's current
/// (error-updated) d-vectors, the weight of coordinate (i, j) being row_weight_i / U_jj² (U the
/// Cholesky factor of H⁻¹: the GPTQ loss weight of column j; row_weight all ones when empty), then
/// rounded to `codebook_bits`; every d columns each row's d-vector is assigned to the nearest
/// centroid under the column weights 1/U_jj² and the d quantized columns feed back their errors.
/// With row weights (§10.3, the product paths) the centroids are row-weighted means.
/// `loss` receives the GPTQ loss Σ_j ‖w_j − q_j‖²/U_jj² when given.
/// \throws shape_error (h not n×n, n not a multiple of tile_cols, row_weight length), numeric_error,
/// invalid_argument (options). O(n³ + m·n² + iterations·m·n·K).
template <class = void>
[[nodiscard]] vq_linear gptvq_quantize(const matrix_f& w, const Eigen::Ref<const matrix_d>& h,
                                       const gptvq_options& opt, const vector_f& row_weight = {},
                                       double* loss = nullptr) {
    constexpr const char* where = "gptvq_quantize";
    opt.validate(where);
    gptq_options go = opt.gptq;
    go.act_order = false;
    detail::check_gptq_inputs(w, h, go, where);
    const Eigen::Index m = w.rows(), n = w.cols(), d = opt.dim, K = Eigen::Index{1} << (opt.bits * opt.dim);
    detail::require<shape_error>(n % opt.tile_cols == 0, where, "the columns of 'w' must be a multiple of tile_cols");
    detail::require<shape_error>(row_weight.size() == 0 || row_weight.size() == m, where, "row_weight must be empty or have one entry per row");
    if (row_weight.size()) detail::require((row_weight.array() >= 0.0f).all() && row_weight.allFinite(), where, "row_weight must be finite and >= 0");
    const Eigen::Index row_tiles = (m + opt.tile_rows - 1) / opt.tile_rows, col_tiles = n / opt.tile_cols;
    std::vector<column_group> groups;
    for (Eigen::Index g = 0; g < col_tiles; ++g) groups.push_back({g * opt.tile_cols, opt.tile_cols, opt.tile_cols});
    auto p = detail::gptq_prepare(w, h, go, where);
    const auto blocks = detail::gptq_blocks(n, std::max<Eigen::Index>(go.block_size / d * d, d), groups);
    std::vector<matrix_f> books(static_cast<std::size_t>(row_tiles * col_tiles));
    std::vector<std::uint16_t> codes(static_cast<std::size_t>(m * (n / d)));
    // column weights 1/U_jj² (processing order = original order: no act order)
    vector_f colw(n);
    for (Eigen::Index j = 0; j < n; ++j) colw(j) = static_cast<float>(1.0 / (p.u(j, j) * p.u(j, j)));
    vector_f roww = vector_f::Ones(m);
    if (row_weight.size()) {
        const float mean = row_weight.mean();
        roww = mean > 0 ? vector_f((row_weight.array() / mean + 1e-3f).matrix()) : vector_f::Ones(m);
    }
    matrix_f pending(m, d); // quantized values of the current d-vector of every row
    Eigen::MatrixXd q;
    const double sweep_loss = detail::gptq_sweep(
        p, blocks, q, [](const Eigen::MatrixXd&, Eigen::Index, Eigen::Index) {},
        [&](const Eigen::MatrixXd& w1, Eigen::Index s, Eigen::Index j, const vector_f&, vector_f& out) {
            const Eigen::Index ct = j / opt.tile_cols, tb = ct * opt.tile_cols, k = j - s;
            if (j == tb) { // fit this tile column's codebooks on the current weights
                matrix_f cur(m, opt.tile_cols);
                const Eigen::Index in_block = std::min(opt.tile_cols, w1.cols() - k);
                cur.leftCols(in_block) = w1.middleCols(k, in_block).cast<float>();
                if (in_block < opt.tile_cols)
                    cur.rightCols(opt.tile_cols - in_block) = p.w.middleCols(j + in_block, opt.tile_cols - in_block).cast<float>();
                for (Eigen::Index rt = 0; rt < row_tiles; ++rt) {
                    const Eigen::Index r0 = rt * opt.tile_rows, rows = std::min(opt.tile_rows, m - r0);
                    const matrix_f pts = to_vectors(cur.middleRows(r0, rows), d);
                    matrix_f wts(pts.rows(), d);
                    const Eigen::Index per_row = opt.tile_cols / d;
                    for (Eigen::Index i = 0; i < rows; ++i)
                        for (Eigen::Index c = 0; c < per_row; ++c)
                            for (Eigen::Index t = 0; t < d; ++t) wts(i * per_row + c, t) = roww(r0 + i) * colw(tb + c * d + t);
                    kmeans_options ko;
                    ko.codebook_size = std::min<Eigen::Index>(K, pts.rows());
                    ko.iterations = opt.kmeans_iterations;
                    ko.seed = opt.seed + static_cast<std::uint64_t>(rt * col_tiles + ct);
                    matrix_f cb = weighted_kmeans(pts, wts, ko).centroids;
                    detail::quantize_codebook(cb, opt.codebook_bits);
                    books[static_cast<std::size_t>(rt * col_tiles + ct)] = std::move(cb);
                }
            }
            const Eigen::Index off = (j - tb) % d;
            if (off == 0) { // assign every row's d-vector (current values) to its nearest centroid
                for (Eigen::Index i = 0; i < m; ++i) {
                    const matrix_f& cb = books[static_cast<std::size_t>((i / opt.tile_rows) * col_tiles + ct)];
                    Eigen::Index best = 0;
                    double best_d = std::numeric_limits<double>::infinity();
                    for (Eigen::Index c = 0; c < cb.rows(); ++c) {
                        double dist = 0;
                        for (Eigen::Index t = 0; t < d; ++t) {
                            const double e = w1(i, k + t) - static_cast<double>(cb(c, t));
                            dist += static_cast<double>(colw(j + t)) * e * e;
                        }
                        if (dist < best_d) {
                            best_d = dist;
                            best = c;
                        }
                    }
                    pending.row(i) = cb.row(best);
                    codes[static_cast<std::size_t>(i * (n / d) + j / d)] = static_cast<std::uint16_t>(best);
                }
            }
            out = pending.col(off);
        });
    if (loss) *loss = sweep_loss;
    return vq_linear(std::move(codes), m, n, opt.dim, std::move(books), opt.tile_rows, opt.tile_cols, opt.bits * opt.dim,
                     opt.codebook_bits == 0 ? 32 : opt.codebook_bits);
}

// ---------------------------------------------------------------------------------------------
// The RWKV pipeline
// ---------------------------------------------------------------------------------------------

/// How `rwkv_quantize` quantizes the block linears.
enum class rwkv_quant_method {
    rtn,       ///< scalar RTN for every matrix (no calibration)
    gptq,      ///< scalar GPTQ for every matrix
    vq,        ///< GPTVQ-style VQ for every matrix
    rwkvquant, ///< the proxy chooses scalar (GPTQ) or VQ per matrix; product-weighted codebooks
};

/// Which uniformity proxy drives the choice of `rwkv_quant_method::rwkvquant`.
enum class rwkv_proxy_kind {
    distinct_gaps,    ///< rwkv_proxy.hpp as in the released code: distinct gaps of the sorted values
    quantile_spacing, ///< the same two statistics on the spacings of `quantiles` equally spaced order statistics
};

/// Settings of `rwkv_quantize` (defaults: ~3.25 bits per weight on both paths).
struct rwkv_quant_options {
    rwkv_quant_method method = rwkv_quant_method::rwkvquant; ///< recipe
    int bits = 3;                       ///< code bits per weight (scalar) / index bits per weight (VQ)
    Eigen::Index group_size = 128;      ///< scalar: columns per fp16 scale/zero group
    gptvq_options vq{};                 ///< VQ path (bits is overwritten by `bits`)
    rwkv_proxy_kind proxy = rwkv_proxy_kind::quantile_spacing; ///< proxy of the hybrid
    Eigen::Index quantiles = 1024;      ///< order statistics of the quantile-spacing proxy
    double tau_coarse = 0.0;            ///< scalar when P_c < tau_coarse and P_f < tau_fine, else VQ
    double tau_fine = 0.0;              ///< (see tau_coarse)
    bool product_weighted_codebooks = true; ///< §10.3 row weights on att_key, att_receptance, ffn_receptance (VQ path)
    gptq_options gptq{};                ///< damping and block size (GPTQ and the VQ feedback)
    int calib_window = 512;             ///< calibration window length (each from the zero state)
    int calib_windows = 16;             ///< calibration windows used (≤ those in the tokens; < 0: all)
    /// Called after each quantized matrix with (layer, slot); optional.
    std::function<void(int, rwkv_slot)> progress;
};

/// What `rwkv_quantize` did to one matrix.
struct rwkv_quant_record {
    int layer = 0;                         ///< block
    rwkv_slot slot = rwkv_slot::att_key;   ///< linear
    uniformity_proxy proxy;                ///< the proxy the hybrid used (computed for every method)
    quantization_family family = quantization_family::scalar; ///< what was stored
    double bits_per_weight = 0;            ///< storage_bits / weights
    double loss = 0;                       ///< GPTQ loss tr(ΔHΔᵀ) (0 for RTN)
    bool product_weighted = false;         ///< §10.3 row weights used
};

/// The quantized model and one record per block linear (layer-major, slot order).
struct rwkv_quant_result {
    rwkv_model model;                       ///< a copy of the input model with quantized block linears
    std::vector<rwkv_quant_record> records; ///< per matrix
};

/// RWKVQuant's proxies on `quantiles` equally spaced order statistics of `w` (the spacings
/// v_(⌊(k+1)(N−1)/Q⌋) − v_(⌊k(N−1)/Q⌋), k < Q; zero spacings dropped; not de-duplicated), with
/// the coarse and fine statistics of rwkv_proxy.hpp. Unlike the distinct-gap form this does not
/// degenerate on weights stored in bf16/fp16, whose distinct gaps are the format's spacings.
/// O(N log N). \throws shape_error (empty), numeric_error (NaN/Inf), invalid_argument (quantiles < 2).
[[nodiscard]] inline uniformity_proxy quantile_spacing_proxy(const matrix_f& w, Eigen::Index quantiles = 1024) {
    constexpr const char* where = "quantile_spacing_proxy";
    detail::require_nonempty(w, where, "w");
    detail::require_finite(w, where, "w");
    detail::require(quantiles >= 2, where, "quantiles must be >= 2");
    std::vector<double> v(w.data(), w.data() + w.size());
    std::sort(v.begin(), v.end());
    const double N1 = static_cast<double>(v.size() - 1);
    std::vector<double> g;
    for (Eigen::Index k = 0; k < quantiles; ++k) {
        const auto a = static_cast<std::size_t>(std::floor(static_cast<double>(k) * N1 / static_cast<double>(quantiles)));
        const auto b = static_cast<std::size_t>(std::floor(static_cast<double>(k + 1) * N1 / static_cast<double>(quantiles)));
        if (v[b] - v[a] > 0) g.push_back(v[b] - v[a]);
    }
    uniformity_proxy out;
    out.gaps = static_cast<Eigen::Index>(g.size());
    if (g.empty()) return out;
    double sum = 0;
    for (double x : g) sum += x;
    const double n = static_cast<double>(g.size());
    double h = 0, m2 = 0, m3 = 0, m4 = 0;
    for (double x : g) {
        const double p = x / sum;
        h -= p * std::log(p);
        const double dd = p - 1.0 / n;
        m2 += dd * dd;
        m3 += dd * dd * dd;
        m4 += dd * dd * dd * dd;
    }
    out.coarse = std::max(0.0, std::log(n) - h);
    out.fine = n * n / 2 * std::fabs(m2 / n) + n * n * n / 6 * std::fabs(m3 / n) + n * n * n * n / 12 * std::fabs(m4 / n);
    return out;
}

namespace detail {
inline bool product_slot(rwkv_slot s) {
    return s == rwkv_slot::att_key || s == rwkv_slot::att_receptance || s == rwkv_slot::ffn_receptance;
}
} // namespace detail

/// Quantizes every block linear (time-mix key/value/receptance/output, channel-mix key/value/
/// receptance) of `m` (FP32 dense linears) with `opt.method`, layer by layer, calibrating on the
/// first `calib_windows` windows of `calib_tokens` (ignored by RTN). Embedding, head, LayerNorms
/// and the element-wise vectors stay float. Deterministic.
/// \throws invalid_argument (non-dense linears, bad options), shape_error (empty calibration
/// tokens for a calibrated method, VQ tiles not dividing a matrix), numeric_error (Hessian).
/// Cost: L calibration passes of calib_windows·calib_window tokens, plus the solvers.
template <class = void>
[[nodiscard]] rwkv_quant_result rwkv_quantize(const rwkv_model& m, std::span<const int> calib_tokens,
                                              const rwkv_quant_options& opt) {
    constexpr const char* where = "rwkv_quantize";
    detail::require(opt.calib_window >= 1, where, "calib_window must be >= 1");
    detail::require(opt.tau_coarse >= 0 && opt.tau_fine >= 0, where, "tau_coarse and tau_fine must be >= 0");
    const bool calibrate = opt.method != rwkv_quant_method::rtn;
    detail::require<shape_error>(!calibrate || !calib_tokens.empty(), where, "argument 'calib_tokens' is empty");
    gptvq_options vo = opt.vq;
    vo.bits = opt.bits;
    vo.gptq = opt.gptq;
    vo.validate(where);
    rwkv_quant_result res;
    res.model = m;
    rwkv_model& q = res.model;
    const int L = m.config.n_layers;
    for (int l = 0; l < L; ++l) {
        std::vector<gptq_hessian> hs;
        std::vector<vector_d> rowacc(rwkv_slots);
        std::vector<long long> rown(rwkv_slots, 0);
        for (int s = 0; s < rwkv_slots; ++s) hs.emplace_back(q.linear(l, static_cast<rwkv_slot>(s)).in_features());
        if (calibrate) {
            rwkv_hooks hooks;
            hooks.on_linear_input = [&](int layer, rwkv_slot s, const matrix_f& x) {
                if (layer == l) hs[static_cast<std::size_t>(s)].add(x);
            };
            // always observed, so every method calibrates on the same (sequential-WKV) forward pass
            hooks.on_product_sensitivity = [&](int layer, rwkv_slot s, const matrix_f& g) {
                    if (layer != l) return;
                    auto& acc = rowacc[static_cast<std::size_t>(s)];
                    if (acc.size() == 0) acc = vector_d::Zero(g.cols());
                    acc += g.cast<double>().array().square().colwise().sum().transpose().matrix();
                    rown[static_cast<std::size_t>(s)] += g.rows();
                };
            capture_rwkv_inputs(q, calib_tokens, hooks, opt.calib_window, opt.calib_windows);
        }
        for (int s = 0; s < rwkv_slots; ++s) {
            const auto slot = static_cast<rwkv_slot>(s);
            const matrix_f& w = detail::dense_weight_of(m.linear(l, slot), where);
            rwkv_quant_record rec;
            rec.layer = l;
            rec.slot = slot;
            rec.proxy = opt.proxy == rwkv_proxy_kind::distinct_gaps ? rwkv_uniformity_proxy(w) : quantile_spacing_proxy(w, opt.quantiles);
            bool vector = opt.method == rwkv_quant_method::vq;
            if (opt.method == rwkv_quant_method::rwkvquant)
                vector = choose_quantization_family(rec.proxy, opt.tau_coarse, opt.tau_fine) == quantization_family::vector;
            rec.family = vector ? quantization_family::vector : quantization_family::scalar;
            std::shared_ptr<const linear_operator> op;
            const auto& H = hs[static_cast<std::size_t>(s)].matrix();
            if (opt.method == rwkv_quant_method::rtn) {
                op = make_linear(rtn_grouped(w, opt.bits, opt.group_size));
            } else if (!vector) {
                op = make_linear(gptq_grouped(w, H, opt.bits, opt.group_size, opt.gptq, &rec.loss));
            } else {
                vector_f rw;
                const auto& acc = rowacc[static_cast<std::size_t>(s)];
                if (opt.product_weighted_codebooks && detail::product_slot(slot) && acc.size() == w.rows() &&
                    rown[static_cast<std::size_t>(s)] > 0) {
                    rw = (acc / static_cast<double>(rown[static_cast<std::size_t>(s)])).cast<float>();
                    rec.product_weighted = true;
                }
                vo.seed = opt.vq.seed + 1000003ULL * static_cast<std::uint64_t>(l * rwkv_slots + s);
                op = make_linear(gptvq_quantize(w, H, vo, rw, &rec.loss));
            }
            rec.bits_per_weight = op->storage_bits() / static_cast<double>(w.size());
            q.set_linear(l, slot, std::move(op));
            res.records.push_back(rec);
            if (opt.progress) opt.progress(l, slot);
        }
    }
    return res;
}

// ---------------------------------------------------------------------------------------------
// Saving and loading
// ---------------------------------------------------------------------------------------------

/// Writes a (quantized or FP32) RWKV model to one safetensors file: `__metadata__` holds
/// `format` = "lowbit-rwkv", the config as config.json text (`config`), and per block linear
/// `<prefix>.kind` ("dense", "int" or "vq") with its layout numbers; tensors use the Hugging Face
/// names for everything float (F32) and, per quantized linear `rwkv.blocks.L.<slot>`: `.codes` (U8
/// `[out, in]`), `.scale` / `.zero` (F16, exact: the values are fp16) for "int"; `.vq_codes` (U16
/// `[out, in/d]`), `.codebooks` (F32 `[tiles·K, d]`) for "vq". `load_rwkv_quantized` reads it back
/// bit-identically. O(parameters).
/// \throws invalid_argument (a linear of another operator type), format_error (I/O).
inline void save_rwkv_quantized(const rwkv_model& m, const std::filesystem::path& path) {
    constexpr const char* where = "save_rwkv_quantized";
    io::safetensors_writer wr;
    const auto& c = m.config;
    std::string cfg = "{\"model_type\": \"rwkv\", \"hidden_size\": " + std::to_string(c.dim) +
                      ", \"attention_hidden_size\": " + std::to_string(c.attention_dim) +
                      ", \"intermediate_size\": " + std::to_string(c.ffn_dim) + ", \"num_hidden_layers\": " +
                      std::to_string(c.n_layers) + ", \"vocab_size\": " + std::to_string(c.vocab_size) +
                      ", \"context_length\": " + std::to_string(c.context_length) + ", \"rescale_every\": " +
                      std::to_string(c.rescale_every) + ", \"tie_word_embeddings\": false";
    char eps[64];
    std::snprintf(eps, sizeof eps, "%.9g", static_cast<double>(c.layer_norm_eps));
    cfg += std::string(", \"layer_norm_epsilon\": ") + eps;
    if (c.bos_token_id >= 0) cfg += ", \"bos_token_id\": " + std::to_string(c.bos_token_id);
    if (c.eos_token_id >= 0) cfg += ", \"eos_token_id\": " + std::to_string(c.eos_token_id);
    cfg += "}";
    wr.set_metadata("format", "lowbit-rwkv");
    wr.set_metadata("config", cfg);
    auto vec = [&](const std::string& name, const vector_f& v) { wr.add(name, matrix_f(v.transpose())); };
    wr.add("rwkv.embeddings.weight", m.embedding);
    vec("rwkv.ln_out.weight", m.ln_out_weight);
    vec("rwkv.ln_out.bias", m.ln_out_bias);
    auto f16 = [&](const std::string& name, const matrix_f& x) { wr.add(name, x, io::st_dtype::F16); };
    auto linear = [&](const std::string& p, const linear_operator& op) {
        if (const auto* d = dynamic_cast<const detail::linear_adapter<dense_linear>*>(&op)) {
            wr.set_metadata(p + ".kind", "dense");
            wr.add(p + ".weight", d->get().weight());
        } else if (const auto* g = dynamic_cast<const detail::linear_adapter<grouped_int_linear>*>(&op)) {
            const auto& q = g->get();
            wr.set_metadata(p + ".kind", "int");
            wr.set_metadata(p + ".bits", std::to_string(q.bits()));
            wr.set_metadata(p + ".group_size", std::to_string(q.group_size()));
            wr.add(p + ".codes", io::st_dtype::U8, {static_cast<std::uint64_t>(q.codes().rows()), static_cast<std::uint64_t>(q.codes().cols())},
                   std::as_bytes(std::span<const std::uint8_t>(q.codes().data(), static_cast<std::size_t>(q.codes().size()))));
            f16(p + ".scale", q.scale());
            f16(p + ".zero", q.zero());
        } else if (const auto* v = dynamic_cast<const detail::linear_adapter<vq_linear>*>(&op)) {
            const auto& q = v->get();
            wr.set_metadata(p + ".kind", "vq");
            wr.set_metadata(p + ".dim", std::to_string(q.dim()));
            wr.set_metadata(p + ".tile_rows", std::to_string(q.tile_rows()));
            wr.set_metadata(p + ".tile_cols", std::to_string(q.tile_cols()));
            wr.set_metadata(p + ".index_bits", std::to_string(q.index_bits()));
            wr.set_metadata(p + ".codebook_value_bits", std::to_string(q.codebook_value_bits()));
            wr.add(p + ".vq_codes", io::st_dtype::U16,
                   {static_cast<std::uint64_t>(q.out_features()), static_cast<std::uint64_t>(q.in_features() / q.dim())},
                   std::as_bytes(std::span<const std::uint16_t>(q.codes())));
            const Eigen::Index K = q.codebooks().front().rows();
            matrix_f books(K * static_cast<Eigen::Index>(q.codebooks().size()), q.dim());
            for (std::size_t t = 0; t < q.codebooks().size(); ++t) {
                detail::require<shape_error>(q.codebooks()[t].rows() == K, where, "codebooks of different sizes");
                books.middleRows(static_cast<Eigen::Index>(t) * K, K) = q.codebooks()[t];
            }
            wr.add(p + ".codebooks", books);
        } else {
            throw invalid_argument(std::string("lowbit: ") + where + ": linear '" + p +
                                   "' is neither dense_linear, grouped_int_linear nor vq_linear");
        }
    };
    linear("head", *m.head);
    for (int l = 0; l < c.n_layers; ++l) {
        const auto& b = m.blocks[static_cast<std::size_t>(l)];
        const std::string p = "rwkv.blocks." + std::to_string(l) + ".";
        if (b.pre_ln_weight.size()) {
            vec(p + "pre_ln.weight", b.pre_ln_weight);
            vec(p + "pre_ln.bias", b.pre_ln_bias);
        }
        vec(p + "ln1.weight", b.ln1_weight);
        vec(p + "ln1.bias", b.ln1_bias);
        vec(p + "ln2.weight", b.ln2_weight);
        vec(p + "ln2.bias", b.ln2_bias);
        vec(p + "attention.time_decay", b.time_decay);
        vec(p + "attention.time_first", b.time_first);
        vec(p + "attention.time_mix_key", b.att_mix_key);
        vec(p + "attention.time_mix_value", b.att_mix_value);
        vec(p + "attention.time_mix_receptance", b.att_mix_receptance);
        vec(p + "feed_forward.time_mix_key", b.ffn_mix_key);
        vec(p + "feed_forward.time_mix_receptance", b.ffn_mix_receptance);
        for (int s = 0; s < rwkv_slots; ++s) linear(p + rwkv_slot_name(static_cast<rwkv_slot>(s)), m.linear(l, static_cast<rwkv_slot>(s)));
    }
    wr.write(path);
}

/// Reads a file written by `save_rwkv_quantized` (bit-identical weights, codes and codebooks).
/// \throws format_error (not such a file, missing tensors or metadata, shapes that disagree).
[[nodiscard]] inline rwkv_model load_rwkv_quantized(const std::filesystem::path& path) {
    const std::string where = "lowbit: load_rwkv_quantized: ";
    const auto f = io::safetensors_file::open(path);
    const auto& meta = f.metadata();
    auto get = [&](const std::string& k) -> const std::string& {
        const auto it = meta.find(k);
        if (it == meta.end()) throw format_error(where + "metadata '" + k + "' is missing from '" + path.string() + "'");
        return it->second;
    };
    if (get("format") != "lowbit-rwkv") throw format_error(where + "'" + path.string() + "' is not a lowbit RWKV model");
    rwkv_model m;
    m.config = parse_rwkv_config(get("config"), path.string() + " (metadata 'config')");
    const auto& c = m.config;
    auto mat = [&](const std::string& name) -> matrix_f {
        if (!f.contains(name)) throw format_error(where + "tensor '" + name + "' is missing from '" + path.string() + "'");
        try {
            return io::to_matrix(f.tensor(name));
        } catch (const error& e) {
            throw format_error(where + "tensor '" + name + "': " + e.what());
        }
    };
    auto vec = [&](const std::string& name) -> vector_f { return mat(name).row(0).transpose(); };
    auto num = [&](const std::string& k) { return std::stoll(get(k)); };
    auto linear = [&](const std::string& p) -> std::shared_ptr<const linear_operator> {
        const std::string& kind = get(p + ".kind");
        try {
            if (kind == "dense") return make_linear(dense_linear(mat(p + ".weight")));
            if (kind == "int") {
                const auto t = f.tensor(p + ".codes");
                if (t.dtype != io::st_dtype::U8 || t.shape.size() != 2) throw format_error(where + "'" + p + ".codes' is not U8 [out, in]");
                matrix_u8 codes(static_cast<Eigen::Index>(t.shape[0]), static_cast<Eigen::Index>(t.shape[1]));
                std::memcpy(codes.data(), t.bytes.data(), t.bytes.size());
                return make_linear(grouped_int_linear(std::move(codes), mat(p + ".scale"), mat(p + ".zero"), static_cast<int>(num(p + ".bits")),
                                                      num(p + ".group_size")));
            }
            if (kind == "vq") {
                const auto t = f.tensor(p + ".vq_codes");
                if (t.dtype != io::st_dtype::U16 || t.shape.size() != 2) throw format_error(where + "'" + p + ".vq_codes' is not U16 [out, in/d]");
                std::vector<std::uint16_t> codes(static_cast<std::size_t>(t.numel()));
                std::memcpy(codes.data(), t.bytes.data(), t.bytes.size());
                const int d = static_cast<int>(num(p + ".dim"));
                const Eigen::Index out = static_cast<Eigen::Index>(t.shape[0]), in = static_cast<Eigen::Index>(t.shape[1]) * d;
                const Eigen::Index tr = num(p + ".tile_rows"), tc = num(p + ".tile_cols");
                const matrix_f books = mat(p + ".codebooks");
                const Eigen::Index tiles = ((out + tr - 1) / tr) * (tc > 0 ? in / tc : 0);
                if (tiles <= 0 || books.rows() % tiles != 0) throw format_error(where + "'" + p + ".codebooks' does not hold one codebook per tile");
                const Eigen::Index K = books.rows() / tiles;
                std::vector<matrix_f> cbs;
                for (Eigen::Index i = 0; i < tiles; ++i) cbs.emplace_back(books.middleRows(i * K, K));
                return make_linear(vq_linear(std::move(codes), out, in, d, std::move(cbs), tr, tc, static_cast<int>(num(p + ".index_bits")),
                                             static_cast<int>(num(p + ".codebook_value_bits"))));
            }
        } catch (const format_error&) {
            throw;
        } catch (const error& e) {
            throw format_error(where + "linear '" + p + "': " + e.what());
        }
        throw format_error(where + "linear '" + p + "' has unknown kind '" + kind + "'");
    };
    m.embedding = mat("rwkv.embeddings.weight");
    m.ln_out_weight = vec("rwkv.ln_out.weight");
    m.ln_out_bias = vec("rwkv.ln_out.bias");
    m.head = linear("head");
    for (int l = 0; l < c.n_layers; ++l) {
        const std::string p = "rwkv.blocks." + std::to_string(l) + ".";
        rwkv_block b;
        if (l == 0) {
            b.pre_ln_weight = vec(p + "pre_ln.weight");
            b.pre_ln_bias = vec(p + "pre_ln.bias");
        }
        b.ln1_weight = vec(p + "ln1.weight");
        b.ln1_bias = vec(p + "ln1.bias");
        b.ln2_weight = vec(p + "ln2.weight");
        b.ln2_bias = vec(p + "ln2.bias");
        b.time_decay = vec(p + "attention.time_decay");
        b.time_first = vec(p + "attention.time_first");
        b.att_mix_key = vec(p + "attention.time_mix_key");
        b.att_mix_value = vec(p + "attention.time_mix_value");
        b.att_mix_receptance = vec(p + "attention.time_mix_receptance");
        b.ffn_mix_key = vec(p + "feed_forward.time_mix_key");
        b.ffn_mix_receptance = vec(p + "feed_forward.time_mix_receptance");
        for (int s = 0; s < rwkv_slots; ++s)
            b.linear[static_cast<std::size_t>(s)] = linear(p + rwkv_slot_name(static_cast<rwkv_slot>(s)));
        m.blocks.push_back(std::move(b));
    }
    return m;
}

// Separate instantiation (docs/compile_time.md): defined as `extern`, LOWBIT_MODEL_INSTANTIATION turns these
// into declarations; one translation unit of the program defines it empty after including this header's
// dependencies, and compiles them.
#ifdef LOWBIT_MODEL_INSTANTIATION
LOWBIT_MODEL_INSTANTIATION template rwkv_quant_result rwkv_quantize<>(const rwkv_model&, std::span<const int>, const rwkv_quant_options&);
#endif

LOWBIT_END_NAMESPACE
