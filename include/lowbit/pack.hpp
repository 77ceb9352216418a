#pragma once
/// \file pack.hpp
/// Bit-packed weight layouts for the low-bit kernels of gemm.hpp, one specialisation per width.
///
/// A `packed_matrix<Format>` holds a row-major `[rows x cols]` matrix of integer codes t_ij, packed
/// row by row into fixed-size blocks, plus one scale α_i per row and an optional offset μ_i per row:
///
///     w_ij = α_i · t_ij + μ_i            (μ_i = 0 when the matrix has no offsets)
///
/// (symmetric ternary α·t, asymmetric ternary μ + α·t, binary μ + α·b, symmetric int2/int4 α·q).
/// Each row is padded with t = 0 (binary: b = −1, which the kernels cancel exactly) to a whole
/// number of blocks; `bits_per_weight()` reports the effective storage including padding, scales
/// and offsets.
///
/// Formats (tag types; `pack_format<F>` gives their constants). Every format stores the unsigned
/// digit u = t + offset (binary: u = (b + 1)/2) and the kernels compute Σ t·x = m·Σ u·x − o·Σ x:
///
/// | tag             | codes t          | block  | bytes | layout of one block (u = stored digit)                          |
/// |-----------------|------------------|--------|-------|-----------------------------------------------------------------|
/// | `ternary2`      | {−1, 0, 1}       | 256    | 64    | byte j, bits 2k..2k+1 = u[64k + j], k = 0..3 (I2_S-style)        |
/// | `int2`          | {−2, −1, 0, 1}   | 256    | 64    | as ternary2, u = t + 2                                           |
/// | `ternary_base3` | {−1, 0, 1}       | 320    | 64    | byte j = ceil(256·v/243), v = Σ_k u[64k + j]·3^(4−k), k = 0..4    |
/// | `binary1`       | {−1, +1}         | 256    | 32    | bit i of byte j = u[8j + i] (u = 1 ⇔ +1)                         |
/// | `int4`          | {−8, …, 7}       | 256    | 128   | byte j: low nibble u[j], high nibble u[128 + j], u = t + 8       |
///
/// ternary_base3 stores 5 trits per byte (1.6 bits) as ggml's TQ1_0 does: digit k of byte s is
/// ⌊3·s_k/256⌋ with s_0 = s, s_{k+1} = 3·s_k mod 256; equivalently digit = [s_k ≥ 86] + [s_k ≥ 171].
/// The blocks are chosen so that an AVX-512 load of 64 bytes yields 4 (5) vectors of 64 digits each
/// aligned with 64 consecutive activations, and an AVX2 load of 32 bytes the same with 32.
///
/// `grouped_int4_matrix` holds int4 codes in the same blocks with an fp16 scale and offset per row and
/// per group of 128 (one nibble half of a block) or 256 (one block) columns instead of per row.
///
/// `interleaved_matrix<Format>` holds the same blocks with rows grouped in tiles of 4 (block b of
/// rows 4t..4t+3 contiguous), so that a GEMV streams one contiguous buffer and each activation
/// load feeds four rows; `interleave` / `deinterleave` convert exactly. Buffers of ≥ 2 MiB are
/// 2 MiB aligned and advised for transparent huge pages on Linux (see aligned64_allocator).

#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>
#include <lowbit/error.hpp>
#include <lowbit/types.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

LOWBIT_BEGIN_NAMESPACE

/// Format tag: symmetric ternary codes {−1, 0, 1} at 2 bits per weight.
struct ternary2 {};
/// Format tag: ternary codes {−1, 0, 1} at 1.6 bits per weight (5 trits per byte, base 3).
struct ternary_base3 {};
/// Format tag: binary codes {−1, +1} at 1 bit per weight.
struct binary1 {};
/// Format tag: symmetric 2-bit integers {−2, −1, 0, 1}.
struct int2 {};
/// Format tag: symmetric 4-bit integers {−8, …, 7}.
struct int4 {};

/// Constants of a packed format. The primary template refuses unknown tags.
template <class Format>
struct pack_format {
    static_assert(detail::dependent_false<Format>, "lowbit: pack_format: unknown packed format tag");
};

/// ternary2: 256 weights in 64 bytes, u = t + 1 in 2 bits.
template <>
struct pack_format<ternary2> {
    static constexpr const char* name = "ternary2";
    static constexpr int block_weights = 256, block_bytes = 64;
    static constexpr int code_min = -1, code_max = 1;
    static constexpr int digit_mul = 1, digit_offset = 1; ///< t = digit_mul·u − digit_offset
};
/// int2: as ternary2 with u = t + 2.
template <>
struct pack_format<int2> {
    static constexpr const char* name = "int2";
    static constexpr int block_weights = 256, block_bytes = 64;
    static constexpr int code_min = -2, code_max = 1;
    static constexpr int digit_mul = 1, digit_offset = 2;
};
/// ternary_base3: 320 weights in 64 bytes (5 trits per byte).
template <>
struct pack_format<ternary_base3> {
    static constexpr const char* name = "ternary_base3";
    static constexpr int block_weights = 320, block_bytes = 64;
    static constexpr int code_min = -1, code_max = 1;
    static constexpr int digit_mul = 1, digit_offset = 1;
};
/// binary1: 256 weights in 32 bytes; t = 2u − 1.
template <>
struct pack_format<binary1> {
    static constexpr const char* name = "binary1";
    static constexpr int block_weights = 256, block_bytes = 32;
    static constexpr int code_min = -1, code_max = 1;
    static constexpr int digit_mul = 2, digit_offset = 1;
};
/// int4: 256 weights in 128 bytes, u = t + 8 in a nibble.
template <>
struct pack_format<int4> {
    static constexpr const char* name = "int4";
    static constexpr int block_weights = 256, block_bytes = 128;
    static constexpr int code_min = -8, code_max = 7;
    static constexpr int digit_mul = 1, digit_offset = 8;
};

