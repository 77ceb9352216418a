#pragma once
/// \file arch/amx.hpp
/// AMX-INT8 kernel (Intel Advanced Matrix Extensions: AMX-TILE + AMX-INT8) for packed weights ×
/// int8 activations of many tokens (prefill), compiled with per-function target attributes so that
/// it exists in a build without `-march` flags; gemm.hpp calls it only when
/// detail::host_cpu_features().amx is true (CPU, XCR0 and the Linux permission request).
///
/// Contract: the one of detail::scalar_kernels::dot_rows (arch/generic.hpp), bit-exact:
/// out[k·ldo + i − r0] = Σ_j t_ij·q_kj, exact int32, for rows [r0, r1) and tokens [0, ntok).
///
/// Tiles (palette 1, every tile 16 rows × 64 bytes): C[token][row] += A·B by `tdpbssd` (signed
/// int8 × signed int8, four products per int32, no saturation), with
///   A = 16 tokens × 64 activation codes, copied once per call into tile-contiguous 1 KiB tiles
///       (a last group of fewer than 16 tokens zero-padded);
///   B = 64 codes × 16 weight rows in the VNNI layout: byte 4n + r of B row kk is t_{row n, 4kk + r}.
/// The row range is cut in panels of 32 rows (2 B tiles; rows past r1 are zero and dropped); each
/// panel is unpacked once per call into B tiles for all K (32·padded_cols bytes, L2-resident) and
/// reused by every token block of 32 (2 A tiles): 2 A + 2 B loads feed 4 `tdpbssd` into 4 C tiles
/// (tiles 0–3 C, 4–5 A, 6–7 B). Unpacking: for ternary2, int2, int4 and ternary_base3 every byte
/// of a 64-byte block line holds the digits of one column position in each 64-column plane, so the
/// 16 rows' packed lines are transposed as 16×16 dwords first (one transpose per 64 packed bytes,
/// not per 64 weights) and then decoded with avx512_kernels::decode_block straight into B rows;
/// binary1 (8 columns per byte) is decoded per row and the int8 codes are transposed.
/// The tile configuration is loaded per call (`ldtilecfg`) and released at the end (`tilerelease`).
/// Complexity O(ntok·rows·padded_cols / 1024) tile products + O(rows·padded_cols) unpacking per call.

#include <lowbit/arch/avx512.hpp>
#include <lowbit/config.hpp>
#include <lowbit/detail/cpu_features.hpp>
#include <lowbit/pack.hpp>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if LOWBIT_HAVE_X86_KERNELS && defined(__x86_64__)
#define LOWBIT_HAVE_AMX_KERNELS 1
#include <immintrin.h>

/// Target string of the AMX kernel (AMX itself is emitted through inline asm with memory clobbers;
/// the AVX-512 part unpacks the weights).
#define LOWBIT_AMX_TARGET \
    LOWBIT_TARGET("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vpopcntdq,avx2,fma,popcnt,bmi2")

// Tile instructions with explicit "memory" clobbers (GCC 12's _tile_loadd/_tile_stored asm declare
// no memory access, so the compiler could move the buffers' stores and loads across them). The
// tile numbers are immediates; both assembler dialects are spelled out.
#define LOWBIT_AMX_LOAD(t, base, stride)                                                         \
    __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #t "|tileloadd\t%%tmm" #t ", [%0+%1*1]}" ::"r"( \
                         static_cast<const void*>(base)),                                          \
                     "r"(static_cast<long>(stride))                                                \
                     : "memory")
#define LOWBIT_AMX_STORE(t, base, stride)                                                         \
    __asm__ volatile("{tilestored\t%%tmm" #t ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #t "}" ::"r"( \
                         static_cast<void*>(base)),                                                 \
                     "r"(static_cast<long>(stride))                                                 \
                     : "memory")
