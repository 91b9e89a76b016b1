// The wgmma prefill kernels (flash_wgmma.cuh) for Hopper (sm_90a): the
// same entry points as attention.cu's flash_paged_mma_{bf16,fp8}_hd* and
// flash_prompt_mma_bf16_hd*, which they replace on an H100 or H200 unless
// KVD_FLASH_WGMMA=0. Built apart from attention.cu because make kernels'
// nvcc 11.8 cannot assemble wgmma: this file becomes PTX
// (kernels/cudabin/attention_sm90a.ptx) that the driver compiles for the
// card when the kernels load.
#include "flash.cuh"
#include "flash_mma.cuh"
#include "flash_wgmma.cuh"

// Three CTAs an SM at head dim 128 (65 KiB of shared memory each; at most
// 168 registers, 155-160 as the card's ptxas built them in run 12, call
// BB), four at 64.
#ifndef FLASH_WGMMA_CTAS128
#define FLASH_WGMMA_CTAS128 3
#endif
#define FLASH_WGMMA_CTAS(HD) ((HD) == 64 ? 4 : FLASH_WGMMA_CTAS128)

#define INSTANTIATE_FLASH_WGMMA(HD)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128, FLASH_WGMMA_CTAS(HD))                                          \
        flash_paged_wgmma_bf16_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,          \
                                      const int *tiles, const int *blocks, float scale) {                            \
        flash_paged<FlashWGMMA, HD, bf16_t>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                         \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128, FLASH_WGMMA_CTAS(HD))                                          \
        flash_paged_wgmma_fp8_hd##HD(float *out, const float *q, const float *pool, int bs, int kvh, int H,           \
                                     const int *tiles, const int *blocks, float scale) {                             \
        flash_paged<FlashWGMMA, HD, fp8_t>(out, q, pool, bs, kvh, H, tiles, blocks, scale);                          \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128, FLASH_WGMMA_CTAS(HD))                                          \
        flash_prompt_wgmma_bf16_hd##HD(float *out, const float *q, const bf16_t *k, const bf16_t *v, int kvh, int H,  \
                                       int row0, int nrows, float scale) {                                           \
        flash_prompt<FlashWGMMA, HD, bf16_t>(out, q, k, v, kvh, H, row0, nrows, scale);                              \
    }
INSTANTIATE_FLASH_WGMMA(64)
INSTANTIATE_FLASH_WGMMA(128)