/// True for the format tags above.
template <class F>
concept PackedFormat = std::is_same_v<F, ternary2> || std::is_same_v<F, ternary_base3> ||
                       std::is_same_v<F, binary1> || std::is_same_v<F, int2> || std::is_same_v<F, int4>;

namespace detail {

/// Buffers of at least this many bytes are 2 MiB aligned and, on Linux, advised for transparent
/// huge pages (MADV_HUGEPAGE): a GEMV streams them once per call, and with 4 KiB pages the hardware
/// prefetchers stop at every page boundary.
inline constexpr std::size_t huge_page_bytes = std::size_t(2) << 20;

/// Minimal 64-byte aligned allocator for packed buffers (one cache line / one zmm); buffers of at
/// least huge_page_bytes are 2 MiB aligned and advised for transparent huge pages (Linux).
template <class T>
struct aligned64_allocator {
    using value_type = T;
    aligned64_allocator() = default;
    template <class U>
    aligned64_allocator(const aligned64_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        if (n == 0) n = 1;
        const std::size_t bytes = n * sizeof(T);
        if (bytes < huge_page_bytes) return static_cast<T*>(::operator new(bytes, std::align_val_t{64}));
        void* p = ::operator new(bytes, std::align_val_t{huge_page_bytes});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        (void)::madvise(p, bytes, MADV_HUGEPAGE); // advice only: failure leaves ordinary pages
#endif
        return static_cast<T*>(p);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        if (n * sizeof(T) < huge_page_bytes) ::operator delete(p, std::align_val_t{64});
        else ::operator delete(p, std::align_val_t{huge_page_bytes});
    }
    template <class U>
    bool operator==(const aligned64_allocator<U>&) const noexcept { return true; }
};

/// Packs one block of digits `u[0 .. block_weights)` (values already offset, in range) into `out`.
template <class F>
inline void pack_block(const std::uint8_t* u, std::uint8_t* out) noexcept {
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        for (int j = 0; j < 64; ++j)
            out[j] = static_cast<std::uint8_t>(u[j] | (u[64 + j] << 2) | (u[128 + j] << 4) | (u[192 + j] << 6));
    } else if constexpr (std::is_same_v<F, ternary_base3>) {
        for (int j = 0; j < 64; ++j) {
            int v = 0;
            for (int k = 0; k < 5; ++k) v = 3 * v + u[64 * k + j];
            out[j] = static_cast<std::uint8_t>((v * 256 + 242) / 243); // ceil(256 v / 243) ≤ 255
        }
    } else if constexpr (std::is_same_v<F, binary1>) {
        for (int j = 0; j < 32; ++j) {
            unsigned b = 0;
            for (int i = 0; i < 8; ++i) b |= static_cast<unsigned>(u[8 * j + i]) << i;
            out[j] = static_cast<std::uint8_t>(b);
        }
    } else if constexpr (std::is_same_v<F, int4>) {
        for (int j = 0; j < 128; ++j) out[j] = static_cast<std::uint8_t>(u[j] | (u[128 + j] << 4));
    } else {
        static_assert(dependent_false<F>, "lowbit: pack_block: unknown packed format tag");
    }
}

/// Unpacks one block into digits `u[0 .. block_weights)` (the scalar reference decoder).
template <class F>
inline void unpack_block(const std::uint8_t* in, std::uint8_t* u) noexcept {
    if constexpr (std::is_same_v<F, ternary2> || std::is_same_v<F, int2>) {
        for (int j = 0; j < 64; ++j)
            for (int k = 0; k < 4; ++k) u[64 * k + j] = static_cast<std::uint8_t>((in[j] >> (2 * k)) & 3);
    } else if constexpr (std::is_same_v<F, ternary_base3>) {
        for (int j = 0; j < 64; ++j) {
            unsigned s = in[j];
            for (int k = 0; k < 5; ++k) {
                const unsigned t = 3 * s;
                u[64 * k + j] = static_cast<std::uint8_t>(t >> 8);
                s = t & 0xFF;
            }
        }
    } else if constexpr (std::is_same_v<F, binary1>) {
        for (int j = 0; j < 256; ++j) u[j] = static_cast<std::uint8_t>((in[j >> 3] >> (j & 7)) & 1);
    } else if constexpr (std::is_same_v<F, int4>) {
        for (int j = 0; j < 128; ++j) {
            u[j] = static_cast<std::uint8_t>(in[j] & 15);
            u[128 + j] = static_cast<std::uint8_t>(in[j] >> 4);
        }
    } else {
        static_assert(dependent_false<F>, "lowbit: unpack_block: unknown packed format tag");
    }
}

} // namespace detail

