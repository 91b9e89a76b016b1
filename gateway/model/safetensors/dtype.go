package safetensors

import (
	"math"
	"math/bits"
)

// DType is an element type as the safetensors header spells it ("BF16").
type DType string

// The element types this package converts to and from float32.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
)

// Element types that Open accepts so that their tensors can be listed and
// sized, but that Float32 reports as ErrDType.
const (
	F64        DType = "F64"
	I64        DType = "I64"
	U64        DType = "U64"
	C64        DType = "C64"
	I32        DType = "I32"
	U32        DType = "U32"
	I16        DType = "I16"
	U16        DType = "U16"
	I8         DType = "I8"
	U8         DType = "U8"
	Bool       DType = "BOOL"
	F8E4M3     DType = "F8_E4M3"
	F8E5M2     DType = "F8_E5M2"
	F8E8M0     DType = "F8_E8M0"
	F8E4M3FNUZ DType = "F8_E4M3FNUZ"
	F8E5M2FNUZ DType = "F8_E5M2FNUZ"
	F6E2M3     DType = "F6_E2M3"
	F6E3M2     DType = "F6_E3M2"
	F4         DType = "F4"
)

// dtypeBits is the width of one element in bits; sub-byte types pack, and a
// tensor of them must fill whole bytes.
var dtypeBits = map[DType]int{
	F64: 64, I64: 64, U64: 64, C64: 64,
	F32: 32, I32: 32, U32: 32,
	F16: 16, BF16: 16, I16: 16, U16: 16,
	I8: 8, U8: 8, Bool: 8, F8E4M3: 8, F8E5M2: 8, F8E8M0: 8, F8E4M3FNUZ: 8, F8E5M2FNUZ: 8,
	F6E2M3: 6, F6E3M2: 6, F4: 4,
}

// Bits is the width of one element in bits, or 0 for a dtype this package
// does not know.
func (d DType) Bits() int { return dtypeBits[d] }

// convertible reports whether Float32 and Write handle d.
func (d DType) convertible() bool { return d == F32 || d == F16 || d == BF16 }

// BF16ToFloat32 widens a bfloat16 bit pattern; every value, NaNs included,
// is exact in float32.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToBF16 rounds f to the nearest bfloat16, ties to even. Values past
// the largest bfloat16 round to infinity; NaN stays NaN (quieted, sign and
// top payload bits kept).
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: rounding could carry it into Inf
		return uint16(b>>16) | 0x0040
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

// F16ToFloat32 widens an IEEE half-precision bit pattern exactly, subnormals,
// infinities and NaN payloads included.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf, NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal mant·2⁻²⁴: shift the leading one up to the implicit bit.
	shift := uint32(bits.LeadingZeros32(mant) - 21)
	mant <<= shift
	return math.Float32frombits(sign | (127-14-shift)<<23 | (mant&0x3ff)<<13)
}

// Float32ToF16 rounds f to the nearest IEEE half, ties to even. Magnitudes
// that round past 65504 become infinity, those below half the smallest
// subnormal become (signed) zero, and NaN stays NaN (quieted, sign and top
// payload bits kept).
func Float32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}
	e := exp - 127 + 15 // half's biased exponent
	switch {
	case e >= 0x1f:
		return sign | 0x7c00
	case e <= 0:
		// Half subnormal (or zero): the result is M·2^(e-14) units of 2⁻²⁴
		// where M includes the implicit one.
		if e < -10 { // below 2⁻²⁵, half the smallest subnormal
			return sign
		}
		m := mant | 0x800000
		shift := uint(14 - e)
		return sign | uint16(roundShift(m, shift))
	}
	// A carry out of the mantissa bumps the exponent, up to Inf: that is the
	// right rounding too.
	return sign | uint16(roundShift(uint32(e)<<23|mant, 13))
}

// roundShift is v >> s rounded to nearest, ties to even; 1 <= s <= 31.
func roundShift(v uint32, s uint) uint32 {
	q := v >> s
	rem := v & (1<<s - 1)
	half := uint32(1) << (s - 1)
	if rem > half || rem == half && q&1 == 1 {
		q++
	}
	return q
}
