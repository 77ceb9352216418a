#pragma once
/// \file salient_ternary.hpp
/// The packed layout of TRA-GPTQ's grouped ternary weights (gptq.hpp, TWLA's salient / non-salient
/// groups with order-2 salient residuals) and its fp32-activation GEMM, so a TRA-GPTQ layer runs from
/// its stored bits instead of a dequantized dense copy. `pack_tra` (gptq.hpp) builds it.
///
/// Layout (`salient_ternary_matrix`, `[rows x cols]`): the column map of BiLLM's layout
/// (detail/salient_columns.hpp): blocks (TRA-GPTQ's GPTQ blocks, processing order), inside a block the
/// k salient columns first, then the others, then zero padding to a multiple of 16; `source[p]` is the
/// original column at packed position p (−1 on padding). Every weight has two ternary codes t₀, t₁ ∈
/// {−1, 0, +1} (t₁ = 0 outside the salient columns) and a group bit g (1 = "hi": the weight's Ω lies
/// above the break point of its part). Per row and 16-column chunk, uint16 bit-plane words (bit l =
/// lane l = packed position 16c + l):
///     P (t₀ = +1), N (t₀ = −1), G (g = 1), and only for chunks holding salient columns P₁, N₁ (t₁ = ±1),
/// stored per row chunk after chunk (3 or 5 words each). Bits are zero on padding lanes, P₁/N₁ are zero
/// outside the salient lanes, and P∧N = P₁∧N₁ = 0 (the constructor refuses anything else).
/// Per row and block 10 fp16 parameters, in this order:
///     μ_s0, α₀_s0, α₁_s0, μ_s1, α₀_s1, α₁_s1  (salient groups g = 0, 1)
///     μ_0, α_0, μ_1, α_1                      (other groups g = 0, 1)
/// and the weight is, evaluated in float (so bit-identical on every path):
///     salient column:  w = (μ_sg + α₀_sg·t₀) + α₁_sg·t₁        other column:  w = μ_g + α_g·t₀.
/// Memory per row: 3 words per chunk + 2 per salient chunk (≈ 3 bits per weight + 2 per salient
/// weight), 10 fp16 per block; the column map (uint16 per padded column) and 2 uint16 per block.
/// `storage_bits()` counts exactly the serialized bytes (`bytes()`) plus 16 bits per parameter.
///
/// GEMM with fp32 activations (`gemm`, `gemm_into`; `quantized_linear<salient_ternary_matrix, act_fp32>`):
/// y_ki = Σ_p w_ip·x_k,source[p], float accumulation. Paths: scalar (reference; also what generic
/// and neon requests run), avx2, avx512 (arch/salient_ternary_x86.hpp; an amx request runs avx512).
/// From `salient_ternary_batched_tokens` tokens on a non-scalar path, 64 decoded rows at a time are
/// multiplied with all tokens by Eigen. Error on every path:
///     |y_ki − Σ_p w_ip x_kp| ≤ (n + 16)·u·Σ_p |w_ip x_kp|   (n = padded columns, u = 2⁻²⁴),
/// w the float weights above (`dequantize()`). Cost: O(tokens·rows·padded cols) flops; the row
/// kernels read 3 (+2) bits per weight, 20 bytes of parameters per row and block, and x once per
/// 4 tokens.
/// `act_int{bits}` activations are quantize-dequantized on gemm.hpp's per-token grid, then run by
/// the fp32 kernel (no integer kernel for this layout).
///
/// Threads: none. The matrix is immutable after construction.

#include <lowbit/arch/salient_ternary_x86.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/salient_columns.hpp>
#include <lowbit/detail/salient_gemm.hpp>
#include <lowbit/error.hpp>
#include <lowbit/gemm.hpp>
#include <lowbit/quantized_linear.hpp>
#include <lowbit/types.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

LOWBIT_BEGIN_NAMESPACE

/// One block of a salient-ternary matrix: its columns and how many of them (the first) are salient.
using salient_ternary_block = salient_column_block;

/// TRA-GPTQ's packed weights (see the file comment). Models the weight policy of `quantized_linear`
/// (`rows()`, `cols()`, `bits_per_weight()`).
class salient_ternary_matrix : public detail::salient_matrix_base<salient_ternary_matrix> {
public:
    static constexpr Eigen::Index chunk_cols = 16;    ///< columns per code word
    static constexpr int params_per_block = 10;       ///< fp16 parameters per row and block