namespace detail {

/// Reference decoder of both layouts (`packed_matrix`, `interleaved_matrix`): the integer codes t
/// `[rows x cols]` read block by block through `m.block_data(i, b)`. O(rows·padded_cols).
template <class M>
[[nodiscard]] matrix_i8 decode_codes(const M& m) {
    using traits = pack_format<typename M::format>;
    matrix_i8 t(m.rows(), m.cols());
    std::vector<std::uint8_t> u(traits::block_weights);
    for (Eigen::Index i = 0; i < m.rows(); ++i)
        for (Eigen::Index b = 0; b < m.blocks_per_row(); ++b) {
            unpack_block<typename M::format>(m.block_data(i, b), u.data());
            for (Eigen::Index j = 0; j < traits::block_weights; ++j) {
                const Eigen::Index c = b * traits::block_weights + j;
                if (c < m.cols()) t(i, c) = static_cast<std::int8_t>(traits::digit_mul * u[j] - traits::digit_offset);
            }
        }
    return t;
}

/// The float weights α_i·t_ij + μ_i of either layout. O(rows·cols).
template <class M>
[[nodiscard]] matrix_f dequantize_codes(const M& m) {
    const matrix_i8 t = decode_codes(m);
    matrix_f w(m.rows(), m.cols());
    for (Eigen::Index i = 0; i < m.rows(); ++i)
        for (Eigen::Index j = 0; j < m.cols(); ++j)
            w(i, j) = m.scale()(i) * static_cast<float>(t(i, j)) + (m.has_offset() ? m.offset()(i) : 0.0f);
    return w;
}

/// (stored bytes + 4 per scale and offset)·8 / (rows·cols) of either layout.
template <class M>
[[nodiscard]] double stored_bits_per_weight(const M& m) noexcept {
    const double bytes = static_cast<double>(m.bytes().size()) + 4.0 * static_cast<double>(m.scale().size() + m.offset().size());
    return 8.0 * bytes / (static_cast<double>(m.rows()) * static_cast<double>(m.cols()));
}

} // namespace detail

/// A packed `[rows x cols]` code matrix with per-row scale α and optional per-row offset μ;
/// w_ij = α_i·t_ij + μ_i. Row i occupies `row_bytes()` contiguous bytes starting at `row_data(i)`;
/// the buffer is 64-byte aligned. Build it with `pack<Format>(codes, scale[, offset])` or from raw
/// bytes (file formats) with the checked constructor.
///
/// Thread safety: a const packed matrix may be read from several threads at once — `gemv`, `gemm`,
/// `gemm_parallel`, `interleave`, the decoders — since the kernels only read the bytes, scales and
/// offsets and write their own outputs (no cache, no lazily built state). Writing to it (assignment)
/// while another thread reads is a data race. The same holds for `interleaved_matrix`.
template <class Format>
class packed_matrix {
    static_assert(PackedFormat<Format>, "lowbit: packed_matrix: unknown packed format tag");

public:
    using format = Format;                        ///< the format tag
    using traits = pack_format<Format>;           ///< its constants
    using buffer = std::vector<std::uint8_t, detail::aligned64_allocator<std::uint8_t>>;

    packed_matrix() = default;

    /// Adopts already packed bytes. `bytes.size()` must equal rows·blocks_per_row(cols)·block_bytes,
    /// `scale` has `rows` finite entries, `offset` is empty or has `rows` finite entries.
    /// \throws shape_error (sizes), numeric_error (NaN/Inf), invalid_argument (rows/cols < 1).
    packed_matrix(Eigen::Index rows, Eigen::Index cols, buffer bytes, vector_f scale, vector_f offset = {})
        : rows_(rows), cols_(cols), data_(std::move(bytes)), scale_(std::move(scale)), offset_(std::move(offset)) {
        constexpr const char* where = "packed_matrix";
        detail::require<shape_error>(rows >= 1 && cols >= 1, where, "rows and cols must be >= 1");
        detail::require_dim(static_cast<Eigen::Index>(data_.size()), rows * row_bytes(), where, "packed byte count");
        detail::require_dim(scale_.size(), rows, where, "scale length");
        detail::require_finite(scale_, where, "scale");
        if (offset_.size() != 0) detail::require_dim(offset_.size(), rows, where, "offset length");
        detail::require_finite(offset_, where, "offset");
    }

    /// Blocks per row for `cols` columns: ceil(cols / block_weights).
    [[nodiscard]] static Eigen::Index blocks_for(Eigen::Index cols) noexcept {
        return (cols + traits::block_weights - 1) / traits::block_weights;
    }
    [[nodiscard]] Eigen::Index rows() const noexcept { return rows_; }              ///< output features
    [[nodiscard]] Eigen::Index cols() const noexcept { return cols_; }              ///< input features
    [[nodiscard]] Eigen::Index blocks_per_row() const noexcept { return blocks_for(cols_); }
    /// Columns including the zero padding of the last block.
    [[nodiscard]] Eigen::Index padded_cols() const noexcept { return blocks_per_row() * traits::block_weights; }
    /// Bytes per packed row.
    [[nodiscard]] Eigen::Index row_bytes() const noexcept { return blocks_per_row() * traits::block_bytes; }
    /// Pointer to the packed bytes of row i (no bounds check).
    [[nodiscard]] const std::uint8_t* row_data(Eigen::Index i) const noexcept { return data_.data() + i * row_bytes(); }
    /// Pointer to block b of row i (no bounds check); consecutive blocks of a row are `block_bytes` apart.
    [[nodiscard]] const std::uint8_t* block_data(Eigen::Index i, Eigen::Index b) const noexcept {
        return row_data(i) + b * traits::block_bytes;
    }
    /// Bytes between block b and block b + 1 of one row: `block_bytes`.
    [[nodiscard]] static constexpr Eigen::Index block_stride() noexcept { return traits::block_bytes; }
    [[nodiscard]] const buffer& bytes() const noexcept { return data_; }             ///< all packed bytes
    [[nodiscard]] const vector_f& scale() const noexcept { return scale_; }          ///< α, length rows
    [[nodiscard]] const vector_f& offset() const noexcept { return offset_; }        ///< μ, length rows or 0
    [[nodiscard]] bool has_offset() const noexcept { return offset_.size() != 0; }   ///< μ present
    /// Effective storage in bits per weight: (packed bytes + 4 bytes per scale and offset) · 8 / (rows·cols).
    [[nodiscard]] double bits_per_weight() const noexcept { return detail::stored_bits_per_weight(*this); }

