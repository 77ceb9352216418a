#pragma once
/// \file detail/xsimd_compat.hpp
/// Hides the API drift of xsimd between 8.1 (Debian), 9+ and 14+ (vcpkg):
/// - horizontal sum: `hadd` (8.x) was renamed `reduce_add` (9.0);
/// - the portable fallback arch tag: `generic` (< 14) was renamed `common` (14.0).
/// lowbit code calls `detail::reduce_add` and names `detail::xsimd_common_arch` only.

#include <lowbit/config.hpp>

#include <xsimd/xsimd.hpp>

#if !defined(XSIMD_VERSION_MAJOR)
#error "lowbit: xsimd version macros not found"
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// Horizontal sum of all lanes of `b` (xsimd `hadd` before 9.0, `reduce_add` since).
template <class T, class A>
inline T reduce_add(const xsimd::batch<T, A>& b) noexcept {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_add(b);
#else
    return xsimd::hadd(b);
#endif
}

#if XSIMD_VERSION_MAJOR >= 14
/// xsimd's portable fallback architecture tag (`common` since 14.0).
using xsimd_common_arch = xsimd::common;
#else
/// xsimd's portable fallback architecture tag (`generic` before 14.0).
using xsimd_common_arch = xsimd::generic;
#endif

/// Number of lanes of a float batch on the compile-time default architecture.
inline constexpr std::size_t float_lanes = xsimd::batch<float>::size;

} // namespace detail
LOWBIT_END_NAMESPACE
