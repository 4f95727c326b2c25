// Device functions that host mode lacks: min/max, atomics, integer and fast-math intrinsics.
// Included by simt.h. Integer intrinsics are exact; the fast-math ones (__expf, __fdividef, ...)
// call the correctly rounded libm functions, which a GPU's approximations differ from by a few
// ulp (docs/emulator.md).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- min / max: CUDA's overloads for every pair of arithmetic types --------------------------

template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(b) < C(a) ? C(b) : C(a);
}
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
  else return C(a) < C(b) ? C(b) : C(a);
}

// ---- atomics: relaxed read-modify-writes (blocks run on several OS threads) ---------------------

namespace simt {
template <typename T, typename F>
T atomic_update(T* address, F f) {  // compare-and-swap loop over T's bits
  using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>;
  static_assert(sizeof(T) == sizeof(Bits));
  Bits* p = reinterpret_cast<Bits*>(address);
  Bits old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T value;
    std::memcpy(static_cast<void*>(&value), &old, sizeof(T));
    const T next = f(value);
    Bits next_bits;
    std::memcpy(&next_bits, static_cast<const void*>(&next), sizeof(T));
    if (__atomic_compare_exchange_n(p, &old, next_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return value;
  }
}
}  // namespace simt

#define SIMT_ATOMIC_INT(T)                                                                                      \
  inline T atomicAdd(T* a, T v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }                         \
  inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }                         \
  inline T atomicExch(T* a, T v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }                       \
  inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }                         \
  inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                           \
  inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }                         \
  inline T atomicMin(T* a, T v) { return simt::atomic_update(a, [v](T x) { return v < x ? v : x; }); }         \
  inline T atomicMax(T* a, T v) { return simt::atomic_update(a, [v](T x) { return v > x ? v : x; }); }         \
  inline T atomicCAS(T* a, T expected, T v) {                                                                  \
    __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                   \
    return expected;                                                                                           \
  }
SIMT_ATOMIC_INT(int)
SIMT_ATOMIC_INT(unsigned int)
SIMT_ATOMIC_INT(unsigned long long int)
SIMT_ATOMIC_INT(long long int)
#undef SIMT_ATOMIC_INT
inline unsigned short atomicCAS(unsigned short* a, unsigned short expected, unsigned short v) {
  __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
inline unsigned atomicInc(unsigned* a, unsigned limit) {
  return simt::atomic_update(a, [limit](unsigned x) { return x >= limit ? 0u : x + 1; });
}
inline unsigned atomicDec(unsigned* a, unsigned limit) {
  return simt::atomic_update(a, [limit](unsigned x) { return (x == 0 || x > limit) ? limit : x - 1; });
}
#define SIMT_ATOMIC_FLOAT(T)                                                                         \
  inline T atomicAdd(T* a, T v) { return simt::atomic_update(a, [v](T x) { return T(x + v); }); }   \
  inline T atomicExch(T* a, T v) { return simt::atomic_update(a, [v](T) { return v; }); }
SIMT_ATOMIC_FLOAT(float)
SIMT_ATOMIC_FLOAT(double)
SIMT_ATOMIC_FLOAT(__half)
SIMT_ATOMIC_FLOAT(__nv_bfloat16)
#undef SIMT_ATOMIC_FLOAT
inline float atomicMin(float* a, float v) { return simt::atomic_update(a, [v](float x) { return std::fmin(x, v); }); }
inline float atomicMax(float* a, float v) { return simt::atomic_update(a, [v](float x) { return std::fmax(x, v); }); }
inline __half2 atomicAdd(__half2* a, __half2 v) { return simt::atomic_update(a, [v](__half2 x) { return __hadd2(x, v); }); }
inline __nv_bfloat162 atomicAdd(__nv_bfloat162* a, __nv_bfloat162 v) {
  return simt::atomic_update(a, [v](__nv_bfloat162 x) { return __hadd2(x, v); });
}

// ---- bit reinterpretation and integer intrinsics (exact) ---------------------------------------

inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline float __uint_as_float(unsigned x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float f) { int x; std::memcpy(&x, &f, 4); return x; }
inline unsigned __float_as_uint(float f) { unsigned x; std::memcpy(&x, &f, 4); return x; }
inline double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double d) { long long x; std::memcpy(&x, &d, 8); return x; }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
// PRMT's default mode: byte i of the result is byte s[i] of the 8-byte value {y, x}.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t bytes = (uint64_t(y) << 32) | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((bytes >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  const uint64_t v = (uint64_t(hi) << 32) | lo;
  return unsigned((v << (shift & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  const uint64_t v = (uint64_t(hi) << 32) | lo;
  return unsigned(v >> (shift & 31));
}
inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned shift) {  // shift clamped to 32
  const uint64_t v = (uint64_t(hi) << 32) | lo;
  return unsigned((v << (shift > 32 ? 32 : shift)) >> 32);
}
inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned shift) {
  const uint64_t v = (uint64_t(hi) << 32) | lo;
  return unsigned(v >> (shift > 32 ? 32 : shift));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return int((int64_t(a) * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mul24(int a, int b) { return int((int32_t(a << 8) >> 8) * (int32_t(b << 8) >> 8)); }
inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }
inline unsigned __sad(int a, int b, unsigned c) { return c + unsigned(a > b ? a - b : b - a); }
inline unsigned __usad(unsigned a, unsigned b, unsigned c) { return c + (a > b ? a - b : b - a); }

// ---- float intrinsics: exact ones exactly, fast-math ones through libm ------------------------

inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : x > 0.0f ? x : 0.0f; }  // NaN -> 0
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline void __sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }

// ---- clock64: a per-OS-thread counter, enough for code that measures intervals ---------------

inline long long clock64() {
  static thread_local long long ticks = 0;
  return ticks += 1000;
}