    /// The integer codes t as `[rows x cols]` int8 (reference decoder). O(rows·padded_cols).
    [[nodiscard]] matrix_i8 codes() const { return detail::decode_codes(*this); }

    /// The float weights α_i·t_ij + μ_i. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const { return detail::dequantize_codes(*this); }

private:
    Eigen::Index rows_ = 0, cols_ = 0;
    buffer data_;
    vector_f scale_, offset_;
};

/// Packs integer codes `codes` `[rows x cols]` (each in the format's code range) with per-row
/// scales `scale` (length rows) and optional per-row offsets `offset` (length rows, or empty).
/// \throws shape_error (empty codes, length mismatch), invalid_argument (a code out of range, naming
///         its position), numeric_error (NaN/Inf scale or offset). O(rows·cols).
template <class Format>
[[nodiscard]] packed_matrix<Format> pack(const Eigen::Ref<const matrix_i8>& codes, const cref_vector_f& scale,
                                         const cref_vector_f& offset = vector_f()) {
    static_assert(PackedFormat<Format>, "lowbit: pack: unknown packed format tag");
    using T = pack_format<Format>;
    constexpr const char* where = "pack";
    detail::require_nonempty(codes, where, "codes");
    detail::require_dim(scale.size(), codes.rows(), where, "scale length");
    if (offset.size() != 0) detail::require_dim(offset.size(), codes.rows(), where, "offset length");
    const Eigen::Index rows = codes.rows(), cols = codes.cols();
    const Eigen::Index nb = packed_matrix<Format>::blocks_for(cols);
    typename packed_matrix<Format>::buffer bytes(static_cast<std::size_t>(rows * nb * T::block_bytes));
    std::vector<std::uint8_t> u(T::block_weights);
    // padding digit: t = 0 (binary: b = −1, u = 0; cancelled in the kernels because x is zero-padded)
    const std::uint8_t pad = static_cast<std::uint8_t>(T::digit_mul == 1 ? T::digit_offset : 0);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index b = 0; b < nb; ++b) {
            for (Eigen::Index j = 0; j < T::block_weights; ++j) {
                const Eigen::Index c = b * T::block_weights + j;
                if (c >= cols) {
                    u[j] = pad;
                    continue;
                }
                const int t = codes(i, c);
                const bool ok = t >= T::code_min && t <= T::code_max && (T::digit_mul == 1 || t != 0);
                if (!ok)
                    throw invalid_argument(std::string("lowbit: pack<") + T::name + ">: argument 'codes' has value " +
                                           std::to_string(t) + " at (" + std::to_string(i) + ", " + std::to_string(c) +
                                           "), outside the format's code set");
                u[j] = static_cast<std::uint8_t>((t + T::digit_offset) / T::digit_mul);
            }
            detail::pack_block<Format>(u.data(), bytes.data() + (i * nb + b) * T::block_bytes);
        }
    return packed_matrix<Format>(rows, cols, std::move(bytes), vector_f(scale), vector_f(offset));
}

/// Recovers the integer codes of a row-wise affine quantization: for weights `q` `[rows x cols]` that lie
/// on the grid q_ij = α_i·t_ij + μ_i (the dequantized output of a quantizer or of GPTQ, e.g.
/// `gptq_result::weights`), returns t_ij = round((q_ij − μ_i)/α_i) clamped to the code range of `Format`
/// (binary1: t = +1 if q_ij ≥ μ_i, else −1; a row with α_i = 0 gets t = 0, binary +1/−1 by sign).
/// `offset` may be empty (μ = 0). Computed in double. With `tolerance` ≥ 0 every weight is checked:
/// |α_i·t_ij + μ_i − q_ij| ≤ tolerance·(|α_i| + |μ_i|) + 1e-30, else `invalid_argument` naming the
/// position (the weights are not on this format's grid: wrong format, scale or offset).
/// \throws shape_error (empty q, length mismatch), numeric_error (NaN/Inf), invalid_argument (off grid).
/// O(rows·cols). `pack<Format>(recover_codes<Format>(q, α, μ), α, μ)` packs the matrix.
template <class Format>
[[nodiscard]] matrix_i8 recover_codes(const cref_matrix_f& q, const cref_vector_f& scale,
                                      const cref_vector_f& offset = vector_f(), double tolerance = 1e-4) {
    static_assert(PackedFormat<Format>, "lowbit: recover_codes: unknown packed format tag");
    using T = pack_format<Format>;
    constexpr const char* where = "recover_codes";
    detail::require_nonempty(q, where, "q");
    detail::require_finite(q, where, "q");
    detail::require_dim(scale.size(), q.rows(), where, "scale length");
    detail::require_finite(scale, where, "scale");
    if (offset.size() != 0) {
        detail::require_dim(offset.size(), q.rows(), where, "offset length");
        detail::require_finite(offset, where, "offset");
    }
    constexpr bool binary = T::digit_mul == 2;
    matrix_i8 t(q.rows(), q.cols());
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        const double mu = offset.size() ? static_cast<double>(offset(i)) : 0.0;
        const double a = static_cast<double>(scale(i));
        for (Eigen::Index j = 0; j < q.cols(); ++j) {
            const double d = static_cast<double>(q(i, j)) - mu;
            int c = 0;
            if constexpr (binary) {
                c = d >= 0.0 ? 1 : -1;
            } else {
                const double v = a != 0.0 ? std::nearbyint(d / a) : 0.0;
                c = static_cast<int>(std::fmin(std::fmax(v, static_cast<double>(T::code_min)), static_cast<double>(T::code_max)));
            }
            t(i, j) = static_cast<std::int8_t>(c);
            if (tolerance >= 0.0 && std::fabs(a * c - d) > tolerance * (std::fabs(a) + std::fabs(mu)) + 1e-30)
                throw invalid_argument(std::string("lowbit: recover_codes<") + T::name + ">: weight (" + std::to_string(i) +
                                       ", " + std::to_string(j) + ") = " + std::to_string(q(i, j)) +
                                       " is not on the grid scale*t + offset of this format (scale " + std::to_string(a) +
                                       ", offset " + std::to_string(mu) + ")");
        }
    }
    return t;
}