    salient_ternary_matrix() = default;

    /// \param rows, cols  the shape `[rows x cols]` (≥ 1; cols < 65535)
    /// \param blocks      the blocks in packed order; their widths sum to cols
    /// \param source      padded_cols entries: the original column of each packed position, −1 on the
    ///                    padding (positions width..⌈width/16⌉·16 − 1 of each block); every column once
    /// \param codes       rows × `row_words()` uint16 (row-major; per row, chunk after chunk: P, N, G and,
    ///                    for a chunk holding salient columns, P₁, N₁)
    /// \param params      rows × blocks × 10 fp16-exact finite values (row-major: row, block, parameter)
    /// \throws shape_error (sizes), invalid_argument (source not a column map of the blocks, a plane bit
    ///         on padding, P∧N or P₁∧N₁ ≠ 0, P₁/N₁ outside the salient lanes, parameters not
    ///         fp16-exact), numeric_error (NaN/Inf parameters). O(rows·(chunks + blocks) + cols).
    salient_ternary_matrix(Eigen::Index rows, Eigen::Index cols, std::vector<salient_ternary_block> blocks,
                           std::vector<std::int32_t> source, std::vector<std::uint16_t> codes, const vector_f& params)
        : salient_matrix_base(rows, cols, std::move(blocks), std::move(source), std::move(codes), "salient_ternary_matrix") {
        constexpr const char* where = "salient_ternary_matrix";
        for (const std::uint16_t s : map_.chunk_salient) stride_ += s != 0 ? 5 : 3;
        detail::require_dim(static_cast<Eigen::Index>(codes_.size()), rows * stride_, where, "code words");
        for (Eigen::Index i = 0; i < rows; ++i) {
            const std::uint16_t* wp = codes_.data() + i * stride_;
            for (Eigen::Index c = 0; c < map_.chunks(); ++c) {
                const unsigned real = map_.chunk_real[static_cast<std::size_t>(c)], sal = map_.chunk_salient[static_cast<std::size_t>(c)];
                detail::require(((wp[0] | wp[1] | wp[2]) & ~real & 0xFFFFu) == 0, where, "a code plane has a bit on a padding lane");
                detail::require((wp[0] & wp[1]) == 0, where, "a weight has both t0 = +1 and t0 = -1 (P and N overlap)");
                if (sal != 0) {
                    detail::require(((wp[3] | wp[4]) & ~sal & 0xFFFFu) == 0, where, "a t1 bit lies outside the salient columns");
                    detail::require((wp[3] & wp[4]) == 0, where, "a weight has both t1 = +1 and t1 = -1 (P1 and N1 overlap)");
                }
                wp += sal != 0 ? 5 : 3;
            }
        }
        const auto nb = static_cast<Eigen::Index>(map_.blocks.size());
        detail::require_dim(params.size(), rows * nb * params_per_block, where, "parameters");
        detail::require_finite(params, where, "parameters");
        params_.resize(static_cast<std::size_t>(params.size()));
        for (Eigen::Index e = 0; e < params.size(); ++e) {
            params_[static_cast<std::size_t>(e)] = detail::float_to_fp16_bits(params(e));
            detail::require(detail::fp16_bits_to_float(params_[static_cast<std::size_t>(e)]) == params(e), where,
                            "the parameters are not fp16-exact (round them with Eigen::half first)");
        }
    }

    /// The matrix of serialized `bytes` (as `bytes()` writes them) and its parameters.
    /// \throws format_error (truncated or inconsistent bytes, or parameters the constructor refuses),
    ///         shape_error (rows or cols out of range).
    [[nodiscard]] static salient_ternary_matrix from_bytes(Eigen::Index rows, Eigen::Index cols, std::span<const std::uint8_t> bytes,
                                                           const vector_f& params) {
        constexpr const char* where = "salient_ternary_matrix::from_bytes";
        detail::salient_byte_reader in{bytes, where};
        auto h = in.read_header(rows, cols, 0);
        Eigen::Index words = 0;
        for (const auto& b : h.blocks) {
            const Eigen::Index chunks = (b.width + chunk_cols - 1) / chunk_cols, sal = (b.salient + chunk_cols - 1) / chunk_cols;
            words += 3 * chunks + 2 * std::min(sal, chunks);
        }
        std::vector<std::uint16_t> codes = in.read_codes(rows, words);
        return detail::salient_from_bytes(where, [&] {
            return salient_ternary_matrix(rows, cols, std::move(h.blocks), std::move(h.source), std::move(codes), params);
        });
    }

