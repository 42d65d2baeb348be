// Hopper warpgroup MMA (wgmma) building blocks of the causal prefill kernel
// prefill_wgmma_kernel (attention_prefill.cu), head_dim 128.
//
// Shared-memory tiles: a tile of R rows x 128 bf16 (Q rows, or K/V
// positions) is stored as two halves of 64 dims, [2][R][128 B], each 128-byte
// row swizzled: its 16-byte chunk c lands at chunk c ^ (row % 8) (the 128B
// swizzle mode: the XOR of byte-address bits 4-6 with bits 7-9, so every
// 8-row atom of 1024 bytes starts on a 1024-byte boundary). The same bytes
// serve as
//  - a K-major operand (Q as A, K as B of S = Q K^T, k = dims): a k-step of
//    16 dims starts 32 (kk % 4) bytes into half kk / 4; 8-row groups are
//    1024 bytes apart (SBO);
//  - an MN-major operand (V as B of O += P V, k = positions, n = dims,
//    transposed): a k-step of 16 positions starts 2048 j bytes in; 8-position
//    groups are 1024 bytes apart (SBO), the two 64-dim halves R * 128 bytes
//    (LBO).
// Accumulators (m64nN, f32): warp w of the warpgroup holds rows 16 w + g and
// 16 w + g + 8 (g = lane / 4); n-tile nt (8 columns) is d[nt][0..1] (row g,
// columns 8 nt + 2t, + 1) and d[nt][2..3] (row g + 8): per warp the layout
// of mma.sync m16n8 (attention_mma.cuh), so MmaRows' softmax and epilogue
// apply unchanged, and P's A fragments from registers are mma.sync's too.
// Order: cp.async writes become visible to the tensor cores' (async proxy)
// reads through cp_async_wait, fence_proxy_async() and a barrier.
#pragma once

#ifdef CARTSERVE_WITH_CUDA

#include <cstdint>

#include "kernels/cuda/attention_mma.cuh"

// The wgmma instructions exist on sm_90a only (CMAKE_CUDA_ARCHITECTURES
// 90a, the default); a device pass for another target compiles them to a trap,
// and the host side never launches the kernel in a build without 90a
// (CARTSERVE_CUDA_SM90A, attention_prefill.cu).
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CS_WGMMA(...) __trap()
#else
#define CS_WGMMA(...) asm volatile(__VA_ARGS__)
#endif

namespace cartserve::ops::cuda {

// The wgmma kernel's CTA: WARPGROUPS warpgroups of 64 rows over K/V tiles of
// BN positions in two shared stages (tile i + 1 loads while tile i is
// computed); MmaRows<WgmmaCfg> holds each thread's softmax state and O.
// (A third stage with S of tile i + 1 issued before tile i's softmax ran no
// faster on an H100: 1518.3 vs 1518.1 us per layer at 8192 tokens; the two
// warpgroups of a CTA already overlap each other's softmax and MMAs.)
struct WgmmaCfg {
  static constexpr int D = 128;
  static constexpr int BN = 64;
  static constexpr int MA = 1;
  static constexpr int STAGES = 2;
  static constexpr int WARPGROUPS = 2;
  static constexpr int THREADS = 128 * WARPGROUPS;
  static constexpr int ROWS = 64 * WARPGROUPS;
  static constexpr int CHUNKS = D / 8;                 // 16-byte chunks per row
  static constexpr uint32_t Q_BYTES = 2 * ROWS * 128;  // [2][ROWS][128 B]
  static constexpr uint32_t KV_BYTES = 2 * BN * 128;   // one K or V tile, [2][BN][128 B]
  // Q, STAGES x (K, V), and 1024 bytes to align the start.
  static constexpr uint32_t SMEM_BYTES = Q_BYTES + 2 * STAGES * KV_BYTES + 1024;
  static_assert(64 % BN == 0, "splits of 64-position multiples start on tile boundaries");
};

// Byte offset of 16-byte chunk c (dims 8c .. 8c + 7) of row r in a swizzled
// [2][rows][128 B] tile.
__device__ __forceinline__ uint32_t sw128_offset(int rows, int r, int c) {
  return static_cast<uint32_t>((c >> 3) * rows * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// A shared-memory matrix descriptor, 128B swizzle (start, LBO and SBO in
// bytes; the atoms are 1024-byte aligned, so the base offset is 0).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((saddr & 0x3FFFFu) >> 4) |
         static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16 |
         static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32 | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  CS_WGMMA("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  CS_WGMMA("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most N of the warpgroup's committed wgmma groups are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  CS_WGMMA("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy writes to shared memory (cp.async, st.shared) made visible
// to later async-proxy reads (wgmma operands); each writing thread, then a barrier.
__device__ __forceinline__ void fence_proxy_async() {
  CS_WGMMA("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// d[64 x 64] += A[64 x 16] (shared, K-major) * B[16 x 64] (shared, K-major: 64 rows of k).
__device__ __forceinline__ void wgmma_64x64_ss(float (&d)[8][4], uint64_t da, uint64_t db) {
  CS_WGMMA(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, 1, 1, 1, 0, 0;\n"
      "}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(da), "l"(db)
      : "memory");
}

// d[64 x 128] += A[64 x 16] (registers: mma.sync A fragments) * B[16 x 128]
// (shared, MN-major).
__device__ __forceinline__ void wgmma_64x128_rs(float (&d)[16][4], const uint32_t (&a)[4],
                                                uint64_t db) {
  CS_WGMMA(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "
      "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "
      "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "
      "%56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),
        "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]),
        "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]),
        "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]),
        "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]), "+f"(d[14][0]),
        "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]),
        "+f"(d[15][2]), "+f"(d[15][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db)
      : "memory");
}

}  // namespace cartserve::ops::cuda

#endif  // CARTSERVE_WITH_CUDA