/// Row-interleaved packed matrix: the same codes, scales and offsets as `packed_matrix<Format>`,
/// with rows grouped in tiles of `tile_rows` = 4 so that a kernel streams one contiguous buffer and
/// one activation load feeds four rows.
///
/// Layout: rows are padded to a multiple of 4 (padding rows hold t = 0, binary b = −1; kernels never
/// report them). Tile t (rows 4t .. 4t + 3) occupies `tile_bytes()` = 4·row_bytes() contiguous bytes;
/// inside it, block b of row 4t + r starts at byte (4·b + r)·block_bytes — block b of the four rows
/// is contiguous (one 256-byte run for ternary2), then block b + 1. Each block has the byte layout of
/// `packed_matrix<Format>` (pack.hpp table), so the same decoders apply.
///
/// Convert with `interleave(packed)` and `deinterleave(interleaved)` (exact, O(bytes)); the byte
/// count and `bits_per_weight()` include the padding rows. Thread safety: as `packed_matrix` (a const
/// object may be used by several threads at once).
template <class Format>
class interleaved_matrix {
    static_assert(PackedFormat<Format>, "lowbit: interleaved_matrix: unknown packed format tag");

public:
    using format = Format;                                    ///< the format tag
    using traits = pack_format<Format>;                       ///< its constants
    using buffer = typename packed_matrix<Format>::buffer;    ///< 64-byte aligned bytes
    static constexpr int tile_rows = 4;                       ///< rows per interleaved tile

    interleaved_matrix() = default;

    /// Adopts already interleaved bytes: `bytes.size()` must equal tiles(rows)·4·blocks_for(cols)·block_bytes,
    /// `scale` has `rows` finite entries, `offset` is empty or has `rows` finite entries.
    /// \throws shape_error (sizes, rows/cols < 1), numeric_error (NaN/Inf).
    interleaved_matrix(Eigen::Index rows, Eigen::Index cols, buffer bytes, vector_f scale, vector_f offset = {})
        : rows_(rows), cols_(cols), data_(std::move(bytes)), scale_(std::move(scale)), offset_(std::move(offset)) {
        constexpr const char* where = "interleaved_matrix";
        detail::require<shape_error>(rows >= 1 && cols >= 1, where, "rows and cols must be >= 1");
        detail::require_dim(static_cast<Eigen::Index>(data_.size()), tiles() * tile_bytes(), where, "packed byte count");
        detail::require_dim(scale_.size(), rows, where, "scale length");
        detail::require_finite(scale_, where, "scale");
        if (offset_.size() != 0) detail::require_dim(offset_.size(), rows, where, "offset length");
        detail::require_finite(offset_, where, "offset");
    }

    [[nodiscard]] Eigen::Index rows() const noexcept { return rows_; }                       ///< output features
    [[nodiscard]] Eigen::Index cols() const noexcept { return cols_; }                       ///< input features
    [[nodiscard]] Eigen::Index tiles() const noexcept { return (rows_ + tile_rows - 1) / tile_rows; } ///< ceil(rows/4)
    [[nodiscard]] Eigen::Index blocks_per_row() const noexcept { return packed_matrix<Format>::blocks_for(cols_); }
    /// Columns including the padding of the last block.
    [[nodiscard]] Eigen::Index padded_cols() const noexcept { return blocks_per_row() * traits::block_weights; }
    /// Packed bytes of one row (as in packed_matrix).
    [[nodiscard]] Eigen::Index row_bytes() const noexcept { return blocks_per_row() * traits::block_bytes; }
    /// Bytes of one tile of 4 rows.
    [[nodiscard]] Eigen::Index tile_bytes() const noexcept { return tile_rows * row_bytes(); }
    /// Pointer to tile t (no bounds check).
    [[nodiscard]] const std::uint8_t* tile_data(Eigen::Index t) const noexcept { return data_.data() + t * tile_bytes(); }
    /// Pointer to block b of row i (no bounds check); consecutive blocks of a row are block_stride() apart.
    [[nodiscard]] const std::uint8_t* block_data(Eigen::Index i, Eigen::Index b) const noexcept {
        return tile_data(i / tile_rows) + (b * tile_rows + i % tile_rows) * traits::block_bytes;
    }
    /// Bytes between block b and block b + 1 of one row: 4·block_bytes.
    [[nodiscard]] static constexpr Eigen::Index block_stride() noexcept { return tile_rows * traits::block_bytes; }
    [[nodiscard]] const buffer& bytes() const noexcept { return data_; }             ///< all interleaved bytes
    [[nodiscard]] const vector_f& scale() const noexcept { return scale_; }          ///< α, length rows
    [[nodiscard]] const vector_f& offset() const noexcept { return offset_; }        ///< μ, length rows or 0
    [[nodiscard]] bool has_offset() const noexcept { return offset_.size() != 0; }   ///< μ present
    /// Effective storage in bits per weight, padding rows included: (bytes + 4 per scale/offset)·8/(rows·cols).
    [[nodiscard]] double bits_per_weight() const noexcept { return detail::stored_bits_per_weight(*this); }
    /// The integer codes t as `[rows x cols]` int8 (reference decoder). O(rows·padded_cols).
    [[nodiscard]] matrix_i8 codes() const { return detail::decode_codes(*this); }
    /// The float weights α_i·t_ij + μ_i. O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const { return detail::dequantize_codes(*this); }

private:
    Eigen::Index rows_ = 0, cols_ = 0;
    buffer data_;
    vector_f scale_, offset_;
};

