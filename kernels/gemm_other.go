//go:build !amd64

package kernels

var hasFMA = false

func sgemm6x16(a *float32, lda int, b *float32, k int, c *float32) {
	panic("kernels: sgemm6x16 without AVX2") // unreachable: hasFMA is false
}

func sgemm6x16h(a *float32, lda int, b *uint16, k int, c *float32) {
	panic("kernels: sgemm6x16h without AVX2") // unreachable: hasFMA is false
}
