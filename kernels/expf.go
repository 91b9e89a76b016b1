package kernels

import "math"

// expf is e^x in float32 for the softmax's x ≤ 0, a few times faster than
// math.Exp's float64: Cody–Waite range reduction to r in [-ln2/2, ln2/2]
// and Cephes's degree-6 polynomial for e^r, then 2^n in the exponent bits.
// Relative error about 2e-7; 0 below -87 (where float32 underflows anyway).
func expf(x float32) float32 {
	if x < -87 {
		return 0
	}
	n := float32(math.Floor(float64(x*1.44269504088896341 + 0.5)))
	r := x - n*0.693359375 // ln2 split in two: the high part is exact in float32
	r -= n * -2.12194440e-4
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	p = p*r*r + r + 1
	return p * math.Float32frombits(uint32(int32(n)+127)<<23)
}
