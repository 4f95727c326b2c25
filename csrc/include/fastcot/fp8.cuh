// float8 e4m3 (float8_e4m3fn) widening to float16 pairs for the tensor cores.
//
// sm_89 and later (sm_90 included) convert with their cvt.rn.f16x2.e4m3x2 instruction
// (cvt_e4m3x4_to_half2x2 in common.cuh): two values per instruction, exact. sm_80, which has
// no fp8 instructions, and the host (tests, the CPU emulator) use bit operations: an e4m3 byte
// s.eeee.mmm with its sign at bit 15 and eeee.mmm at bits 13..7 of a 16-bit word is the float16
// whose value is the e4m3 value times 2^-8 (exponent bias 7 against 15), normals and subnormals
// alike, exactly, -0 included. kE4m3HalfExponent says which (0 or -8); the kernel folds it into
// its scales. The NaN codes (s.1111.111) stay NaN on sm_89+; the bit operations read them as
// +-480 (a float8 write never stores one unless its input was NaN).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_fp16.h>

#include "fastcot/common.cuh"

namespace fastcot {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
constexpr int kE4m3HalfExponent = 0;
constexpr bool kE4m3EvenOddPairs = false;
#else
constexpr int kE4m3HalfExponent = -8;
constexpr bool kE4m3EvenOddPairs = true;
#endif

// Four e4m3 bytes (memory order b0..b3 in `w`) to float16 pairs times 2^kE4m3HalfExponent, low
// half first: `lo` holds (b0, b1) and `hi` (b2, b3) on sm_89+; with bit operations (seven per
// word) `lo` holds (b0, b2) and `hi` (b1, b3) (kE4m3EvenOddPairs).
__host__ __device__ __forceinline__ void e4m3x4_to_half2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  cvt_e4m3x4_to_half2x2(w, lo, hi);
#else
  lo = ((w << 8) & 0x80008000u) | ((w & 0x007F007Fu) << 7);
  hi = (w & 0x80008000u) | ((w & 0x7F007F00u) >> 1);
#endif
}

// Host check of the above: four e4m3 bytes to fp32, each the element times 2^kE4m3HalfExponent.
inline void e4m3x4_to_float_scaled(uint32_t w, float (&dst)[4]) {
  uint32_t pairs[2];
  e4m3x4_to_half2x2(w, pairs[0], pairs[1]);
  for (int i = 0; i < 4; ++i) {
    const int pair = kE4m3EvenOddPairs ? i % 2 : i / 2, half = kE4m3EvenOddPairs ? i / 2 : i % 2;
    const uint16_t bits = static_cast<uint16_t>(pairs[pair] >> (16 * half));
    __half h;
    memcpy(&h, &bits, sizeof(h));
    dst[i] = __half2float(h);
  }
}

}  // namespace fastcot
