#pragma once
/// \file detail/cpu_features.hpp
/// Run-time CPU feature detection, cached in a function-local static: x86 (cpuid + xgetbv) and
/// aarch64 Linux (getauxval: the dot-product extension, HWCAP_ASIMDDP).
///
/// lowbit's kernels carry per-function target attributes (LOWBIT_TARGET) so that a consumer who
/// compiles without `-march` flags still gets the AVX2 / AVX-512 paths on a CPU that has them.
/// A path is usable only if the CPU reports the instructions *and* the OS saves the registers
/// (XCR0: SSE+AVX state for AVX2; additionally opmask and ZMM state for AVX-512; additionally
/// TILECFG and TILEDATA state for AMX). On Linux the AMX tile data state is also off until the process
/// asks for it: the first query makes the one-time request arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA) (process-wide kernel permission, idempotent); if the kernel refuses (or the
/// OS is not Linux), AMX is reported unavailable and the AVX-512 path is used instead.

#include <lowbit/config.hpp>

#include <cstdint>

#if LOWBIT_X86_TARGETS && (defined(__x86_64__) || defined(__i386__))
#include <cpuid.h>
#define LOWBIT_HAVE_X86_KERNELS 1
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define LOWBIT_HAVE_X86_KERNELS 0
#endif

/// 1 when the NEON kernels (arch/neon.hpp) are compiled: aarch64 with GCC or Clang (ASIMD is part of
/// the AArch64 base ISA, so the baseline path needs no run-time check).
#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define LOWBIT_HAVE_NEON_KERNELS 1
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#else
#define LOWBIT_HAVE_NEON_KERNELS 0
#endif

LOWBIT_BEGIN_NAMESPACE
namespace detail {

/// The CPU features lowbit's kernels care about.
struct cpu_features {
    bool avx2 = false;            ///< AVX2 + FMA + POPCNT usable (OS saves YMM state)
    bool avx512 = false;          ///< AVX-512 F, DQ, BW, VL, VNNI, VPOPCNTDQ and VBMI usable (OS saves ZMM/opmask state)
    bool amx = false;             ///< avx512 and AMX-TILE + AMX-INT8 usable (XCR0 tile state, Linux permission granted)
    bool neon_dotprod = false;    ///< aarch64 SDOT/UDOT (FEAT_DotProd, Linux HWCAP_ASIMDDP)
    bool neon_i8mm = false;       ///< aarch64 SMMLA (FEAT_I8MM, Linux HWCAP2_I8MM), reported only with dotprod
};

/// Asks Linux for permission to use the AMX tile data state (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023,
/// XFEATURE_XTILEDATA = 18); true if granted. Other systems: false.
inline bool request_amx_permission() noexcept {
#if LOWBIT_HAVE_X86_KERNELS && defined(__linux__) && defined(__x86_64__) && defined(SYS_arch_prctl)
    constexpr long arch_req_xcomp_perm = 0x1023, xfeature_xtiledata = 18;
    return syscall(SYS_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata) == 0;
#else
    return false;
#endif
}

/// Queries the CPU once: x86 cpuid leaves 1 and 7 and xgetbv for XCR0 (and the AMX permission
/// request of the file comment when the CPU and XCR0 report AMX); aarch64 Linux
/// getauxval(AT_HWCAP / AT_HWCAP2) for the dot-product and int8 matrix-multiply extensions (other
/// aarch64 systems report none, so the baseline NEON path runs). Other builds report nothing.
inline cpu_features query_cpu_features() noexcept {
    cpu_features f;
#if LOWBIT_HAVE_X86_KERNELS
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u, fma = (c >> 12) & 1u, popcnt = (c >> 23) & 1u;
    if (!osxsave || !avx) return f;
    std::uint32_t xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    const bool ymm_state = (xcr0_lo & 0x6u) == 0x6u;            // SSE (bit 1) and AVX (bit 2)
    const bool zmm_state = (xcr0_lo & 0xE6u) == 0xE6u;          // + opmask, ZMM_Hi256, Hi16_ZMM
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
    __cpuid_count(7, 0, a7, b7, c7, d7);
    const bool avx2 = (b7 >> 5) & 1u;
    const bool f512 = (b7 >> 16) & 1u, dq = (b7 >> 17) & 1u, bw = (b7 >> 30) & 1u, vl = (b7 >> 31) & 1u;
    const bool vbmi = (c7 >> 1) & 1u, vnni = (c7 >> 11) & 1u, vpopcntdq = (c7 >> 14) & 1u;
    f.avx2 = ymm_state && avx2 && fma && popcnt;
    f.avx512 = f.avx2 && zmm_state && f512 && dq && bw && vl && vnni && vpopcntdq && vbmi;
    const bool amx_tile = (d7 >> 24) & 1u, amx_int8 = (d7 >> 25) & 1u;
    const bool tile_state = (xcr0_lo & 0x60000u) == 0x60000u;  // XTILECFG (bit 17), XTILEDATA (bit 18)
    f.amx = f.avx512 && amx_tile && amx_int8 && tile_state && request_amx_permission();
#endif
#if LOWBIT_HAVE_NEON_KERNELS && defined(__linux__)
    constexpr unsigned long hwcap_asimddp = 1ul << 20; // HWCAP_ASIMDDP of the Linux arm64 ABI
    constexpr unsigned long hwcap2_i8mm = 1ul << 13;   // HWCAP2_I8MM
    f.neon_dotprod = (getauxval(AT_HWCAP) & hwcap_asimddp) != 0;
    f.neon_i8mm = f.neon_dotprod && (getauxval(AT_HWCAP2) & hwcap2_i8mm) != 0;
#endif
    return f;
}

/// The features of this CPU, detected on first use and cached (thread-safe static initialisation).
inline const cpu_features& host_cpu_features() noexcept {
    static const cpu_features f = query_cpu_features();
    return f;
}

} // namespace detail
LOWBIT_END_NAMESPACE
