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

// toE4M3 rounds to the nearest FP8 E4M3 value (OCP's, NVIDIA's
// __nv_fp8_e4m3: bias 7, no infinities, one NaN pattern a sign), ties to
// even, saturating at ±448 as vLLM's scaled cast does (__NV_SATFINITE);
// NaN stays NaN.
func toE4M3(f float32) uint8 {
	u := math.Float32bits(f)
	sign := uint8(u>>24) & 0x80
	a := u & 0x7fffffff
	switch {
	case a > 0x7f800000:
		return sign | 0x7f // NaN
	case a >= 0x43e00000: // 448 and up, infinity too
		return sign | 0x7e
	case a < 0x3c800000: // below 2^-6: subnormal steps of 2^-9 (8 of them is 2^-6, encoded 0x08)
		return sign | uint8(math.RoundToEven(float64(math.Float32frombits(a))*512))
	}
	e := int(a>>23) - 127 + 7 // 1..15
	m := (a >> 20) & 7
	rest := a & 0xfffff
	if rest > 0x80000 || rest == 0x80000 && m&1 == 1 {
		m++
		if m == 8 {
			m, e = 0, e+1
		}
	}
	if e > 15 || e == 15 && m == 7 { // rounded past 448
		return sign | 0x7e
	}
	return sign | uint8(e)<<3 | uint8(m)
}

// e4m3 is every FP8 E4M3 byte's value.
var e4m3 = func() (t [256]float32) {
	for b := range 256 {
		e, m := (b>>3)&15, float64(b&7)
		v := math.Ldexp(m/8, -6) // subnormal
		if e > 0 {
			v = math.Ldexp(1+m/8, e-7)
		}
		if e == 15 && m == 7 {
			v = math.NaN()
		}
		if b&0x80 != 0 {
			v = -v
		}
		t[b] = float32(v)
	}
	return t
}()

// fromE4M3 is an FP8 E4M3 byte's value (exact in float32).
func fromE4M3(b uint8) float32 { return e4m3[b] }

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
	switch dt {
	case shm.BFloat16:
		w := words(dst[:len(src)/2])
		for i := range w {
			w[i] = uint32(toBF16(src[2*i])) | uint32(toBF16(src[2*i+1]))<<16
		}
	case shm.FP8E4M3:
		w := words(dst[:len(src)/4])
		for i := range w {
			s := src[4*i : 4*i+4]
			w[i] = uint32(toE4M3(s[0])) | uint32(toE4M3(s[1]))<<8 | uint32(toE4M3(s[2]))<<16 | uint32(toE4M3(s[3]))<<24
		}
	default:
		copy(dst[:len(src)], src)
	}
}

// getRow reads one row of K or V from src (its words in the pool) into dst
// [HeadDim] as float32s.
func getRow(dst, src []float32, dt shm.DType) {
	switch dt {
	case shm.BFloat16:
		w := words(src[:len(dst)/2])
		for i, u := range w {
			dst[2*i] = math.Float32frombits(u << 16)
			dst[2*i+1] = math.Float32frombits(u &^ 0xffff)
		}
	case shm.FP8E4M3:
		w := words(src[:len(dst)/4])
		for i, u := range w {
			d := dst[4*i : 4*i+4]
			d[0], d[1], d[2], d[3] = e4m3[uint8(u)], e4m3[uint8(u>>8)], e4m3[uint8(u>>16)], e4m3[uint8(u>>24)]
		}
	default:
		copy(dst, src[:len(dst)])
	}
}

// row is the pool's row at word off as len(buf) float32s: the pool's own
// words for a float32 pool, else decoded into buf.
func row(buf, pool []float32, off int, dt shm.DType) []float32 {
	if dt == shm.Float32 {
		return pool[off : off+len(buf)]
	}
	getRow(buf, pool[off:], dt)
	return buf
}