#define LOWBIT_AMX_ZERO(t) __asm__ volatile("tilezero\t%%tmm" #t ::)
#define LOWBIT_AMX_DPBSSD(c, a, b) \
    __asm__ volatile("{tdpbssd\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbssd\t%%tmm" #c ", %%tmm" #a ", %%tmm" #b "}" ::)

LOWBIT_BEGIN_NAMESPACE
namespace detail::amx_kernels {

/// Tokens per A tile and weight rows per B tile (16 int32 columns of a C tile).
inline constexpr int tile_m = 16;
/// Activation codes per A tile row (= 16 B tile rows of 4).
inline constexpr int tile_k = 64;
/// Bytes of one 16 × 64 tile.
inline constexpr int tile_bytes = tile_m * tile_k;

/// The 64-byte `ldtilecfg` operand (palette 1).
struct alignas(64) tile_config {
    std::uint8_t palette = 1;        ///< palette id
    std::uint8_t start_row = 0;      ///< restart row (0)
    std::uint8_t reserved[14] = {};  ///< zero
    std::uint16_t colsb[16] = {};    ///< bytes per row of tile 0..15
    std::uint8_t rows[16] = {};      ///< rows of tile 0..15
};

/// Configures tiles 0..7 as 16 rows × 64 bytes.
inline void load_tile_config() noexcept {
    tile_config c;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = tile_k;
        c.rows[t] = tile_m;
    }
    __asm__ volatile("ldtilecfg\t%0" ::"m"(c) : "memory");
}

/// Releases the tile state (`tilerelease`).
inline void release_tiles() noexcept { __asm__ volatile("tilerelease" ::: "memory"); }

/// In-place transpose of a 16 × 16 matrix of dwords held as 16 zmm rows: r[k] becomes
/// (r0[k], r1[k], …, r15[k]). 64 shuffles (32-bit and 64-bit unpacks, two 128-bit lane shuffles;
/// the zero-masked forms with full masks avoid GCC 12's maybe-uninitialized warnings of the plain ones).
LOWBIT_AMX_TARGET inline void transpose16_epi32(__m512i* r) {
    const __mmask16 all16 = 0xFFFF;
    const __mmask8 all8 = 0xFF;
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_maskz_unpacklo_epi32(all16, r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_maskz_unpackhi_epi32(all16, r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c], 128-bit lane L: rows 4i..4i+3 at column 4L + c
    for (int i = 0; i < 4; ++i) {
        u[4 * i] = _mm512_maskz_unpacklo_epi64(all8, t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_maskz_unpackhi_epi64(all8, t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_maskz_unpacklo_epi64(all8, t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_maskz_unpackhi_epi64(all8, t[4 * i + 1], t[4 * i + 3]);
    }
    // column 4L + c = lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
    for (int c = 0; c < 4; ++c) {
        const __m512i x0 = _mm512_maskz_shuffle_i32x4(all16, u[c], u[4 + c], 0x44), x1 = _mm512_maskz_shuffle_i32x4(all16, u[c], u[4 + c], 0xEE);
        const __m512i y0 = _mm512_maskz_shuffle_i32x4(all16, u[8 + c], u[12 + c], 0x44), y1 = _mm512_maskz_shuffle_i32x4(all16, u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_maskz_shuffle_i32x4(all16, x0, y0, 0x88);
        r[4 + c] = _mm512_maskz_shuffle_i32x4(all16, x0, y0, 0xDD);
        r[8 + c] = _mm512_maskz_shuffle_i32x4(all16, x1, y1, 0x88);
        r[12 + c] = _mm512_maskz_shuffle_i32x4(all16, x1, y1, 0xDD);
    }
}

/// Unpacks blocks [b0, b1) of rows [i0, i1) (at most 16; missing rows are zero) of `w` into B
/// tiles: the tile of 64-column chunk c (counted from block b0) starts at dst + c·chunk_stride, row kk
/// at + 64·kk (VNNI layout of the file comment). O(16·(b1 − b0)·block_weights).
template <PackedWeights M>
LOWBIT_AMX_TARGET inline void unpack_b_tiles(const M& w, Eigen::Index i0, Eigen::Index i1, Eigen::Index b0, Eigen::Index b1,
                                             std::int8_t* dst, Eigen::Index chunk_stride) {
    using F = typename M::format;
    using T = pack_format<F>;
    constexpr int bb = T::block_bytes, chunks = T::block_weights / tile_k;
    alignas(64) static constexpr std::uint8_t zero_block[128] = {};
    const std::uint8_t* src[16];
    Eigen::Index step[16];
    for (int n = 0; n < 16; ++n) {
        const bool real = i0 + n < i1;
        src[n] = real ? w.block_data(i0 + n, b0) : zero_block;
        step[n] = real ? M::block_stride() : 0;
    }
    const __m512i off = _mm512_set1_epi8(static_cast<char>(T::digit_offset));
    for (Eigen::Index b = b0; b < b1; ++b) {
        std::int8_t* d = dst + (b - b0) * chunks * chunk_stride;
        if constexpr (!std::is_same_v<F, binary1>) {
            // transpose the packed lines (dword n of line kk = dword kk of row n), then decode each
            // line kk: digit plane f gives B row kk of chunk f directly
            alignas(64) std::uint8_t tb[tile_m * bb];
            for (int l = 0; l < bb; l += 64) {
                __m512i v[16];
                for (int n = 0; n < 16; ++n) v[n] = _mm512_loadu_si512(src[n] + l);
                transpose16_epi32(v);
                for (int kk = 0; kk < 16; ++kk) _mm512_store_si512(tb + kk * bb + l, v[kk]);
            }
            for (int kk = 0; kk < 16; ++kk) {
                __m512i p[5];
                p[4] = _mm512_setzero_si512();
                avx512_kernels::decode_block<F>(tb + kk * bb, p[0], p[1], p[2], p[3], p[4]);
                for (int f = 0; f < chunks; ++f) // digit_mul = 1 for these formats
                    _mm512_store_si512(d + f * chunk_stride + kk * tile_k, _mm512_sub_epi8(p[f], off));
            }
        } else {
            // binary1: decode each row's codes t = 2u − 1, then transpose each 64-column chunk
            alignas(64) std::int8_t rows[16][T::block_weights];
            for (int n = 0; n < 16; ++n) {
                __m512i p[5];
                avx512_kernels::decode_block<F>(src[n], p[0], p[1], p[2], p[3], p[4]);
                for (int f = 0; f < chunks; ++f)
                    _mm512_store_si512(rows[n] + f * tile_k, _mm512_sub_epi8(_mm512_add_epi8(p[f], p[f]), off));
            }
            for (int f = 0; f < chunks; ++f) {
                __m512i v[16];
                for (int n = 0; n < 16; ++n) v[n] = _mm512_load_si512(rows[n] + f * tile_k);
                transpose16_epi32(v);
                for (int kk = 0; kk < 16; ++kk) _mm512_store_si512(d + f * chunk_stride + kk * tile_k, v[kk]);
            }
        }
        for (int n = 0; n < 16; ++n) src[n] += step[n];
    }
}

/// C tiles of one token block × row panel over nk chunks of 64 columns: A tiles at a0 / a1 + kc·1024
/// (16 rows of 64 bytes, tile-contiguous), B tiles at b + kc·2·tile_bytes (+ tile_bytes for the
/// second 16 rows); C `[32 tokens][32 rows]` int32 at c, zeroed first if `first`, else loaded and
/// accumulated into. `two_a` / `two_b`: second token group / row group present (otherwise its
/// tiles are neither loaded nor multiplied).
template <bool two_a, bool two_b>
LOWBIT_AMX_TARGET inline void tile_block(const std::int8_t* a0, const std::int8_t* a1, const std::int8_t* b, Eigen::Index nk,
                                         std::int32_t* c, bool first) {
    constexpr long ldc = 32 * sizeof(std::int32_t);
    if (first) {
        LOWBIT_AMX_ZERO(0);
        if constexpr (two_b) LOWBIT_AMX_ZERO(1);
        if constexpr (two_a) LOWBIT_AMX_ZERO(2);
        if constexpr (two_a && two_b) LOWBIT_AMX_ZERO(3);
    } else {
        LOWBIT_AMX_LOAD(0, c, ldc);
        if constexpr (two_b) LOWBIT_AMX_LOAD(1, c + 16, ldc);
        if constexpr (two_a) LOWBIT_AMX_LOAD(2, c + 16 * 32, ldc);
        if constexpr (two_a && two_b) LOWBIT_AMX_LOAD(3, c + 16 * 32 + 16, ldc);
    }
    for (Eigen::Index kc = 0; kc < nk; ++kc, a0 += tile_bytes, a1 += tile_bytes, b += 2 * tile_bytes) {
        LOWBIT_AMX_LOAD(4, a0, tile_k);
        LOWBIT_AMX_LOAD(6, b, tile_k);
        if constexpr (two_b) LOWBIT_AMX_LOAD(7, b + tile_bytes, tile_k);
        if constexpr (two_a) LOWBIT_AMX_LOAD(5, a1, tile_k);
        LOWBIT_AMX_DPBSSD(0, 4, 6);
        if constexpr (two_b) LOWBIT_AMX_DPBSSD(1, 4, 7);
        if constexpr (two_a) LOWBIT_AMX_DPBSSD(2, 5, 6);
        if constexpr (two_a && two_b) LOWBIT_AMX_DPBSSD(3, 5, 7);
    }
    LOWBIT_AMX_STORE(0, c, ldc);
    if constexpr (two_b) LOWBIT_AMX_STORE(1, c + 16, ldc);
    if constexpr (two_a) LOWBIT_AMX_STORE(2, c + 16 * 32, ldc);
    if constexpr (two_a && two_b) LOWBIT_AMX_STORE(3, c + 16 * 32 + 16, ldc);
}

/// Weight blocks unpacked at a time (per 32-row panel): 2 blocks = 512 (base 3: 640) columns,
/// 32–40 KiB of B tiles, which stay in L1 while every token block multiplies them.
inline constexpr Eigen::Index blocks_per_step = 2;

/// AMX `dot_rows` (contract of arch/generic.hpp; `qsum` unused: codes are signed). Any ntok ≥ 0;
/// activations padded to ≥ w.padded_cols() columns (ldx ≥ that). First the activations are copied
/// once into A tiles ([token group][64-column chunk][16 tokens][64], the last group zero-padded),
/// then per 32-row panel and step of blocks_per_step blocks: unpack the B tiles, and for each token
/// block of 32 accumulate its C tiles (kept between steps in a [token blocks][32][32] int32 buffer).
/// Allocates 16·⌈ntok/16⌉·padded_cols bytes of A tiles, 32–40 KiB of B tiles and 4 KiB of C per
/// token block.
template <PackedWeights M>
LOWBIT_AMX_TARGET inline void dot_rows(const M& w, Eigen::Index r0, Eigen::Index r1, const std::int8_t* x, Eigen::Index ldx,
                                       const std::int32_t* qsum, Eigen::Index ntok, std::int32_t* out, Eigen::Index ldo) {
    using T = pack_format<typename M::format>;
    (void)qsum;
    if (r0 >= r1 || ntok <= 0) return;
    const Eigen::Index K = w.padded_cols(), nb = w.blocks_per_row(), nkt = K / tile_k;
    constexpr Eigen::Index chunks_per_block = T::block_weights / tile_k;
    const Eigen::Index groups = (ntok + tile_m - 1) / tile_m, tblocks = (groups + 1) / 2;
    // buffers first (allocation may throw; no tile state is live yet), 64-byte aligned
    const Eigen::Index b_bytes = 2 * tile_bytes * chunks_per_block * blocks_per_step, a_bytes = groups * tile_m * K;
    std::vector<std::int8_t> buf(static_cast<std::size_t>(b_bytes + a_bytes + tblocks * 32 * 32 * 4 + 64));
    std::int8_t* bpanel = buf.data() + (64 - reinterpret_cast<std::uintptr_t>(buf.data()) % 64) % 64; // [chunk][2][16][64]
    std::int8_t* apack = bpanel + b_bytes;                                    // [group][chunk][16][64]
    std::int32_t* cbuf = reinterpret_cast<std::int32_t*>(apack + a_bytes);    // [token block][32][32]
    for (Eigen::Index k = 0; k < groups * tile_m; ++k) {
        std::int8_t* dst = apack + (k / tile_m) * nkt * tile_bytes + (k % tile_m) * tile_k;
        const std::int8_t* src = x + k * ldx;
        for (Eigen::Index kc = 0; kc < nkt; ++kc, dst += tile_bytes)
            _mm512_store_si512(dst, k < ntok ? _mm512_loadu_si512(src + kc * tile_k) : _mm512_setzero_si512());
    }
    load_tile_config();
    for (Eigen::Index i0 = r0; i0 < r1; i0 += 2 * tile_m) {
        const Eigen::Index ia = i0 + tile_m < r1 ? i0 + tile_m : r1, ib = i0 + 2 * tile_m < r1 ? i0 + 2 * tile_m : r1;
        const bool two_b = ib > ia;
        for (Eigen::Index b0 = 0; b0 < nb; b0 += blocks_per_step) {
            const Eigen::Index b1 = b0 + blocks_per_step < nb ? b0 + blocks_per_step : nb;
            const Eigen::Index nk = (b1 - b0) * chunks_per_block, kc0 = b0 * chunks_per_block;
            unpack_b_tiles(w, i0, ia, b0, b1, bpanel, 2 * tile_bytes);
            if (two_b) unpack_b_tiles(w, ia, ib, b0, b1, bpanel + tile_bytes, 2 * tile_bytes);
            for (Eigen::Index g = 0; g < groups; g += 2) {
                const bool two_a = g + 1 < groups, first = b0 == 0;
                const std::int8_t* a0 = apack + (g * nkt + kc0) * tile_bytes;
                const std::int8_t* a1 = two_a ? a0 + nkt * tile_bytes : a0;
                std::int32_t* c = cbuf + (g / 2) * 32 * 32;
                if (two_a && two_b) tile_block<true, true>(a0, a1, bpanel, nk, c, first);
                else if (two_a) tile_block<true, false>(a0, a1, bpanel, nk, c, first);
                else if (two_b) tile_block<false, true>(a0, a1, bpanel, nk, c, first);
                else tile_block<false, false>(a0, a1, bpanel, nk, c, first);
            }
        }
        for (Eigen::Index k = 0; k < ntok; ++k)
            std::memcpy(out + k * ldo + (i0 - r0), cbuf + (k / 32) * 32 * 32 + (k % 32) * 32,
                        sizeof(std::int32_t) * static_cast<std::size_t>(ib - i0));
    }
    release_tiles();
}

} // namespace detail::amx_kernels
LOWBIT_END_NAMESPACE

#undef LOWBIT_AMX_LOAD
#undef LOWBIT_AMX_STORE
#undef LOWBIT_AMX_ZERO
#undef LOWBIT_AMX_DPBSSD

#else
#define LOWBIT_HAVE_AMX_KERNELS 0
#endif