    /// The serialized form: uint32 block count, uint32 flags (0), per block uint16 width and salient
    /// count, the column map (uint16, 0xFFFF on padding), the code words (uint16), all little-endian.
    /// O(size).
    [[nodiscard]] std::vector<std::uint8_t> bytes() const {
        std::vector<std::uint8_t> out;
        out.reserve(8 + map_.serialized_bytes() + 2 * codes_.size());
        auto put32 = [&](std::uint32_t v) {
            for (int k = 0; k < 4; ++k) out.push_back(static_cast<std::uint8_t>(v >> (8 * k)));
        };
        put32(static_cast<std::uint32_t>(map_.blocks.size()));
        put32(0u);
        map_.write(out);
        for (const std::uint16_t w : codes_) {
            out.push_back(static_cast<std::uint8_t>(w & 0xFFu));
            out.push_back(static_cast<std::uint8_t>(w >> 8));
        }
        return out;
    }

    /// The parameters as floats (rows × blocks × 10, row-major). O(size).
    [[nodiscard]] vector_f params() const {
        vector_f t(static_cast<Eigen::Index>(params_.size()));
        for (std::size_t e = 0; e < params_.size(); ++e) t(static_cast<Eigen::Index>(e)) = detail::fp16_bits_to_float(params_[e]);
        return t;
    }

    [[nodiscard]] Eigen::Index row_words() const { return stride_; } ///< code words per row

    /// Bits stored: the serialized bytes plus 16 per parameter. O(1).
    [[nodiscard]] double storage_bits() const { return 8.0 * serialized_bytes() + 16.0 * static_cast<double>(params_.size()); }

    /// The arrays the kernels read.
    [[nodiscard]] detail::salient_ternary_rows view() const {
        return {codes_.data(), params_.data(), map_.chunk_salient.data(), map_.first_chunk.data(), stride_,
                static_cast<Eigen::Index>(map_.blocks.size())};
    }

    /// Row i decoded to float in packed order into dst (padded_cols() entries; the scalar reference:
    /// the weight rule of the file comment, 0 on padding).
    void decode_row_scalar(Eigen::Index i, float* dst) const {
        const auto nb = static_cast<Eigen::Index>(map_.blocks.size());
        const std::uint16_t* wp = codes_.data() + i * stride_;
        for (Eigen::Index b = 0; b < nb; ++b) {
            float p[params_per_block];
            for (int e = 0; e < params_per_block; ++e)
                p[e] = detail::fp16_bits_to_float(params_[static_cast<std::size_t>((i * nb + b) * params_per_block + e)]);
            for (Eigen::Index c = map_.first_chunk[static_cast<std::size_t>(b)]; c < map_.first_chunk[static_cast<std::size_t>(b) + 1]; ++c) {
                const unsigned sal = map_.chunk_salient[static_cast<std::size_t>(c)];
                for (int l = 0; l < chunk_cols; ++l) {
                    const int t0 = static_cast<int>((wp[0] >> l) & 1u) - static_cast<int>((wp[1] >> l) & 1u);
                    const int g = static_cast<int>((wp[2] >> l) & 1u);
                    float v;
                    if ((sal >> l) & 1u) {
                        const int t1 = static_cast<int>((wp[3] >> l) & 1u) - static_cast<int>((wp[4] >> l) & 1u);
                        const float* s = p + 3 * g;
                        const float a = s[0] + s[1] * static_cast<float>(t0);
                        v = a + s[2] * static_cast<float>(t1);
                    } else {
                        const float* o = p + 6 + 2 * g;
                        v = o[0] + o[1] * static_cast<float>(t0);
                    }
                    dst[c * chunk_cols + l] = ((map_.chunk_real[static_cast<std::size_t>(c)] >> l) & 1u) ? v : 0.0f;
                }
                wp += sal != 0 ? 5 : 3;
            }
        }
    }

private:
    Eigen::Index stride_ = 0;
    std::vector<std::uint16_t> params_;
};

