package sample

import "math"

const (
	expScale = 64 / math.Ln2
	// Adding expMagic = 1.5 * 2^52 rounds to an integer, which then sits in
	// the low mantissa bits. That is several times faster than converting
	// to int64 and back, which stalls here.
	expMagic     = 0x1.8p52
	expMagicBits = 0x4338000000000000
)

// exp2Frac[j] is 2^(j/64).
var exp2Frac [64]float64

func init() {
	for j := range exp2Frac {
		exp2Frac[j] = math.Exp2(float64(j) / 64)
	}
}

// expReduced returns e^x for -708 <= x <= 709 with a relative error below
// 1e-12: plenty for float32 weights and a float64 log-sum-exp, and it
// inlines, so a loop over a 128k vocabulary pays neither math.Exp's call
// nor its full-precision work, which otherwise dominate sampling.
//
// It writes x = (64q + j) ln2/64 + r with |r| <= ln2/128, so that
// e^x = 2^q * 2^(j/64) * e^r, and e^r needs only a degree-4 polynomial.
func expReduced(x float64) float64 {
	kd := x*expScale + expMagic // k = 64q + j, rounded, in the low bits
	kf := kd - expMagic
	// k + 1023*64 >= 0 for x >= -708, so q+1023, the biased exponent of
	// 2^q, is its top bits and j its low six.
	u := math.Float64bits(kd) - (expMagicBits - 1023*64)
	// One-part ln2/64 costs |k| ulp of k ln2/64 in r, under 1e-13 for
	// x >= -708, and keeps this under the inlining budget.
	r := x - kf*(math.Ln2/64)
	p := 1 + r*(1+r*(1./2+r*(1./6+r*(1./24)))) // error < (ln2/128)^5/120 ≈ 4e-14
	return p * exp2Frac[u&63] * math.Float64frombits(u>>6<<52)
}

// Below this, e^x underflows float64.
const floor64 = -708

// expSum returns Σ exp(logits[i]-m) in float64, the normaliser of
// LogSoftmax. NaN and -Inf weigh 0, except that a logit equal to an
// infinite m weighs 1, so the non-finite cases come out as limits: +Inf
// logits share all the mass, and a row of nothing but -Inf and NaN is
// uniform.
func expSum(logits []float32, m float32) float64 {
	var sum float64
	if math.IsInf(float64(m), 0) {
		for _, v := range logits {
			if v == m || (v != v && m < 0) { // NaN counts as -Inf
				sum++
			}
		}
		return sum
	}
	mf := float64(m)
	for _, v := range logits {
		if x := float64(v) - mf; x >= floor64 {
			sum += expReduced(x)
		}
	}
	return sum
}