/// True for `packed_matrix<F>` and `interleaved_matrix<F>` (the weight types of the integer kernels).
template <class M>
concept PackedWeights = requires { typename M::format; } &&
                        (std::is_same_v<M, packed_matrix<typename M::format>> ||
                         std::is_same_v<M, interleaved_matrix<typename M::format>>);

/// int4 codes with an fp16 scale α_ig and offset μ_ig per row i and per group g of G ∈ {128, 256}
/// consecutive columns (grouped GPTQ / Q4_1-style storage):
///
///     w_ij = α_{i,⌊j/G⌋}·t_ij + μ_{i,⌊j/G⌋},   t_ij ∈ {−8, …, 7}
///
/// Layout: the codes are a `packed_matrix<int4>` (`codes()`, unit per-row scale, no offset) in the
/// int4 block layout of the table above, so G = 128 is exactly one nibble half of a 256-weight block
/// (low nibbles: group 2b, high nibbles: group 2b + 1) and G = 256 one block; the kernels
/// (gemm.hpp `gemm` on a grouped_int4_matrix) form exact int32 sums per half block and combine them
/// per group. `scale()` and `offset()` are `[rows x groups()]`, groups() = ⌈cols/G⌉ (the last group
/// may be narrower; its padding codes are 0). Scales and offsets must be fp16-representable (checked),
/// so `bits_per_weight()` counts them at 16 bits: (packed bytes·8 + 32·rows·groups)/(rows·cols),
/// 4.25 for G = 128 and 4.125 for G = 256 when 256 divides cols.
/// Thread safety: as `packed_matrix` (const objects may be read from several threads).
class grouped_int4_matrix {
public:
    grouped_int4_matrix() = default;

    /// Adopts packed codes (`codes.scale()` must be all ones and `codes` without offsets), G ∈ {128, 256},
    /// scale and offset `[codes.rows() x ⌈codes.cols()/G⌉]`, finite and fp16-representable.
    /// \throws invalid_argument (G, codes with scale ≠ 1 or offsets, values not fp16), shape_error
    ///         (shapes), numeric_error (NaN/Inf).
    grouped_int4_matrix(packed_matrix<int4> codes, Eigen::Index group_cols, matrix_f scale, matrix_f offset)
        : codes_(std::move(codes)), group_cols_(group_cols), scale_(std::move(scale)), offset_(std::move(offset)) {
        constexpr const char* where = "grouped_int4_matrix";
        detail::require(group_cols == 128 || group_cols == 256, where,
                        "group size must be 128 or 256, got " + std::to_string(group_cols));
        detail::require(!codes_.has_offset() && (codes_.scale().array() == 1.0f).all(), where,
                        "the code matrix must have unit scales and no offsets");
        detail::require_dim(scale_.rows(), codes_.rows(), where, "scale rows");
        detail::require_dim(scale_.cols(), groups(), where, "scale columns (groups)");
        detail::require_dim(offset_.rows(), codes_.rows(), where, "offset rows");
        detail::require_dim(offset_.cols(), groups(), where, "offset columns (groups)");
        detail::require_finite(scale_, where, "scale");
        detail::require_finite(offset_, where, "offset");
        auto fp16 = [](const matrix_f& m) {
            for (Eigen::Index k = 0; k < m.size(); ++k)
                if (static_cast<float>(Eigen::half(m.data()[k])) != m.data()[k]) return false;
            return true;
        };
        detail::require(fp16(scale_) && fp16(offset_), where, "scales and offsets must be fp16-representable");
    }

    [[nodiscard]] Eigen::Index rows() const noexcept { return codes_.rows(); }       ///< output features
    [[nodiscard]] Eigen::Index cols() const noexcept { return codes_.cols(); }       ///< input features
    [[nodiscard]] Eigen::Index group_cols() const noexcept { return group_cols_; }   ///< G (128 or 256)
    /// Groups per row: ⌈cols/G⌉.
    [[nodiscard]] Eigen::Index groups() const noexcept { return (cols() + group_cols_ - 1) / group_cols_; }
    [[nodiscard]] const packed_matrix<int4>& codes() const noexcept { return codes_; } ///< packed t (unit scale)
    [[nodiscard]] const matrix_f& scale() const noexcept { return scale_; }          ///< α `[rows x groups]`
    [[nodiscard]] const matrix_f& offset() const noexcept { return offset_; }        ///< μ `[rows x groups]`
    /// (packed bytes·8 + 16 bits per scale and offset) / (rows·cols).
    [[nodiscard]] double bits_per_weight() const noexcept {
        return (8.0 * static_cast<double>(codes_.bytes().size()) + 16.0 * static_cast<double>(scale_.size() + offset_.size())) /
               (static_cast<double>(rows()) * static_cast<double>(cols()));
    }
    /// The float weights α·t + μ (float arithmetic). O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        const matrix_i8 t = codes_.codes();
        matrix_f w(rows(), cols());
        for (Eigen::Index i = 0; i < rows(); ++i)
            for (Eigen::Index j = 0; j < cols(); ++j) {
                const Eigen::Index g = j / group_cols_;
                w(i, j) = scale_(i, g) * static_cast<float>(t(i, j)) + offset_(i, g);
            }
        return w;
    }

private:
    packed_matrix<int4> codes_;
    Eigen::Index group_cols_ = 128;
    matrix_f scale_, offset_;
};

