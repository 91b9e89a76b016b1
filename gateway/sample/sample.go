// Package sample turns one sequence's next-token logits into a token and
// log-probabilities the way vLLM's sampler does (temperature, then top-k,
// then top-p over the renormalised top-k, then one draw), and filters
// streamed text for OpenAI stop strings.
//
// Everything here is plain Go over []float32 of one vocabulary row
// ([vocab]); nothing panics on bad numbers: NaN logits count as -Inf,
// out-of-range parameters are clamped, and a Sampler reuses its scratch
// buffers so that sampling a token allocates nothing.
package sample

import (
	crand "crypto/rand"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
)

// greedyEps is the temperature below which sampling is argmax; vLLM uses the
// same bound (_SAMPLING_EPS) because logits/T overflows for smaller T.
const greedyEps = 1e-5

// seedStream is PCG's second seed word. Fixed, so that a request's Seed alone
// decides its draws.
const seedStream = 0x9e3779b97f4a7c15

// Params are one request's sampling settings. The API layer validates them;
// New clamps whatever gets through instead of failing.
type Params struct {
	Temperature float32 // 0 (or anything below 1e-5, or NaN) = greedy
	TopP        float32 // (0,1]; 1 = off; 0, NaN and values outside are off
	TopK        int     // <= 0 = off (vLLM uses -1); >= vocab is off too
	Seed        *uint64 // nil = seeded from crypto/rand once per Sampler
}

// Sampler holds one request's random state and scratch buffers. A request
// with a Seed draws the same tokens every run given the same logits,
// whatever other requests do, because nothing is shared between Samplers.
//
// A Sampler belongs to one request and is not safe for concurrent use.
type Sampler struct {
	greedy bool
	invT   float64 // 1/temperature
	topP   float64 // 1 = off
	topK   int     // 0 = off
	rng    *rand.Rand

	w       []float32                                 // [vocab] unnormalised probabilities, full-vocabulary paths
	cand    []cand                                    // top-k heap, then kept candidates best first
	buckets [1 << (level1Shift - level2Shift)]float64 // top-p histograms
}

// cand is a candidate token: v is its raw logit while top-k selects, its
// unnormalised probability afterwards.
type cand struct {
	v  float32
	id int32
}

// New returns a Sampler for one request.
func New(p Params) *Sampler {
	s := &Sampler{topP: 1}
	t := float64(p.Temperature)
	switch {
	case !(t >= greedyEps): // also NaN
		s.greedy = true
	case math.IsInf(t, 1):
		s.invT = 1 / math.MaxFloat32
	default:
		s.invT = 1 / t
	}
	if tp := float64(p.TopP); tp > 0 && tp < 1 {
		s.topP = tp
	}
	if p.TopK > 0 {
		s.topK = p.TopK
	}
	if s.topK == 1 {
		s.greedy = true // the one kept token is the argmax; no draw needed
	}
	var seed, stream uint64 = 0, seedStream
	if p.Seed != nil {
		seed = *p.Seed
	} else {
		var b [16]byte
		crand.Read(b[:]) // never fails since Go 1.24
		seed, stream = binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
	}
	s.rng = rand.New(rand.NewPCG(seed, stream))
	return s
}

// Greedy says the sampler always takes the argmax (temperature 0, or top-k 1).
func (s *Sampler) Greedy() bool { return s.greedy }

// Sample picks the next token from logits [vocab] without modifying them.
// Greedy is argmax with the lowest index on ties. Otherwise it scales by
// 1/temperature, keeps the top-k, keeps the smallest prefix whose
// probability reaches top_p (at least one token), renormalises and draws
// once from the Sampler's rng.
//
// NaN logits count as -Inf; if some logits are +Inf, the draw is uniform
// over them; if all are -Inf, uniform over all. An empty vocabulary gives -1.
func (s *Sampler) Sample(logits []float32) int32 {
	n := len(logits)
	switch {
	case n == 0:
		return -1
	case s.greedy:
		return argmax(logits)
	case s.topK > 0 && s.topK < n:
		c := s.topKCands(logits)
		total := toWeights(c, s.invT)
		if s.topP < 1 {
			c, total = cutTopP(c, total, s.topP)
		}
		return s.pick(c, total)
	case s.topP < 1:
		last, total := s.topPCut(logits)
		return s.pickPrefix(logits, last, total)
	default:
		total := s.weights(logits)
		return s.pickFull(s.w, total)
	}
}

