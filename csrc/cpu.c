/* cpu.c: which SIMD level the kernels run at.
 * The default level is the best one the CPU and OS support; fd_set_level
 * can only lower it, so a forced level never executes an instruction the
 * machine lacks. */
#include "fastdecode.h"

#ifndef FD_BUILD_FLAGS
#define FD_BUILD_FLAGS "unknown"
#endif

atomic_int fd_level = -1;
atomic_int fd_vnni = 0;

static int cpu_vnni(void) {
#if FD_HAVE_X86_LEVELS && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

int fd_set_vnni(int on) {
    on = on && atomic_load(&fd_level) >= FD_LEVEL_AVX512 && cpu_vnni();
    atomic_store(&fd_vnni, on);
    return on;
}

int fd_get_level(void) { return atomic_load(&fd_level); }

int fd_cpu_max_level(void) {
#if FD_HAVE_X86_LEVELS && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    /* __builtin_cpu_supports also checks that the OS saves the wide registers;
     * both x86 levels are built with -mf16c (quant.c's float16 scales) */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return FD_LEVEL_AVX512;
    if (avx2)
        return FD_LEVEL_AVX2;
#endif
    return FD_LEVEL_PORTABLE;
}

int fd_set_level(int level) {
    int best = fd_cpu_max_level();
    if (level < FD_LEVEL_PORTABLE) level = FD_LEVEL_PORTABLE;
    level = level > best ? best : level;
    atomic_store(&fd_level, level);
    fd_set_vnni(1);
    return level;
}

const char *fd_build_flags(void) { return FD_BUILD_FLAGS; }
