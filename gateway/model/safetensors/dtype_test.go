package safetensors

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// refF16 is the value of a half bit pattern by the IEEE 754 definition.
func refF16(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, mant := int(h>>10)&0x1f, float64(h&0x3ff)
	switch exp {
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	case 0:
		return sign * math.Ldexp(mant, -24)
	}
	return sign * math.Ldexp(1+mant/1024, exp-15)
}

func TestF16ToFloat32Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		got, want := F16ToFloat32(h), refF16(h)
		if math.IsNaN(want) {
			b := math.Float32bits(got)
			if !math.IsNaN(float64(got)) || b>>31 != uint32(h>>15) || (b>>13)&0x3ff != uint32(h&0x3ff) {
				t.Fatalf("F16ToFloat32(%#04x) = %#08x, want NaN with sign and payload kept", h, b)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != math.Signbit(want) {
			t.Fatalf("F16ToFloat32(%#04x) = %g, want %g", h, got, want)
		}
	}
}

func TestBF16ToFloat32Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		// bfloat16 is the top half of a float32 by definition.
		want := math.Float32frombits(uint32(h) << 16)
		if got := BF16ToFloat32(h); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("BF16ToFloat32(%#04x) = %#08x", h, math.Float32bits(got))
		}
	}
}

// Every pattern survives widening and narrowing, except that NaN payloads
// may be quieted.
func TestRoundTripBits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		widen  func(uint16) float32
		narrow func(float32) uint16
		isNaN  func(uint16) bool
	}{
		{"f16", F16ToFloat32, Float32ToF16, func(h uint16) bool { return h&0x7c00 == 0x7c00 && h&0x3ff != 0 }},
		{"bf16", BF16ToFloat32, Float32ToBF16, func(h uint16) bool { return h&0x7f80 == 0x7f80 && h&0x7f != 0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range 1 << 16 {
				h := uint16(i)
				got := tc.narrow(tc.widen(h))
				if tc.isNaN(h) {
					if !tc.isNaN(got) || got&0x8000 != h&0x8000 {
						t.Fatalf("%#04x -> %#04x, want NaN of the same sign", h, got)
					}
					continue
				}
				if got != h {
					t.Fatalf("%#04x -> %g -> %#04x", h, tc.widen(h), got)
				}
			}
		})
	}
}

// refNarrow rounds |x| to the nearest of vals, the values of bit patterns
// 0..len(vals)-1 in increasing order, the last standing for infinity (the
// next power of two past the largest finite value, whose pattern is even,
// as IEEE rounding treats it). Ties go to the even pattern.
func refNarrow(x float64, vals []float64) uint16 {
	var sign uint16
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	i := sort.SearchFloat64s(vals, x)
	switch {
	case i == len(vals):
		return sign | uint16(len(vals)-1)
	case vals[i] == x:
		return sign | uint16(i)
	}
	lo, hi := x-vals[i-1], vals[i]-x
	if lo < hi || lo == hi && (i-1)%2 == 0 {
		i--
	}
	return sign | uint16(i)
}

func TestNarrowRounding(t *testing.T) {
	f16Vals := make([]float64, 0x7c01)
	for i := range 0x7c00 {
		f16Vals[i] = refF16(uint16(i))
	}
	f16Vals[0x7c00] = 65536
	bf16Vals := make([]float64, 0x7f81)
	for i := range 0x7f80 {
		bf16Vals[i] = float64(math.Float32frombits(uint32(i) << 16))
	}
	bf16Vals[0x7f80] = math.Ldexp(1, 128)

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	for _, tc := range []struct {
		name   string
		narrow func(float32) uint16
		vals   []float64
	}{
		{"f16", Float32ToF16, f16Vals},
		{"bf16", Float32ToBF16, bf16Vals},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(f float32) {
				t.Helper()
				if math.IsNaN(float64(f)) {
					return
				}
				if got, want := tc.narrow(f), refNarrow(float64(f), tc.vals); got != want {
					t.Fatalf("narrow(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
				}
			}
			for _, f := range []float32{0, float32(math.Copysign(0, -1)), 1, -1, 65504, 65519.99, 65520, 1e10,
				float32(math.Inf(1)), float32(math.Inf(-1)), math.MaxFloat32, math.SmallestNonzeroFloat32,
				5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 6.097555e-05} {
				check(f)
			}
			for range 1 << 17 {
				check(math.Float32frombits(rng.Uint32())) // every exponent
				check(float32(rng.NormFloat64()))         // typical weights
				// A tie between neighbouring finite patterns; exact in float32.
				i := rng.IntN(len(tc.vals) - 2)
				mid := (tc.vals[i] + tc.vals[i+1]) / 2
				check(float32(mid))
				check(-float32(mid))
			}
		})
	}
}

func TestNarrowSpecials(t *testing.T) {
	nan := math.Float32frombits(0x7fc12345)
	snan := math.Float32frombits(0xff812345) // signalling, negative
	for _, tc := range []struct {
		name string
		got  uint16
		want uint16
	}{
		{"f16 one", Float32ToF16(1), 0x3c00},
		{"f16 max", Float32ToF16(65504), 0x7bff},
		{"f16 overflow", Float32ToF16(1e6), 0x7c00},
		{"f16 -inf", Float32ToF16(float32(math.Inf(-1))), 0xfc00},
		{"f16 smallest subnormal", Float32ToF16(5.9604645e-08), 0x0001},
		{"f16 underflow", Float32ToF16(1e-10), 0x0000},
		{"f16 -underflow", Float32ToF16(-1e-10), 0x8000},
		{"f16 qnan", Float32ToF16(nan), 0x7e09},
		{"f16 snan", Float32ToF16(snan), 0xfe09},
		{"bf16 one", Float32ToBF16(1), 0x3f80},
		{"bf16 pi", Float32ToBF16(math.Pi), 0x4049},
		{"bf16 max float32", Float32ToBF16(math.MaxFloat32), 0x7f80},
		{"bf16 qnan", Float32ToBF16(nan), 0x7fc1},
		{"bf16 snan", Float32ToBF16(snan), 0xffc1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %#04x, want %#04x", tc.got, tc.want)
			}
		})
	}
}
