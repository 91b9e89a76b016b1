package model

import (
	"context"
	"fmt"
	"math"
)

// Reference recomputes one whole sequence without any cache and returns the
// logits after every token, [len(tokens), VocabSize]. It uses the backend
// only for the per-token operations (norms, GEMMs, RoPE, MLP) and does its
// own dense causal attention in plain loops: it is the oracle the cached,
// paged path is tested against, so it shares none of that path's code.
func (m *Model) Reference(ctx context.Context, tokens []int32) ([]float32, error) {
	c, b, w := m.Config, m.b, m.w
	T := len(tokens)
	if T == 0 {
		return nil, fmt.Errorf("reference: no tokens")
	}
	for _, t := range tokens {
		if t < 0 || int(t) >= c.VocabSize {
			return nil, fmt.Errorf("reference: token %d outside vocabulary of %d", t, c.VocabSize)
		}
	}
	hd := c.HeadDim
	qd, kvd := c.NumHeads*hd, c.NumKVHeads*hd
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(i)
	}
	x, sc := b.Alloc(T, c.HiddenSize), m.newScratch(T)
	qh, kh, vh := make([]float32, T*qd), make([]float32, T*kvd), make([]float32, T*kvd)
	oh := make([]float32, T*qd)
	group := c.NumHeads / c.NumKVHeads

	b.Embedding(x, w.embed, tokens)
	for i := range w.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &w.layers[i]
		m.attnInput(sc, x, l, pos)
		b.ToHost(qh, sc.q)
		b.ToHost(kh, sc.k)
		b.ToHost(vh, sc.v)
		for t := range T {
			for hh := range c.NumHeads {
				kv := hh / group
				qv := qh[(t*c.NumHeads+hh)*hd:][:hd]
				s := make([]float64, t+1)
				mx := math.Inf(-1)
				for j := 0; j <= t; j++ {
					kj := kh[(j*c.NumKVHeads+kv)*hd:][:hd]
					var dot float64
					for e := range qv {
						dot += float64(qv[e]) * float64(kj[e])
					}
					s[j] = dot / math.Sqrt(float64(hd))
					mx = math.Max(mx, s[j])
				}
				var sum float64
				for j := range s {
					s[j] = math.Exp(s[j] - mx)
					sum += s[j]
				}
				o := oh[(t*c.NumHeads+hh)*hd:][:hd]
				for e := range o {
					var acc float64
					for j := range s {
						acc += s[j] / sum * float64(vh[(j*c.NumKVHeads+kv)*hd+e])
					}
					o[e] = float32(acc)
				}
			}
		}
		m.attnOutputAndMLP(sc, x, b.FromHost(oh, T, qd), l)
		oh = make([]float32, T*qd) // the CPU backend aliased the last one
	}
	rows := make([]int32, T)
	for i := range rows {
		rows[i] = int32(i)
	}
	lg, _, err := m.logits(x, rows, nil, nil, nil)
	return lg, err
}
