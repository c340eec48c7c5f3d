// Philox4x32-10, bit-identical to Triton's tl.philox and to specdecode/core.py (philox4x32),
// so the CPU and CUDA kernels draw the same uniforms for the same (seed, counter).
#pragma once
#include <cstdint>

namespace specdecode {

inline uint32_t philox_first_word(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  constexpr uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  constexpr uint64_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t prod_b = kRoundB * c2, prod_a = kRoundA * c0;
    const uint32_t next_c0 = static_cast<uint32_t>(prod_b >> 32) ^ c1 ^ key0;
    const uint32_t next_c2 = static_cast<uint32_t>(prod_a >> 32) ^ c3 ^ key1;
    c1 = static_cast<uint32_t>(prod_b);
    c3 = static_cast<uint32_t>(prod_a);
    c0 = next_c0;
    c2 = next_c2;
    key0 += kKeyA;
    key1 += kKeyB;
  }
  return c0;
}

// The top 24 bits as a float in [0, 1): exact in float32, so every backend gets the same value.
inline float uniform_from_word(uint32_t word) {
  return static_cast<float>(word >> 8) * (1.0f / 16777216.0f);
}

}  // namespace specdecode
