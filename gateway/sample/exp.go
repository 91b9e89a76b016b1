package sample

import "math"

const (
	expScale = 64 / math.Ln2
	expLn2Hi = 6.93147180369123816490e-01 / 64 // ln2/64 in two parts, as math.Exp
	expLn2Lo = 1.90821492927058770002e-10 / 64
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
	kd := x*expScale + expMagic
	k := int64(math.Float64bits(kd) - expMagicBits)
	kf := kd - expMagic
	r := x - kf*expLn2Hi - kf*expLn2Lo
	p := 1 + r*(1+r*(1./2+r*(1./6+r*(1./24)))) // error < (ln2/128)^5/120 ≈ 4e-14
	return p * exp2Frac[k&63] * math.Float64frombits(uint64(k>>6+1023)<<52)
}

// expRow sets dst[i] (if dst is not nil) to the weight of logits[i] under
// their maximum m (NaN as -Inf) at temperature 1/invT > 0, that is
// exp((logits[i]-m)*invT), and returns
// the float64 sum of the float32 weights, or of the float64 ones when dst
// is nil. NaN counts as -Inf, and a logit equal to m weighs 1, so +Inf
// logits share all the mass and an all -Inf row is uniform.
//
// It is expNeg written out in the loop: a call per element costs more than
// the exponential on some machines, and expNeg is too big to be inlined.
// TestExpRow holds the two to the same results.
func expRow(dst, logits []float32, m float32, invT float64) float64 {
	if dst != nil {
		dst = dst[:len(logits)]
	}
	// Below -104 a float32 weight rounds to 0 anyway; the float64 sum
	// keeps what it can.
	floor := -708.0
	if dst != nil {
		floor = -104
	}
	var sum float64
	ninf := float32(math.Inf(-1))
	for i, v := range logits {
		if v != v {
			v = ninf
		}
		e := 1.0
		if v != m {
			e = 0
			if x := (float64(v) - float64(m)) * invT; x >= floor {
				kd := x*expScale + expMagic
				k := int64(math.Float64bits(kd) - expMagicBits)
				kf := kd - expMagic
				r := x - kf*expLn2Hi - kf*expLn2Lo
				p := 1 + r*(1+r*(1./2+r*(1./6+r*(1./24))))
				e = p * exp2Frac[k&63] * math.Float64frombits(uint64(k>>6+1023)<<52)
			}
		}
		if dst != nil {
			w := float32(e)
			dst[i] = w
			sum += float64(w)
		} else {
			sum += e
		}
	}
	return sum
}