// argmax returns the index of the largest logit, lowest on ties, NaN as -Inf.
func argmax(logits []float32) int32 {
	best, at := float32(math.Inf(-1)), 0
	for i, v := range logits {
		if v > best { // false for NaN
			best, at = v, i
		}
	}
	return int32(at)
}

// maxLogit returns the largest logit, NaN as -Inf.
func maxLogit(logits []float32) float32 {
	m := float32(math.Inf(-1))
	for _, v := range logits {
		if v > m {
			m = v
		}
	}
	return m
}

// weights fills s.w [vocab] with the unnormalised probabilities of logits at
// the Sampler's temperature and returns their sum.
func (s *Sampler) weights(logits []float32) float64 {
	return expRow(s.scratchW(len(logits)), logits, maxLogit(logits), s.invT)
}

func (s *Sampler) scratchW(n int) []float32 {
	if cap(s.w) < n {
		s.w = make([]float32, n)
	}
	s.w = s.w[:n]
	return s.w
}

// pickFull draws an index of w [vocab] with probability w[i]/total.
func (s *Sampler) pickFull(w []float32, total float64) int32 {
	u := s.rng.Float64() * total
	var cum float64
	last := -1
	for i, x := range w {
		if x > 0 {
			cum += float64(x)
			last = i
			if u < cum {
				return int32(i)
			}
		}
	}
	// Rounding left u past the sum: the last token that had any mass.
	return int32(max(last, 0))
}

// pick draws one of the kept candidates c (weights in v) with probability
// v/total.
func (s *Sampler) pick(c []cand, total float64) int32 {
	if len(c) == 0 {
		return 0 // not reached: the maximum always weighs 1
	}
	u := s.rng.Float64() * total
	var cum float64
	last := 0
	for i, x := range c {
		if x.v > 0 {
			cum += float64(x.v)
			last = i
			if u < cum {
				return x.id
			}
		}
	}
	return c[last].id
}

// better orders candidates best first: higher value, then lower token id.
func better(a, b cand) bool {
	return a.v > b.v || (a.v == b.v && a.id < b.id)
}

func compareCands(a, b cand) int {
	switch {
	case better(a, b):
		return -1
	case better(b, a):
		return 1
	}
	return 0
}

// topKCands returns the k highest logits as candidates, best first (raw
// logits in v). It keeps a min-heap of the best k seen, so a pass over the
// vocabulary is one compare per token once the heap is warm.
func (s *Sampler) topKCands(logits []float32) []cand {
	s.cand = selectTop(s.cand[:0], logits, s.topK)
	slices.SortFunc(s.cand, compareCands)
	return s.cand
}

// selectTop appends to h the k best (value, index) pairs of vals, in heap
// order, NaN as -Inf. Precondition: 0 < k <= len(vals).
func selectTop(h []cand, vals []float32, k int) []cand {
	for i, v := range vals[:k] {
		if v != v {
			v = float32(math.Inf(-1))
		}
		h = append(h, cand{v, int32(i)})
		siftUp(h, len(h)-1)
	}
	// Indices only grow, so an equal value never beats the root; NaN fails
	// the compare too. Keeping the root's value in a register makes this
	// one compare per token.
	floor := h[0].v
	for i, v := range vals[k:] {
		if v > floor {
			h[0] = cand{v, int32(k + i)}
			siftDown(h, 0)
			floor = h[0].v
		}
	}
	return h
}

// The heap keeps the worst candidate at the root.
func siftUp(h []cand, i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !better(h[p], h[i]) {
			return
		}
		h[p], h[i] = h[i], h[p]
		i = p
	}
}

func siftDown(h []cand, i int) {
	n := len(h)
	for {
		worst, l, r := i, 2*i+1, 2*i+2
		if l < n && better(h[worst], h[l]) {
			worst = l
		}
		if r < n && better(h[worst], h[r]) {
			worst = r
		}
		if worst == i {
			return
		}
		h[i], h[worst] = h[worst], h[i]
		i = worst
	}
}

// toWeights turns the raw logits of c (best first) into unnormalised
// probabilities at temperature 1/invT and returns their sum.
func toWeights(c []cand, invT float64) float64 {
	m := c[0].v
	var total float64
	for i := range c {
		c[i].v = weight(c[i].v, m, invT)
		total += float64(c[i].v)
	}
	return total
}

// cutTopP keeps the shortest prefix of c (weights, best first) whose weight
// reaches p*total, at least one candidate, and returns it with its weight.
func cutTopP(c []cand, total, p float64) ([]cand, float64) {
	want := p * total
	var cum float64
	for i, x := range c {
		cum += float64(x.v)
		if cum >= want {
			return c[:i+1], cum
		}
	}
	return c, cum // rounding: keep everything
}

