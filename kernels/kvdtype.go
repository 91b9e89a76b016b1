package kernels

import (
	"math"
	"unsafe"

	"github.com/kvd-project/kvd/shm"
)

// toBF16 rounds to the nearest bfloat16, ties to even (NaN stays NaN).
func toBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 0x40
	}
	u += 0x7fff + (u>>16)&1
	return uint16(u >> 16)
}

// fromBF16 is a bfloat16's value (exact: bfloat16 is float32's top half).
func fromBF16(b uint16) float32 { return math.Float32frombits(uint32(b) << 16) }

// words views float32s as their bits, so that packed bfloat16 pairs are
// moved and read without ever passing through a float register.
func words(f []float32) []uint32 {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(&f[0])), len(f))
}

// putRow stores one row of K or V, src [HeadDim], at dst (the row's words
// in the pool) as the pool's dtype keeps it (shm.Layout).
func putRow(dst, src []float32, dt shm.DType) {
	if dt != shm.BFloat16 {
		copy(dst[:len(src)], src)
		return
	}
	w := words(dst[:len(src)/2])
	for i := range w {
		w[i] = uint32(toBF16(src[2*i])) | uint32(toBF16(src[2*i+1]))<<16
	}
}

// getRow reads one row of K or V from src (its words in the pool) into dst
// [HeadDim] as float32s.
func getRow(dst, src []float32, dt shm.DType) {
	if dt != shm.BFloat16 {
		copy(dst, src[:len(dst)])
		return
	}
	w := words(src[:len(dst)/2])
	for i, u := range w {
		dst[2*i] = math.Float32frombits(u << 16)
		dst[2*i+1] = math.Float32frombits(u &^ 0xffff)
	}
}

// row is the pool's row at word off as len(buf) float32s: the pool's own
// words for a float32 pool, else decoded into buf.
func row(buf, pool []float32, off int, dt shm.DType) []float32 {
	if dt != shm.BFloat16 {
		return pool[off : off+len(buf)]
	}
	getRow(buf, pool[off:], dt)
	return buf
}
