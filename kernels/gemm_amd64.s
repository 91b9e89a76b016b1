#include "textflag.h"

// The two kernels below compute c[6][16] = a[6][k] · b[k][16]: a's rows are
// lda floats apart, b is a packed panel of 16 values per k, c is 96
// contiguous floats. AVX2 + FMA: twelve accumulators (Y0-Y11), b's 16
// values in Y12-Y13 and six broadcasts of a per k. They differ only in how
// a k's 16 values of b are loaded, so everything else is shared here.

// ARGS loads the arguments and the six row pointers, and zeroes the
// accumulators.
#define ARGS \
	MOVQ a+0(FP), SI; \
	MOVQ lda+8(FP), R8; \
	SHLQ $2, R8; \
	MOVQ b+16(FP), DI; \
	MOVQ k+24(FP), CX; \
	MOVQ c+32(FP), DX; \
	LEAQ (SI)(R8*1), AX; \
	LEAQ (AX)(R8*1), BX; \
	LEAQ (BX)(R8*1), R10; \
	LEAQ (R10)(R8*1), R11; \
	LEAQ (R11)(R8*1), R12; \
	VXORPS Y0, Y0, Y0; \
	VXORPS Y1, Y1, Y1; \
	VXORPS Y2, Y2, Y2; \
	VXORPS Y3, Y3, Y3; \
	VXORPS Y4, Y4, Y4; \
	VXORPS Y5, Y5, Y5; \
	VXORPS Y6, Y6, Y6; \
	VXORPS Y7, Y7, Y7; \
	VXORPS Y8, Y8, Y8; \
	VXORPS Y9, Y9, Y9; \
	VXORPS Y10, Y10, Y10; \
	VXORPS Y11, Y11, Y11

// ROWS accumulates one k: each row's a value, broadcast, times Y12-Y13,
// then steps the row pointers to the next k.
#define ROWS \
	VBROADCASTSS (SI), Y14; \
	VFMADD231PS  Y12, Y14, Y0; \
	VFMADD231PS  Y13, Y14, Y1; \
	VBROADCASTSS (AX), Y15; \
	VFMADD231PS  Y12, Y15, Y2; \
	VFMADD231PS  Y13, Y15, Y3; \
	VBROADCASTSS (BX), Y14; \
	VFMADD231PS  Y12, Y14, Y4; \
	VFMADD231PS  Y13, Y14, Y5; \
	VBROADCASTSS (R10), Y15; \
	VFMADD231PS  Y12, Y15, Y6; \
	VFMADD231PS  Y13, Y15, Y7; \
	VBROADCASTSS (R11), Y14; \
	VFMADD231PS  Y12, Y14, Y8; \
	VFMADD231PS  Y13, Y14, Y9; \
	VBROADCASTSS (R12), Y15; \
	VFMADD231PS  Y12, Y15, Y10; \
	VFMADD231PS  Y13, Y15, Y11; \
	ADDQ         $4, SI; \
	ADDQ         $4, AX; \
	ADDQ         $4, BX; \
	ADDQ         $4, R10; \
	ADDQ         $4, R11; \
	ADDQ         $4, R12

// STORE writes the 6 × 16 tile to c.
#define STORE \
	VMOVUPS Y0, (DX); \
	VMOVUPS Y1, 32(DX); \
	VMOVUPS Y2, 64(DX); \
	VMOVUPS Y3, 96(DX); \
	VMOVUPS Y4, 128(DX); \
	VMOVUPS Y5, 160(DX); \
	VMOVUPS Y6, 192(DX); \
	VMOVUPS Y7, 224(DX); \
	VMOVUPS Y8, 256(DX); \
	VMOVUPS Y9, 288(DX); \
	VMOVUPS Y10, 320(DX); \
	VMOVUPS Y11, 352(DX); \
	VZEROUPPER

// func sgemm6x16(a *float32, lda int, b *float32, k int, c *float32)
//
// b is a float32 panel: 16 floats (64 bytes) per k.
TEXT ·sgemm6x16(SB), NOSPLIT, $0-40
	ARGS
	TESTQ CX, CX
	JE    done

loop:
	VMOVUPS (DI), Y12
	VMOVUPS 32(DI), Y13
	ROWS
	ADDQ    $64, DI
	DECQ    CX
	JNE     loop

done:
	STORE
	RET

// func sgemm6x16h(a *float32, lda int, b *uint16, k int, c *float32)
//
// b is a bfloat16 panel: 16 values (32 bytes) per k, each widened to
// float32 exactly (zero-extend, shift into the high half), so the result is
// the same as from a float32 panel of the same values, with half the bytes
// to read.
TEXT ·sgemm6x16h(SB), NOSPLIT, $0-40
	ARGS
	TESTQ CX, CX
	JE    doneh

looph:
	VPMOVZXWD (DI), Y12
	VPMOVZXWD 16(DI), Y13
	VPSLLD    $16, Y12, Y12
	VPSLLD    $16, Y13, Y13
	ROWS
	ADDQ      $32, DI
	DECQ      CX
	JNE       looph

doneh:
	STORE
	RET
