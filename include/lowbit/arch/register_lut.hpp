#pragma once
/// \file arch/register_lut.hpp
/// In-register float table lookup: y_l = table[idx_l] for tables of up to 16 entries (AVX-512F, one
/// `vpermps zmm`) or 8 entries (AVX2, one `vpermps ymm`). xsimd 8.1 has no runtime-index shuffle, and a
/// gather costs several times more on current x86 cores. Used by pwl.hpp for NLI tables with few cells.
/// Scalar reference: `table[idx]` (pwl_table's scalar path; tested through bench_nli's consistency counter
/// and, when the tests are built with -mavx2/-mavx512f, test_pwl).

#include <lowbit/config.hpp>
#include <lowbit/detail/dependent_false.hpp>

#include <xsimd/xsimd.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// Largest table (entries) `register_lut_f32<A>` handles on architecture `A`; 0 = none (use a gather).
template <class A>
inline constexpr std::size_t register_lut_capacity =
#if defined(__AVX512F__)
    std::is_base_of_v<xsimd::avx512f, A> ? 16 :
#endif
#if defined(__AVX2__)
    std::is_base_of_v<xsimd::avx2, A> ? 8 :
#endif
    0;

/// y_l = table[idx_l]. Preconditions: `table` holds at least register_lut_capacity<A> floats and every
/// idx_l is in [0, register_lut_capacity<A>). Refuses (static_assert) architectures with capacity 0.
template <class A>
inline xsimd::batch<float, A> register_lut_f32(const float* table, const xsimd::batch<std::int32_t, A>& idx) noexcept {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
        return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table));
    } else
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) {
        return _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx);
    } else
#endif
    {
        static_assert(dependent_false<A>, "lowbit: register_lut_f32: no in-register lookup for this architecture");
        return {};
    }
}

} // namespace detail
LOWBIT_END_NAMESPACE