/// Packs int4 codes `codes` `[rows x cols]` (each in −8…7) with per-group scales and offsets
/// `[rows x ⌈cols/G⌉]` (fp16-representable; round them with Eigen::half first) into a grouped_int4_matrix.
/// \throws as `pack<int4>` and the grouped_int4_matrix constructor. O(rows·cols).
[[nodiscard]] inline grouped_int4_matrix pack_grouped_int4(const Eigen::Ref<const matrix_i8>& codes, Eigen::Index group_cols,
                                                           const matrix_f& scale, const matrix_f& offset) {
    return grouped_int4_matrix(pack<int4>(codes, vector_f::Ones(codes.rows())), group_cols, scale, offset);
}

/// Row-interleaved copy of `w` (tiles of 4 rows, see interleaved_matrix); codes, scales and offsets
/// unchanged. O(bytes).
template <class Format>
[[nodiscard]] interleaved_matrix<Format> interleave(const packed_matrix<Format>& w) {
    using T = pack_format<Format>;
    using I = interleaved_matrix<Format>;
    const Eigen::Index tiles = (w.rows() + I::tile_rows - 1) / I::tile_rows, nb = w.blocks_per_row();
    typename I::buffer bytes(static_cast<std::size_t>(tiles * I::tile_rows * w.row_bytes()));
    // padding rows: the block of all-padding digits (t = 0; binary b = −1)
    std::vector<std::uint8_t> u(T::block_weights, static_cast<std::uint8_t>(T::digit_mul == 1 ? T::digit_offset : 0)),
        pad(T::block_bytes);
    detail::pack_block<Format>(u.data(), pad.data());
    for (Eigen::Index t = 0; t < tiles; ++t)
        for (Eigen::Index b = 0; b < nb; ++b)
            for (Eigen::Index r = 0; r < I::tile_rows; ++r) {
                const Eigen::Index i = t * I::tile_rows + r;
                const std::uint8_t* src = i < w.rows() ? w.block_data(i, b) : pad.data();
                std::memcpy(bytes.data() + ((t * nb + b) * I::tile_rows + r) * T::block_bytes, src, T::block_bytes);
            }
    return I(w.rows(), w.cols(), std::move(bytes), w.scale(), w.offset());
}

/// Row-major copy of an interleaved matrix (inverse of interleave, bit for bit). O(bytes).
template <class Format>
[[nodiscard]] packed_matrix<Format> deinterleave(const interleaved_matrix<Format>& w) {
    using T = pack_format<Format>;
    typename packed_matrix<Format>::buffer bytes(static_cast<std::size_t>(w.rows() * w.row_bytes()));
    for (Eigen::Index i = 0; i < w.rows(); ++i)
        for (Eigen::Index b = 0; b < w.blocks_per_row(); ++b)
            std::memcpy(bytes.data() + (i * w.blocks_per_row() + b) * T::block_bytes, w.block_data(i, b), T::block_bytes);
    return packed_matrix<Format>(w.rows(), w.cols(), std::move(bytes), w.scale(), w.offset());
}

/// MXFP4 layout tag: a 17-byte block per 32 elements, byte 0 = E8M0 scale code, byte 1 + i holds
/// element 2i in its low nibble and element 2i + 1 in its high nibble (row-major nibbles).
struct mxfp4_rowmajor {};
/// MXFP4 layout tag: ggml's `block_mxfp4` — byte 0 = E8M0 code, byte 1 + i holds element i in its
/// low nibble and element 16 + i in its high nibble (split halves).
struct mxfp4_ggml {};

namespace detail {
/// Row-major uint8 matrix (E2M1 / E8M0 codes).
using u8_matrix = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// FP4 E2M1 code → twice its value, an integer in {0, ±1, ±2, ±3, ±4, ±6, ±8, ±12} (OCP MX v1.0
/// table: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign).
inline constexpr std::int8_t e2m1_doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/// E8M0 code c → 2^(c − 127) as float (c = 255 is NaN in the spec; lowbit's packer rejects it).
inline float e8m0_value(std::uint8_t c) noexcept { return std::ldexp(1.0f, static_cast<int>(c) - 127); }

/// Nibble position of element j (0..31) of an MXFP4 block: byte index (from 1) and shift.
template <class Layout>
inline void mxfp4_position(int j, int& byte, int& shift) noexcept {
    if constexpr (std::is_same_v<Layout, mxfp4_ggml>) {
        byte = 1 + (j & 15);
        shift = j < 16 ? 0 : 4;
    } else {
        byte = 1 + j / 2;
        shift = (j & 1) ? 4 : 0;
    }
}
} // namespace detail

/// An MXFP4 matrix `[rows x cols]`: blocks of 32 elements along a row share an E8M0 scale;
/// w_ij = 2^(E_{i, j/32} − 127) · e2m1(c_ij). Row i is blocks_per_row() blocks of 17 bytes
/// (layout tag `mxfp4_rowmajor` or `mxfp4_ggml`); the last block is zero-padded (codes 0).
template <class Layout>
class packed_mxfp4 {
    static_assert(std::is_same_v<Layout, mxfp4_rowmajor> || std::is_same_v<Layout, mxfp4_ggml>,
                  "lowbit: packed_mxfp4: layout must be mxfp4_rowmajor or mxfp4_ggml");

public:
    using layout = Layout;                                                          ///< layout tag
    using buffer = std::vector<std::uint8_t, detail::aligned64_allocator<std::uint8_t>>;
    static constexpr int block_weights = 32, block_bytes = 17;                      ///< block geometry

