// Dequantization of fastcot's packed int4 weights to a dense [N, K] matrix.
// Framework-free: raw pointers, sizes and a stream. The layout is documented
// on fastcot::Int4DequantParams in fastcot/api.h.
#pragma once

#include <cstdint>

#include "fastcot/common.cuh"

namespace fastcot {

constexpr int kInt4DequantMaxThreads = 256;
// gridDim.y is limited to 65535; larger N is covered by striding over rows.
constexpr int64_t kMaxGridY = 65535;

template <typename OutT, typename ScaleT>
struct Int4DequantArgs {
  const uint32_t* qweight;  // [N, K/8]
  const ScaleT* scales;     // [G, N]
  const ScaleT* zeros;      // [G, N] or null: zero point 8
  const int32_t* perm;      // [K] or null
  OutT* out;                // [N, K]
  int64_t n;
  int64_t k;
  int64_t group_size;       // > 0, a multiple of 8 that divides K
  bool vector_store;        // out is 16-byte aligned (only used without perm)
};

// One thread owns one packed word (8 consecutive stored columns) and walks down
// the rows: the word's group and its perm entries are fixed per thread, so
// they are computed once, and a warp reads 32 consecutive words of a row.
template <typename OutT, typename ScaleT>
__global__ void __launch_bounds__(kInt4DequantMaxThreads)
    int4_dequantize_kernel(const Int4DequantArgs<OutT, ScaleT> args) {
  const int64_t words_per_row = args.k / 8;
  const int64_t word = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (word >= words_per_row) return;
  const int64_t col0 = word * 8;
  // group_size is a multiple of 8, so all 8 nibbles of a word share a group.
  const int64_t group = col0 / args.group_size;

  int32_t dst_cols[8];
  if (args.perm != nullptr) {
#pragma unroll
    for (int j = 0; j < 8; ++j) dst_cols[j] = __ldg(args.perm + col0 + j);
  }

  for (int64_t row = blockIdx.y; row < args.n; row += gridDim.y) {
    const int64_t scale_idx = group * args.n + row;
    const float scale = to_float(args.scales[scale_idx]);
    const float zero = args.zeros != nullptr ? to_float(args.zeros[scale_idx]) : 8.0f;
    const uint32_t packed = __ldg(args.qweight + row * words_per_row + word);

    OutT values[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float q = static_cast<float>((packed >> (4 * j)) & 0xFu);
      values[j] = from_float<OutT>((q - zero) * scale);
    }

    OutT* out_row = args.out + row * args.k;
    if (args.perm != nullptr) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        // A bad perm entry must not become an out-of-bounds write; the
        // Python boundary validates perm, this only contains the damage.
        if (dst_cols[j] >= 0 && dst_cols[j] < args.k) {
          out_row[dst_cols[j]] = values[j];
        }
      }
    } else if (args.vector_store) {
      store_vectorized(out_row + col0, values);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) out_row[col0 + j] = values[j];
    }
  }
}

}  // namespace fastcot
