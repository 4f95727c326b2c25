// Host-side checks of the csrc kernels' conversion helpers, run by tests/test_csrc.py
// (compiled with nvcc, run on the CPU): it prints, as fp32 bit patterns, what the helpers
// make of given inputs, and the test compares them with torch's own conversions.
//
//   host_checks int4 (<word hex> <scale> <zero>)... -> per triple, 8 dequantized weights in K order
//   host_checks fp8                              -> all 256 float8_e4m3fn bytes widened (and rescaled)
//   host_checks bf16 | fp16 <16-bit hex>...      -> each widened
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fastcot/int4_gemv.cuh"
#include "fastcot/paged_decode.cuh"

namespace {

void print_bits(const float* values, int n) {
  for (int i = 0; i < n; ++i) {
    uint32_t bits;
    memcpy(&bits, &values[i], sizeof(bits));
    std::printf("%08x%c", bits, i + 1 == n ? '\n' : ' ');
  }
}

template <typename T>
void widen16(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    const uint32_t half = static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 16)) & 0xFFFFu;
    const uint32_t word = half | (half << 16);
    float out[8];
    fastcot::unpack8_as_float(make_uint4(word, word, word, word), static_cast<const T*>(nullptr), out);
    print_bits(out, 1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && (argc - 2) % 3 == 0 && std::strcmp(argv[1], "int4") == 0) {
    for (int i = 2; i < argc; i += 3) {
      const uint32_t word = static_cast<uint32_t>(std::strtoul(argv[i], nullptr, 16));
      const float scale = std::strtof(argv[i + 1], nullptr);
      const float zero = std::strtof(argv[i + 2], nullptr);
      float w[8];
      // The same scale_hi and offset the GEMV kernel derives.
      fastcot::dequant_int4x8(word, scale, scale * 0.0625f, -zero * scale, w);
      print_bits(w, 8);
    }
    return 0;
  }
  if (argc == 2 && std::strcmp(argv[1], "fp8") == 0) {
    for (uint32_t b = 0; b < 256; b += 4) {
      uint32_t word = 0;
      for (uint32_t j = 0; j < 4; ++j) word |= (b + j) << (8 * j);
      float out[4];
      fastcot::e4m3x4_to_float_scaled(word, out);  // the bit operations' element times 2^-8
      for (float& x : out) x = std::ldexp(x, -fastcot::kE4m3HalfExponent);
      print_bits(out, 4);
    }
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "bf16") == 0) {
    widen16<__nv_bfloat16>(argc, argv);
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "fp16") == 0) {
    widen16<__half>(argc, argv);
    return 0;
  }
  std::fprintf(stderr, "usage: host_checks int4 (WORD SCALE ZERO)... | fp8 | bf16 HEX... | fp16 HEX...\n");
  return 2;
}
