package kernels

import (
	"math"
	"slices"
)

// SampleParams are one row's sampling settings for Backend.Sample. The
// draw follows vLLM's order: temperature, then top-k, then top-p over what
// top-k kept, then one draw. Its uniform is a hash of Seed and Step, so a
// request that fixes its seed repeats itself, on either backend, and the
// logits can stay on the device.
type SampleParams struct {
	Temperature float32 // below 1e-5 or NaN: greedy (argmax); +Inf: uniform
	TopK        int     // keep the tokens whose logit is at least the k-th largest (ties included); <= 0 or >= vocab: off
	TopP        float32 // then keep the most likely tokens, by logit, whose mass reaches TopP of the kept mass; outside (0, 1): off
	Seed, Step  uint64  // the draw's uniform: a hash of both
	Suppress    []int32 // token ids whose logits become -Inf first (min_tokens' stop tokens); others are ignored
}

// Greedy says the row is argmax: temperature below 1e-5 (vLLM's bound) or
// NaN, or top-k 1.
func (p SampleParams) Greedy() bool { return !(p.Temperature >= 1e-5) || p.TopK == 1 }

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// uniform is the draw's u in [0, 1) for (seed, step).
func uniform(seed, step uint64) float64 {
	return float64(splitmix64(seed^splitmix64(step))>>11) * 0x1p-53
}

// okey maps a float32 to a uint32 with the same order.
func okey(f float32) uint32 {
	u := math.Float32bits(f)
	if u&0x80000000 != 0 {
		return ^u
	}
	return u | 0x80000000
}

func clean(x float32) float32 {
	if x != x {
		return float32(math.Inf(-1))
	}
	return x
}

// Sample draws dst[r] from logits[r] under params[r]. Suppressed ids'
// logits are overwritten with -Inf (later readers, log-probabilities, see
// them so). NaN counts as -Inf; a row with +Inf logits draws uniformly
// among them, one with nothing above -Inf uniformly over all (greedy: 0).
// The CUDA backend computes the same function (sampling.cu).
func (c *CPU) Sample(dst []int32, logits *Tensor, params []SampleParams) {
	v := logits.Cols()
	for r := range dst {
		row := logits.data[r*v : (r+1)*v]
		for _, id := range params[r].Suppress {
			if id >= 0 && int(id) < v {
				row[id] = float32(math.Inf(-1))
			}
		}
		dst[r] = sampleRow(row, params[r])
	}
}

func sampleRow(row []float32, p SampleParams) int32 {
	v := len(row)
	inf := float32(math.Inf(1))
	m := float32(math.Inf(-1))
	for _, x := range row {
		m = max(m, clean(x))
	}
	u := uniform(p.Seed, p.Step)
	if p.Greedy() || m == -inf {
		if m == -inf {
			if p.Greedy() {
				return 0
			}
			return int32(min(int(u*float64(v)), v-1))
		}
		return int32(slices.IndexFunc(row, func(x float32) bool { return clean(x) == m }))
	}
	invT := 1 / float64(p.Temperature)
	if math.IsInf(float64(p.Temperature), 1) {
		invT = 1 / math.MaxFloat32
	}
	weight := func(x float32) float64 {
		if m == inf {
			if x == inf {
				return 1
			}
			return 0
		}
		if x == -inf {
			return 0
		}
		return math.Exp((float64(x) - float64(m)) * invT)
	}
	var lo uint32 // keep keys >= lo
	if p.TopK > 0 && p.TopK < v && m != inf {
		keys := make([]uint32, v)
		for i, x := range row {
			keys[i] = okey(clean(x))
		}
		slices.Sort(keys)
		lo = keys[v-p.TopK] // the k-th largest
	}
	if p.TopP > 0 && p.TopP < 1 && m != inf {
		type kw struct {
			key uint32
			w   float64
		}
		var kept []kw
		W := 0.0
		for _, x := range row {
			if k := okey(clean(x)); k >= lo {
				w := weight(clean(x))
				kept = append(kept, kw{k, w})
				W += w
			}
		}
		slices.SortFunc(kept, func(a, b kw) int { return int(int64(b.key) - int64(a.key)) })
		want := float64(p.TopP) * W
		s := 0.0
		for i := 0; i < len(kept); {
			j := i
			for ; j < len(kept) && kept[j].key == kept[i].key; j++ {
				s += kept[j].w
			}
			if s >= want {
				lo = kept[i].key
				break
			}
			i = j
		}
	}
	total := 0.0
	last := int32(-1)
	for i, x := range row {
		if okey(clean(x)) >= lo {
			if w := weight(clean(x)); w > 0 {
				total += w
				last = int32(i)
			}
		}
	}
	target, acc := u*total, 0.0
	for i, x := range row {
		if okey(clean(x)) < lo {
			continue
		}
		acc += weight(clean(x))
		if acc > target {
			return int32(i)
		}
	}
	return last
}
