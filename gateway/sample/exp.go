package sample

import "math"

// exp2Frac[j] is 2^(j/64).
var exp2Frac [64]float64

func init() {
	for j := range exp2Frac {
		exp2Frac[j] = math.Exp2(float64(j) / 64)
	}
}

// expNeg returns e^x for x <= 0 (0 below -708, -Inf included; NaN stays
// NaN) with a relative error below 1e-12: plenty for float32 weights and a
// float64 log-sum-exp, and faster than math.Exp, which otherwise dominates
// sampling a 128k vocabulary. Callers pass logit minus the maximum, so
// x > 0 does not occur; values up to 709 come out right all the same.
//
// It writes x = (64q + j) ln2/64 + r with |r| <= ln2/128, so that
// e^x = 2^q * 2^(j/64) * e^r, and e^r needs only a degree-4 polynomial.
func expNeg(x float64) float64 {
	if x < -708 {
		return 0
	}
	const (
		scale = 64 / math.Ln2
		ln2Hi = 6.93147180369123816490e-01 / 64 // ln2/64 in two parts, as math.Exp
		ln2Lo = 1.90821492927058770002e-10 / 64
		bias  = 1 << 16 // makes x*scale non-negative so truncation rounds
	)
	k := int64(x*scale+bias+0.5) - bias
	kf := float64(k)
	r := x - kf*ln2Hi - kf*ln2Lo
	p := 1 + r*(1+r*(1./2+r*(1./6+r*(1./24)))) // error < (ln2/128)^5/120 ≈ 4e-14
	return p * exp2Frac[k&63] * math.Float64frombits(uint64(k>>6+1023)<<52)
}