// Top-p without top-k is a radix select over the float32 bits of the
// weights, which order like the weights since they are non-negative: a
// histogram of mass per bucket of the top bits finds the bucket where the
// cumulative mass from the top reaches p; everything above it is kept
// unsorted, and only the tokens of that bucket go on, to the next bits,
// until few enough remain to sort. No pass sorts the vocabulary.
const (
	level1Shift = 21 // sign, exponent and two mantissa bits
	level2Shift = 10
	level2Mask  = 1<<(level1Shift-level2Shift) - 1
	level3Mask  = 1<<level2Shift - 1
	nBuckets    = 0x3f800000>>level1Shift + 1 // up to the bucket of 1.0
	sortBelow   = 256                         // candidates sorted directly
)

// topPCut finds the last token kept by top-p in (logit descending, id
// ascending) order, which every kept token precedes, and the kept weight.
// It leaves every token's weight in s.w.
func (s *Sampler) topPCut(logits []float32) (last cand, kept float64) {
	m := maxLogit(logits)
	w := s.scratchW(len(logits))
	total := expRow(w, logits, m, s.invT)
	hist := s.buckets[:nBuckets]
	clear(hist)
	for _, x := range w {
		hist[math.Float32bits(x)>>level1Shift] += float64(x)
	}
	want := s.topP * total
	b, above := findBucket(hist, 0, want)
	c := s.cand[:0]
	for i, x := range w {
		if math.Float32bits(x)>>level1Shift == uint32(b) {
			c = append(c, cand{logits[i], int32(i)})
		}
	}
	if len(c) == 0 {
		return cand{m, argmax(logits)}, 1 // not reached: the maximum weighs 1
	}
	if len(c) > sortBelow {
		c, above = s.narrow(c, above, want, level2Shift, level2Mask)
	}
	if len(c) > sortBelow {
		c, above = s.narrow(c, above, want, 0, level3Mask)
	}
	s.cand = c
	// Sort by logit, not weight: distinct logits can round to one weight,
	// and the order among those must not depend on that rounding.
	for i := range c {
		if c[i].v != c[i].v {
			c[i].v = float32(math.Inf(-1))
		}
	}
	slices.SortFunc(c, compareCands)
	cum := above
	for _, x := range c {
		cum += float64(w[x.id])
		if cum >= want {
			return x, cum
		}
	}
	return c[len(c)-1], cum // rounding: keep the whole bucket
}

// narrow keeps the candidates c of the bucket, by the weight bits under
// mask after shift, where the mass from the top reaches want, and returns
// them with the mass above them.
func (s *Sampler) narrow(c []cand, above, want float64, shift, mask uint32) ([]cand, float64) {
	hist := s.buckets[:mask+1]
	clear(hist)
	for _, x := range c {
		wx := s.w[x.id]
		hist[math.Float32bits(wx)>>shift&mask] += float64(wx)
	}
	b, above := findBucket(hist, above, want)
	kept := c[:0]
	for _, x := range c {
		if math.Float32bits(s.w[x.id])>>shift&mask == uint32(b) {
			kept = append(kept, x)
		}
	}
	return kept, above
}

// findBucket returns the highest bucket of hist at which above plus the
// mass from the top reaches want, and the mass above that bucket. If
// rounding keeps it from being reached, the lowest bucket with mass.
func findBucket(hist []float64, above, want float64) (int, float64) {
	last := 0
	for b := len(hist) - 1; b >= 0; b-- {
		h := hist[b]
		if h == 0 {
			continue
		}
		if above+h >= want {
			return b, above
		}
		above += h
		last = b
	}
	return last, above - hist[last]
}

// pickPrefix draws a token among those at or before last in (logit
// descending, id ascending) order, with probability w/kept. It walks the
// vocabulary in id order: the draw need not follow the sort order, only be
// deterministic.
func (s *Sampler) pickPrefix(logits []float32, last cand, kept float64) int32 {
	u := s.rng.Float64() * kept
	var cum float64
	ninf := float32(math.Inf(-1))
	for i, v := range logits {
		if v != v {
			v = ninf
		}
		if v > last.v || (v == last.v && int32(i) <= last.id) {
			cum += float64(s.w[i])
			if u < cum {
				return int32(i)
			}
		}
	}
	return last.id // rounding left u past the sum
}
