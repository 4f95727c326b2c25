// float8 e4m3 (float8_e4m3fn) widening by bit operations: no conversion instructions, the
// same code on sm_80 (which has none for fp8) and sm_90, and on the host for tests.
//
// An e4m3 byte s.eeee.mmm placed at bits 15 and 13..7 of an fp16 is the fp16 whose value is
// the e4m3 value times 2^-8 (exponent bias 7 against 15): normals and subnormals alike, exactly.
// The caller multiplies its scale by kE4m3ToHalfBias once instead of each element. The NaN
// codes (s.1111.111) would land on 1.875 * 2^-8 * sign; their fp16 exponent's top bit is set
// as well, which makes them fp16 NaN, so a NaN in the cache stays NaN as in torch.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_fp16.h>

namespace fastcot {

// The factor the fp16 images below are short of: 2^(15 - 7).
constexpr float kE4m3ToHalfBias = 256.0f;

// Four e4m3 bytes (memory order b0..b3 in `w`) to fp16 pairs scaled by 2^-8:
// `even` holds (b0, b2), `odd` holds (b1, b3), low half first.
__host__ __device__ __forceinline__ void e4m3x4_to_half2x2(uint32_t w, uint32_t& even, uint32_t& odd) {
  const uint32_t magnitude = w & 0x7F7F7F7Fu;
  // A byte's bit 7 becomes 1 exactly when its magnitude is 0x7F (NaN): +1 carries into it.
  const uint32_t nan = (magnitude + 0x01010101u) & 0x80808080u;
  const uint32_t bits = magnitude | nan;  // bit 7 of a byte: lands on the fp16 exponent's top bit
  even = ((w << 8) & 0x80008000u) | ((bits << 7) & 0x7F807F80u);
  odd = (w & 0x80008000u) | ((bits >> 1) & 0x7F807F80u);
}

// Eight e4m3 bytes (memory order) to fp32, each the element times 2^-8.
__host__ __device__ __forceinline__ void e4m3x8_to_float_scaled(uint32_t lo, uint32_t hi, float (&dst)[8]) {
  const uint32_t words[2] = {lo, hi};
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    uint32_t even, odd;
    e4m3x4_to_half2x2(words[i], even, odd);
    __half2 e2, o2;
    memcpy(&e2, &even, sizeof(e2));
    memcpy(&o2, &odd, sizeof(o2));
    const float2 e = __half22float2(e2);
    const float2 o = __half22float2(o2);
    dst[4 * i + 0] = e.x;
    dst[4 * i + 1] = o.x;
    dst[4 * i + 2] = e.y;
    dst[4 * i + 3] = o.y;
  }
}

}  // namespace fastcot
