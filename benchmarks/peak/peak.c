/* The processor's own limits, measured: the clock (a chain of dependent one-cycle instructions)
   and how many fp32 FMA, bf16 dot-product (AVX512-BF16) and int8 dot-product (AVX512-VNNI)
   instructions one core retires a cycle, and where the AMX tiles are usable the tile dot products
   (TDPBF16PS, TDPBUSD). roofline.py compiles it with the flags the CPU lists and runs one copy on
   each core at once, so the clock is the all-core clock under vector load.
   Usage: peak clock|fp32|fp32_avx2|bf16|int8|amx_bf16|amx_int8 SECONDS, or peak amx
   -> prints "<unit per second> <instructions per second>" */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cpuid.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define REPEAT(x) x x x x x x x x x x x x x x x x

static double run_clock(double seconds, double *ops) {
    unsigned long n = 0, x = 0, one = 1;
    double start = now();
    while (now() - start < seconds) {
        for (int i = 0; i < 100000; i++) {
            __asm__ volatile(REPEAT("xor %1, %0\n\tnot %0\n\t") : "+r"(x) : "r"(one));
        }
        n += 100000UL * 32;
    }
    *ops = n / (now() - start);
    if (x == 42) printf(" ");
    return *ops;   /* a chain of dependent one-cycle instructions: their rate is the clock */
}

/* Each kernel: independent accumulators (16 zmm, or 12 ymm), the same instruction on each, repeated;
   written in assembly so that the compiler can neither spill nor drop them. ZERO clears the two
   inputs, COUNT is how many instructions one pass runs, and the rest names the accumulators. */
#define KERNEL(name, ZERO, text, COUNT, ...)                                     \
static double run_##name(double seconds, double *ops) {                          \
    unsigned long n = 0; double start = now();                                   \
    __asm__ volatile(ZERO ::: "xmm2", "xmm3");                                   \
    while (now() - start < seconds) {                                            \
        for (int r = 0; r < 20000; r++) {                                        \
            __asm__ volatile(text ::: __VA_ARGS__);                              \
        }                                                                        \
        n += 20000UL * COUNT;                                                    \
    }                                                                            \
    *ops = n / (now() - start); return *ops;                                     \
}
#define ZMM_ZERO "vpxord %%zmm2, %%zmm2, %%zmm2\n\tvpxord %%zmm3, %%zmm3, %%zmm3"
#define YMM_ZERO "vpxor %%ymm2, %%ymm2, %%ymm2\n\tvpxor %%ymm3, %%ymm3, %%ymm3"
#define YMM_ACCUMULATORS "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define ZMM_ACCUMULATORS YMM_ACCUMULATORS, "xmm16", "xmm17", "xmm18", "xmm19"

#ifdef __AVX512F__   /* the AVX-512 kernels: built where the CPU lists avx512f (roofline.py passes -mavx512f) */

KERNEL(fp32, ZMM_ZERO,
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm4\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm5\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm6\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm7\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm8\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm9\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm10\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm11\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm12\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm13\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm14\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm15\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm16\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm17\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm18\n\t"
            "vfmadd231ps %%zmm2, %%zmm3, %%zmm19\n\t", 16, ZMM_ACCUMULATORS)
KERNEL(bf16, ZMM_ZERO,
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm4\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm5\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm6\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm7\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm8\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm9\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm10\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm11\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm12\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm13\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm14\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm15\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm16\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm17\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm18\n\t"
            "vdpbf16ps %%zmm2, %%zmm3, %%zmm19\n\t", 16, ZMM_ACCUMULATORS)
KERNEL(int8, ZMM_ZERO,
            "vpdpbusd %%zmm2, %%zmm3, %%zmm4\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm5\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm6\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm7\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm8\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm9\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm10\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm11\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm12\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm13\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm14\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm15\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm16\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm17\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm18\n\t"
            "vpdpbusd %%zmm2, %%zmm3, %%zmm19\n\t", 16, ZMM_ACCUMULATORS)
#endif

KERNEL(fp32_avx2, YMM_ZERO,
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm4\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm5\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm6\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm7\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm8\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm9\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm10\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm11\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm12\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm13\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm14\n\t"
            "vfmadd231ps %%ymm2, %%ymm3, %%ymm15\n\t", 12, YMM_ACCUMULATORS)

#ifdef __AMX_TILE__   /* built where the CPU lists amx_tile (roofline.py passes -mamx-tile -mamx-bf16 -mamx-int8) */

/* The tile configuration LDTILECFG reads: palette 1, then each tile's bytes a row and rows. */
struct tile_config {
    unsigned char palette, start_row, reserved[14];
    unsigned short bytes_per_row[16];
    unsigned char rows[16];
};

/* Asks the kernel for the tile data state and configures eight 16x64-byte tiles, zeroed: tmm0-3
   accumulate, tmm4-5 and tmm6-7 are the two operands. 0 where the kernel refuses. */