    packed_mxfp4() = default;
    /// Adopts packed bytes (e.g. ggml tensors); size must be rows·ceil(cols/32)·17; E8M0 code 255
    /// (NaN) is rejected. \throws shape_error, numeric_error.
    packed_mxfp4(Eigen::Index rows, Eigen::Index cols, buffer bytes) : rows_(rows), cols_(cols), data_(std::move(bytes)) {
        constexpr const char* where = "packed_mxfp4";
        detail::require<shape_error>(rows >= 1 && cols >= 1, where, "rows and cols must be >= 1");
        detail::require_dim(static_cast<Eigen::Index>(data_.size()), rows * row_bytes(), where, "packed byte count");
        for (Eigen::Index i = 0; i < rows * blocks_per_row(); ++i)
            detail::require<numeric_error>(data_[static_cast<std::size_t>(i * block_bytes)] != 255, where,
                                           "E8M0 scale code 255 (NaN)");
    }
    [[nodiscard]] Eigen::Index rows() const noexcept { return rows_; }                ///< output features
    [[nodiscard]] Eigen::Index cols() const noexcept { return cols_; }                ///< input features
    [[nodiscard]] Eigen::Index blocks_per_row() const noexcept { return (cols_ + 31) / 32; } ///< blocks per row
    [[nodiscard]] Eigen::Index padded_cols() const noexcept { return blocks_per_row() * 32; } ///< padded columns
    [[nodiscard]] Eigen::Index row_bytes() const noexcept { return blocks_per_row() * block_bytes; } ///< bytes per row
    [[nodiscard]] const std::uint8_t* row_data(Eigen::Index i) const noexcept { return data_.data() + i * row_bytes(); }
    [[nodiscard]] const buffer& bytes() const noexcept { return data_; }                ///< all packed bytes
    /// (packed bytes · 8) / (rows · cols): 4.25 when cols is a multiple of 32.
    [[nodiscard]] double bits_per_weight() const noexcept {
        return 8.0 * static_cast<double>(data_.size()) / (static_cast<double>(rows_) * static_cast<double>(cols_));
    }
    /// E2M1 codes `[rows x cols]` (reference decoder).
    [[nodiscard]] detail::u8_matrix codes() const {
        detail::u8_matrix c(rows_, cols_);
        for (Eigen::Index i = 0; i < rows_; ++i)
            for (Eigen::Index j = 0; j < cols_; ++j) {
                int byte = 0, shift = 0;
                detail::mxfp4_position<Layout>(static_cast<int>(j % 32), byte, shift);
                c(i, j) = static_cast<std::uint8_t>((row_data(i)[(j / 32) * block_bytes + byte] >> shift) & 15);
            }
        return c;
    }
    /// E8M0 scale codes `[rows x blocks_per_row]`.
    [[nodiscard]] detail::u8_matrix scales() const {
        detail::u8_matrix e(rows_, blocks_per_row());
        for (Eigen::Index i = 0; i < rows_; ++i)
            for (Eigen::Index b = 0; b < blocks_per_row(); ++b) e(i, b) = row_data(i)[b * block_bytes];
        return e;
    }
    /// The float weights 2^(E−127) · e2m1(c) (exact in float for E8M0 codes ≥ 1). O(rows·cols).
    [[nodiscard]] matrix_f dequantize() const {
        const detail::u8_matrix c = codes(), e = scales();
        matrix_f w(rows_, cols_);
        for (Eigen::Index i = 0; i < rows_; ++i)
            for (Eigen::Index j = 0; j < cols_; ++j)
                w(i, j) = 0.5f * static_cast<float>(detail::e2m1_doubled[c(i, j)]) * detail::e8m0_value(e(i, j / 32));
        return w;
    }

private:
    Eigen::Index rows_ = 0, cols_ = 0;
    buffer data_;
};

/// Packs MXFP4 element codes `codes` `[rows x cols]` (E2M1 codes 0..15, e.g. `quantize_mx<mxfp4>(w).codes`)
/// and E8M0 scale codes `scales` `[rows x ceil(cols/32)]` (0..254) into `Layout`.
/// \throws shape_error (empty, scale shape), invalid_argument (code > 15), numeric_error (scale 255).
template <class Layout>
[[nodiscard]] packed_mxfp4<Layout> pack_mxfp4(const Eigen::Ref<const detail::u8_matrix>& codes,
                                              const Eigen::Ref<const detail::u8_matrix>& scales) {
    constexpr const char* where = "pack_mxfp4";
    detail::require_nonempty(codes, where, "codes");
    const Eigen::Index rows = codes.rows(), cols = codes.cols(), nb = (cols + 31) / 32;
    detail::require_dim(scales.rows(), rows, where, "scales.rows()");
    detail::require_dim(scales.cols(), nb, where, "scales.cols() (blocks of 32 per row)");
    typename packed_mxfp4<Layout>::buffer bytes(static_cast<std::size_t>(rows * nb * 17), 0);
    for (Eigen::Index i = 0; i < rows; ++i) {
        std::uint8_t* r = bytes.data() + i * nb * 17;
        for (Eigen::Index b = 0; b < nb; ++b) {
            detail::require<numeric_error>(scales(i, b) != 255, where, "argument 'scales' has E8M0 code 255 (NaN)");
            r[b * 17] = scales(i, b);
        }
        for (Eigen::Index j = 0; j < cols; ++j) {
            detail::require(codes(i, j) < 16, where, [&] {
                return "argument 'codes' has a value above 15 at (" + std::to_string(i) + ", " + std::to_string(j) + ")";
            });
            int byte = 0, shift = 0;
            detail::mxfp4_position<Layout>(static_cast<int>(j % 32), byte, shift);
            r[(j / 32) * 17 + byte] = static_cast<std::uint8_t>(r[(j / 32) * 17 + byte] | (codes(i, j) << shift));
        }
    }
    return packed_mxfp4<Layout>(rows, cols, std::move(bytes));
}

LOWBIT_END_NAMESPACE
