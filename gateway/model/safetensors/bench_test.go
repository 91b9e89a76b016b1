package safetensors

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkFloat32 converts 64 MiB of checkpoint data to float32; the
// reported MB/s are of checkpoint bytes read.
func BenchmarkFloat32(b *testing.B) {
	const srcBytes = 64 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, srcBytes)
	for i := range src {
		src[i] = byte(rng.Uint32() & 0x3f) // finite values, no NaN fast paths
	}
	for _, d := range []DType{BF16, F16, F32} {
		b.Run(string(d), func(b *testing.B) {
			n := srcBytes / (d.Bits() / 8)
			t := &Tensor{Name: "w", DType: d, Shape: []int{n}, Data: src}
			dst := make([]float32, n)
			b.SetBytes(srcBytes)
			for b.Loop() {
				if err := t.Float32(dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
