// float8 e4m3 (float8_e4m3fn) widening by bit operations: no conversion instructions, the
// same code on sm_80 (which has none for fp8) and sm_90, and on the host for tests.
//
// An e4m3 byte s.eeee.mmm with its sign at bit 15 and eeee.mmm at bits 10..4 of a 16-bit word
// is the bfloat16 whose value is the e4m3 value times 2^-120 (exponent bias 7 against 127):
// normals and subnormals alike, exactly, -0 included. The kernel folds the 2^120 into its
// scales. Unlike torch, the NaN codes (s.1111.111) read as +-480 x 2^-120: a NaN in an fp8
// cache does not propagate (a float8 write never stores one unless its input was NaN).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>

namespace fastcot {

// log2 of the factor the bfloat16 images below are short of: 2^(127 - 7).
constexpr int kE4m3ToBf16Exponent = 120;

// Four e4m3 bytes (memory order b0..b3 in `w`) to bfloat16 pairs scaled by 2^-120: `even`
// holds (b0, b2), `odd` holds (b1, b3), low half first. Seven integer operations: each byte's
// sign goes to bit 15 of its half and its other seven bits to bits 10..4.
__host__ __device__ __forceinline__ void e4m3x4_to_bf16x2x2(uint32_t w, uint32_t& even, uint32_t& odd) {
  even = ((w << 8) & 0x80008000u) | ((w & 0x007F007Fu) << 4);
  odd = (w & 0x80008000u) | ((w & 0x7F007F00u) >> 4);
}

// Host check of the above: four e4m3 bytes to fp32, each the element times 2^-120.
__host__ __device__ __forceinline__ void e4m3x4_to_float_scaled(uint32_t w, float (&dst)[4]) {
  uint32_t even, odd;
  e4m3x4_to_bf16x2x2(w, even, odd);
  const uint32_t halves[4] = {even << 16, odd << 16, even & 0xFFFF0000u, odd & 0xFFFF0000u};
  for (int i = 0; i < 4; ++i) memcpy(&dst[i], &halves[i], sizeof(float));  // bf16 = fp32's top half
}

}  // namespace fastcot
