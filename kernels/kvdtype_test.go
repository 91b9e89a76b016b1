package kernels

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/kvd-project/kvd/shm"
)

// TestE4M3 checks the fp8 pool's rounding against the nearest of all 256
// codes found by search: every code's value comes back to its code, every
// value between two neighbours goes to the nearer (the even code on a
// tie), values past 448 saturate, and NaN stays NaN.
func TestE4M3(t *testing.T) {
	if v := fromE4M3(0x7e); v != 448 {
		t.Fatalf("0x7e is %v, want 448", v)
	}
	if v := fromE4M3(0x01); v != 1.0/512 {
		t.Fatalf("0x01 is %v, want 2^-9", v)
	}
	if v := fromE4M3(0x08); v != 1.0/64 {
		t.Fatalf("0x08 is %v, want 2^-6", v)
	}
	for b := range 256 {
		v := fromE4M3(uint8(b))
		if math.IsNaN(float64(v)) {
			if b&0x7f != 0x7f {
				t.Fatalf("code %#x decodes to NaN", b)
			}
			if got := toE4M3(v); got&0x7f != 0x7f {
				t.Fatalf("NaN encodes to %#x", got)
			}
			continue
		}
		if got := toE4M3(v); got != uint8(b) && !(v == 0 && got&0x7f == 0) {
			t.Fatalf("%v (code %#x) encodes to %#x", v, b, got)
		}
	}
	// nearest is the code whose value is nearest f's magnitude, the even
	// code (its mantissa's last bit clear) on a tie, with f's sign; past
	// 448 that is 448.
	nearest := func(f float32) uint8 {
		a, sign := math.Abs(float64(f)), uint8(0)
		if math.Signbit(float64(f)) {
			sign = 0x80
		}
		best, bestD := 0, math.Inf(1)
		for b := 0; b <= 0x7e; b++ {
			d := math.Abs(float64(fromE4M3(uint8(b))) - a)
			if d < bestD || d == bestD && b&1 == 0 {
				best, bestD = b, d
			}
		}
		return sign | uint8(best)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	check := func(f float32) {
		t.Helper()
		got, want := toE4M3(f), nearest(f)
		if fromE4M3(got) != fromE4M3(want) {
			t.Fatalf("%v (bits %#x) encodes to %#x (%v), want %#x (%v)", f, math.Float32bits(f), got, fromE4M3(got), want, fromE4M3(want))
		}
	}
	for range 20000 {
		// Magnitudes across the whole range, subnormals and saturation too.
		f := float32(math.Ldexp(rng.Float64()+0.5, rng.IntN(22)-12))
		if rng.IntN(2) == 0 {
			f = -f
		}
		check(f)
	}
	for b := range 0x7e { // the midpoints between neighbours: ties to even
		lo, hi := fromE4M3(uint8(b)), fromE4M3(uint8(b+1))
		check((lo + hi) / 2)
		check(-(lo + hi) / 2)
	}
	for _, f := range []float32{448, 449, 463.9, 464, 1e6, float32(math.Inf(1))} {
		if got := toE4M3(f); got != 0x7e {
			t.Errorf("%v encodes to %#x, want 0x7e (448: saturated)", f, got)
		}
		if got := toE4M3(-f); got != 0xfe {
			t.Errorf("%v encodes to %#x, want 0xfe (-448)", -f, got)
		}
	}
	if got := toE4M3(float32(math.NaN())); got&0x7f != 0x7f {
		t.Errorf("NaN encodes to %#x", got)
	}
}

// TestRowFP8 packs a row into an fp8 pool's words and reads it back: four
// dims a word, dim 4i+j in byte j of word i.
func TestRowFP8(t *testing.T) {
	src := []float32{1, -2, 0.5, 448, 3.14, -0.001, 1000, 0}
	dst := make([]float32, len(src)/4)
	putRow(dst, src, shm.FP8E4M3)
	w := words(dst)
	if byte(w[0]) != toE4M3(1) || byte(w[0]>>24) != 0x7e || byte(w[1]>>16) != 0x7e {
		t.Fatalf("words %#x", w)
	}
	got := make([]float32, len(src))
	getRow(got, dst, shm.FP8E4M3)
	for i, f := range src {
		if want := fromE4M3(toE4M3(f)); got[i] != want {
			t.Errorf("dim %d: %v read back as %v, want %v", i, f, got[i], want)
		}
	}
}
