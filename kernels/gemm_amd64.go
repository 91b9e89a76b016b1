package kernels

import "golang.org/x/sys/cpu"

// hasFMA says the AVX2 + FMA kernel can run here.
var hasFMA = cpu.X86.HasAVX2 && cpu.X86.HasFMA

//go:noescape
func sgemm6x16(a *float32, lda int, b *float32, k int, c *float32)

//go:noescape
func sgemm6x16h(a *float32, lda int, b *uint16, k int, c *float32)