static int amx_start(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) return 0;
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) { config.bytes_per_row[t] = 64; config.rows[t] = 16; }
    /* The whole struct as the operand: gcc's _tile_loadconfig names only its first 8 bytes, and the stores
       to the rest were dropped as dead (LDTILECFG then faulted on a palette with no tiles). */
    __asm__ volatile("ldtilecfg %0" :: "m"(config));
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
    return 1;
}

/* Four independent accumulators, each fed by a different pair of operand tiles, 16 instructions a pass. */
#define AMX_PASS(op) op(0, 4, 6); op(1, 4, 7); op(2, 5, 6); op(3, 5, 7);
#define AMX_KERNEL(name, op)                                                     \
static double run_##name(double seconds, double *ops) {                          \
    unsigned long n = 0;                                                         \
    if (!amx_start()) { *ops = 0; return 0; }                                     \
    double start = now();                                                        \
    while (now() - start < seconds) {                                            \
        for (int r = 0; r < 2000; r++) {                                         \
            AMX_PASS(op) AMX_PASS(op) AMX_PASS(op) AMX_PASS(op)                  \
        }                                                                        \
        n += 2000UL * 16;                                                        \
    }                                                                            \
    *ops = n / (now() - start);                                                  \
    _tile_release();                                                             \
    return *ops;                                                                 \
}
AMX_KERNEL(amx_bf16, _tile_dpbf16ps)
AMX_KERNEL(amx_int8, _tile_dpbusd)
#endif

/* What stands between this process and the AMX tiles: the CPUID bits (what the hypervisor shows), the
   tile state in XCR0 (what the kernel enabled) and the kernel's permission for this process. */
static void amx_report(void) {
    unsigned a, b, c, d, lo, hi;
    __cpuid_count(7, 0, a, b, c, d);
    printf("cpuid_amx_tile %u\ncpuid_amx_bf16 %u\ncpuid_amx_int8 %u\n", (d >> 24) & 1, (d >> 22) & 1, (d >> 25) & 1);
    __cpuid_count(1, 0, a, b, c, d);
    printf("under_hypervisor %u\n", (c >> 31) & 1);
    if ((c >> 31) & 1) {
        char vendor[13] = {0};
        __cpuid(0x40000000, a, b, c, d);
        memcpy(vendor, &b, 4); memcpy(vendor + 4, &c, 4); memcpy(vendor + 8, &d, 4);
        printf("hypervisor %s\n", vendor);
    }
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    printf("xcr0 0x%x\nxcr0_tile_state %u\n", lo, ((lo >> 17) & 3) == 3);
    long granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    printf("arch_prctl_xtiledata %s\n", granted == 0 ? "granted" : strerror(errno));
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "amx")) { amx_report(); return 0; }
    if (argc != 3) { fprintf(stderr, "usage: peak clock|fp32|fp32_avx2|bf16|int8|amx_bf16|amx_int8 SECONDS, or peak amx\n"); return 2; }
    double seconds = atof(argv[2]), instructions = 0;
    /* Work per instruction: an FMA on 16 fp32 lanes is 32 flop (on 8, with AVX2, 16); a bf16 dot product does 2 multiply-adds
       in each of 16 lanes (64 flop); an int8 dot product 4 in each of 16 lanes (128 op). A tile dot product fills a
       16x16 fp32 or int32 tile from 16x64-byte operands: 16*16*32 bf16 multiply-adds (16,384 flop) or 16*16*64 int8
       ones (32,768 op). */
    if (!strcmp(argv[1], "clock")) { run_clock(seconds, &instructions); printf("%.6g %.6g\n", instructions, instructions); }
    else if (!strcmp(argv[1], "fp32_avx2")) { run_fp32_avx2(seconds, &instructions); printf("%.6g %.6g\n", instructions * 16, instructions); }
#ifdef __AVX512F__
    else if (!strcmp(argv[1], "fp32")) { run_fp32(seconds, &instructions); printf("%.6g %.6g\n", instructions * 32, instructions); }
    else if (!strcmp(argv[1], "bf16")) { run_bf16(seconds, &instructions); printf("%.6g %.6g\n", instructions * 64, instructions); }
    else if (!strcmp(argv[1], "int8")) { run_int8(seconds, &instructions); printf("%.6g %.6g\n", instructions * 128, instructions); }
#endif
#ifdef __AMX_TILE__
    else if (!strcmp(argv[1], "amx_bf16")) { run_amx_bf16(seconds, &instructions); printf("%.6g %.6g\n", instructions * 16384, instructions); }
    else if (!strcmp(argv[1], "amx_int8")) { run_amx_int8(seconds, &instructions); printf("%.6g %.6g\n", instructions * 32768, instructions); }
#endif
    else { fprintf(stderr, "unknown kernel %s\n", argv[1]); return 2; }
    return 0;
}
