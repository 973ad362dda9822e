// Register-only multiply-accumulate throughput of one core with AVX2: int8 as vpmaddubsw + vpmaddwd +
// vpaddd (32 products into int32 per three ymm instructions; AVX2 has no int8 dot product, AVX-512
// VNNI's vpdpbusd is one instruction) against float32 as vfmadd231ps (8 per ymm instruction), eight
// independent accumulators each. Says whether an int8 kernel can beat float32 on a CPU without VNNI.
//
//   g++ -O2 -mavx2 -mfma benchmarks/roof_avx2.cpp -o /tmp/roof_avx2 && /tmp/roof_avx2
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

int main() {
  const long iters = 200000000;
  __m256i a[8], acc[8];
  const __m256i b = _mm256_set1_epi8(5), one = _mm256_set1_epi16(1);
  __m256 f[8], fa = _mm256_set1_ps(1.0001f), fb = _mm256_set1_ps(0.9999f);
  for (int k = 0; k < 8; ++k) {
    a[k] = _mm256_set1_epi8(static_cast<char>(k + 1));
    acc[k] = _mm256_setzero_si256();
    f[k] = _mm256_set1_ps(static_cast<float>(k));
  }
  double int8[3], fp32[3];
  for (int rep = 0; rep < 3; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters / 8; ++i) {
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(a[k], b), one));
      // the operands as unknown to the compiler each round: nothing is hoisted out of the loop
      __asm__ volatile("" : "+x"(a[0]), "+x"(a[1]), "+x"(a[2]), "+x"(a[3]), "+x"(a[4]), "+x"(a[5]), "+x"(a[6]), "+x"(a[7]));
    }
    const double ti = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters / 8; ++i) {
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) f[k] = _mm256_fmadd_ps(fa, fb, f[k]);
      __asm__ volatile("" : "+x"(fa), "+x"(fb));
    }
    const double tf = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int8[rep] = iters * 32.0 / ti / 1e9;
    fp32[rep] = iters * 8.0 / tf / 1e9;
    printf("run %d: int8 (AVX2 maddubs) %.1f GMAC/s, fp32 FMA %.1f GMAC/s\n", rep + 1, int8[rep], fp32[rep]);
  }
  int32_t s[8];
  float g[8];
  __m256i t = acc[0];
  __m256 u = f[0];
  for (int k = 1; k < 8; ++k) { t = _mm256_add_epi32(t, acc[k]); u = _mm256_add_ps(u, f[k]); }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s), t);
  _mm256_storeu_ps(g, u);
  std::sort(int8, int8 + 3);
  std::sort(fp32, fp32 + 3);
  printf("(checksums %d %g)\nmedians: int8 %.1f GMAC/s, fp32 %.1f GMAC/s\nint8/fp32 = %.2f\n", s[0], g[0],
         int8[1], fp32[1], int8[1] / fp32[1]);
}