/// From this many tokens on, a non-scalar `gemm` decodes 64 rows at a time to float and multiplies
/// them with all tokens (Eigen GEMM) instead of decoding the weights per token.
inline constexpr Eigen::Index salient_ternary_batched_tokens = detail::salient_batched_tokens;

/// Below `salient_ternary_batched_tokens`, tokens go through the row kernels in groups of this many.
inline constexpr int salient_ternary_token_group = detail::salient_token_group;
#if LOWBIT_HAVE_X86_KERNELS
static_assert(salient_ternary_token_group == detail::salient_ternary_x86::max_tokens,
              "the x86 row kernels take exactly one token group");
#endif

/// Buffers of `gemm_into` for a salient-ternary matrix (a call of a shape seen before allocates nothing).
using salient_ternary_workspace = salient_workspace;

/// Y = X·Wᵀ `[tokens x rows]` into y for a salient-ternary matrix with fp32 activations, x
/// `[tokens x cols]` (see the file comment for paths and the error bound). O(tokens·rows·cols).
/// \throws shape_error (x.cols() ≠ cols, empty x, y of the wrong shape), numeric_error (NaN/Inf in
///         x), invalid_argument (an ISA this CPU lacks).
inline void gemm_into(const salient_ternary_matrix& w, const cref_matrix_f& x, act_fp32, Eigen::Ref<matrix_f> y,
                      salient_ternary_workspace& ws, kernel_isa isa = kernel_isa::automatic) {
    const kernel_isa path = detail::salient_gemm_start(w, x, y, ws, isa, "gemm(salient_ternary_matrix)");
    [[maybe_unused]] const detail::salient_ternary_rows v = w.view();
    [[maybe_unused]] const bool avx512 = LOWBIT_HAVE_X86_KERNELS && (path == kernel_isa::avx512 || path == kernel_isa::amx);
    [[maybe_unused]] const bool avx2 = LOWBIT_HAVE_X86_KERNELS && path == kernel_isa::avx2;
    detail::salient_gemm_run(
        w, y, ws, avx512 || avx2,
        [&]([[maybe_unused]] Eigen::Index i, [[maybe_unused]] float* dst) {
#if LOWBIT_HAVE_X86_KERNELS
            if (avx512) detail::salient_ternary_x86::decode_row_avx512(v, i, dst);
            else detail::salient_ternary_x86::decode_row_avx2(v, i, dst);
#endif
        },
        [&]([[maybe_unused]] Eigen::Index r0, [[maybe_unused]] Eigen::Index r1, [[maybe_unused]] const float* const* xp,
            [[maybe_unused]] int nt, [[maybe_unused]] float* out, [[maybe_unused]] Eigen::Index ldo) {
#if LOWBIT_HAVE_X86_KERNELS
            if (avx512) detail::salient_ternary_x86::dot_rows_avx512(v, r0, r1, xp, nt, out, ldo);
            else detail::salient_ternary_x86::dot_rows_avx2(v, r0, r1, xp, nt, out, ldo);
#endif
        });
}

/// Y = X·Wᵀ into a new matrix (`gemm_into` with a fresh workspace). \throws as gemm_into.
[[nodiscard]] inline matrix_f gemm(const salient_ternary_matrix& w, const cref_matrix_f& x, act_fp32 act = {},
                                   kernel_isa isa = kernel_isa::automatic) {
    return detail::salient_gemm(w, x, act, isa);
}

/// Salient-ternary weights × fp32 activations in `quantized_linear` (workspace local to the call).
template <>
struct linear_kernel<salient_ternary_matrix, act_fp32> : detail::salient_linear_fp32<salient_ternary_matrix> {};

/// Salient-ternary weights × symmetric per-token integer activations: quantize-dequantize on the
/// grid of gemm.hpp's `quantize_activations`, then the fp32 kernel.
template <>
struct linear_kernel<salient_ternary_matrix, act_int> : detail::salient_linear_int<salient_ternary_matrix> {};

LOWBIT_END_NAMESPACE
