/* The instruction set fastlstm's own kernels run at.
 *
 * Levels: 0 generic (BLAS for every product, the cell math and dense ops compiled for the
 * baseline of the target), 1 AVX2+FMA, 2 AVX-512 (F, VL, BW, DQ). Every kernel that has
 * an ISA-specific version (the packed GEMM, the NT kernel, the GEMV and dot kernels, the
 * LSTM/RNN cell math, the dense ops and optimizer updates) dispatches on fl_isa(), so one
 * setting decides all of them. The setting is one int for the whole process, held by
 * fastlstm._runtime: each extension module is its own shared object with its own copy of
 * this header's statics, so each points fl_isa_slot at that int when it loads
 * (fl_isa_bind), and fastlstm/_isa.py changes every kernel by changing the int.
 *
 * ISA-specific code exists only for x86-64 with GCC or Clang; elsewhere (ARM, MSVC) the
 * build has the generic level only.
 */
#ifndef FASTLSTM_ISA_H
#define FASTLSTM_ISA_H

#define FL_ISA_GENERIC 0
#define FL_ISA_AVX2 1
#define FL_ISA_AVX512 2

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) \
    && !defined(FASTLSTM_NO_ISA_KERNELS)
#define FL_HAVE_ISA_KERNELS 1
#else
#define FL_HAVE_ISA_KERNELS 0
#endif

/* The best level this CPU runs and this build has kernels for. */
static int fl_isa_best(void) {
#if FL_HAVE_ISA_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512cd")
            && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2"))
        return FL_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2"))
        return FL_ISA_AVX2;
#endif
    return FL_ISA_GENERIC;
}

/* Until its module binds it, an extension reads the generic level: always safe. */
static const int fl_isa_unbound = FL_ISA_GENERIC;
static const int *fl_isa_slot = &fl_isa_unbound;

static inline int fl_isa(void) { return *fl_isa_slot; }

/* Read the level from `level` (fastlstm._runtime's) from now on. */
static void fl_isa_bind(const int *level) { fl_isa_slot = level; }

/* Multi-versioned functions: NAME##_body is an always-inline function with the code;
 * FL_ISA_VERSIONS compiles it once per level (the vectoriser then uses that level's
 * registers) and defines NAME as a dispatcher on fl_isa(). PARAMS is the parenthesised
 * parameter list, ARGS the parenthesised argument names. */
#if FL_HAVE_ISA_KERNELS && defined(__clang__)
/* (clang's target attribute takes feature lists; the same features as GCC's levels) */
#define FL_TARGET_AVX512 \
    "avx512f,avx512vl,avx512bw,avx512dq,avx512cd,avx2,fma,bmi,bmi2,f16c,lzcnt,popcnt"
#define FL_TARGET_AVX2 "avx2,fma,bmi,bmi2,f16c,lzcnt,popcnt"
#elif FL_HAVE_ISA_KERNELS
#define FL_TARGET_AVX512 "arch=x86-64-v4"
#define FL_TARGET_AVX2 "arch=x86-64-v3"
#endif

#if FL_HAVE_ISA_KERNELS
#define FL_ISA_VERSIONS(RET, NAME, PARAMS, ARGS)                                                \
    __attribute__((target(FL_TARGET_AVX512))) static RET NAME##_avx512 PARAMS {                 \
        return NAME##_body ARGS;                                                                \
    }                                                                                           \
    __attribute__((target(FL_TARGET_AVX2))) static RET NAME##_avx2 PARAMS {                     \
        return NAME##_body ARGS;                                                                \
    }                                                                                           \
    static RET NAME##_generic PARAMS { return NAME##_body ARGS; }                               \
    static RET NAME PARAMS {                                                                    \
        switch (fl_isa()) {                                                                     \
        case FL_ISA_AVX512: return NAME##_avx512 ARGS;                                          \
        case FL_ISA_AVX2: return NAME##_avx2 ARGS;                                              \
        default: return NAME##_generic ARGS;                                                    \
        }                                                                                       \
    }
#define FL_ISA_VERSIONS_VOID(NAME, PARAMS, ARGS)                                                \
    __attribute__((target(FL_TARGET_AVX512))) static void NAME##_avx512 PARAMS {                \
        NAME##_body ARGS;                                                                       \
    }                                                                                           \
    __attribute__((target(FL_TARGET_AVX2))) static void NAME##_avx2 PARAMS {                    \
        NAME##_body ARGS;                                                                       \
    }                                                                                           \
    static void NAME##_generic PARAMS { NAME##_body ARGS; }                                     \
    static void NAME PARAMS {                                                                   \
        switch (fl_isa()) {                                                                     \
        case FL_ISA_AVX512: NAME##_avx512 ARGS; break;                                          \
        case FL_ISA_AVX2: NAME##_avx2 ARGS; break;                                              \
        default: NAME##_generic ARGS; break;                                                    \
        }                                                                                       \
    }
#else
#define FL_ISA_VERSIONS(RET, NAME, PARAMS, ARGS)                                                \
    static RET NAME PARAMS { return NAME##_body ARGS; }
#define FL_ISA_VERSIONS_VOID(NAME, PARAMS, ARGS)                                                \
    static void NAME PARAMS { NAME##_body ARGS; }
#endif

#endif
