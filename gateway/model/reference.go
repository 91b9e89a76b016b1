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
	d, f, hd := c.HiddenSize, c.IntermediateSize, c.HeadDim
	qd, kvd := c.NumHeads*hd, c.NumKVHeads*hd
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(i)
	}
	x, h := b.Alloc(T, d), b.Alloc(T, d)
	qkv, q, k, v := b.Alloc(T, qd+2*kvd), b.Alloc(T, qd), b.Alloc(T, kvd), b.Alloc(T, kvd)
	gu, act := b.Alloc(T, 2*f), b.Alloc(T, f)
	qh, kh, vh := make([]float32, T*qd), make([]float32, T*kvd), make([]float32, T*kvd)
	oh := make([]float32, T*qd)
	eps := float32(c.RMSNormEps)
	group := c.NumHeads / c.NumKVHeads

	b.Embedding(x, w.embed, tokens)
	for i := range w.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l := &w.layers[i]
		b.RMSNorm(h, x, l.attnNorm, eps)
		b.Linear(qkv, h, l.qkv)
		b.Columns(q, qkv, 0)
		b.Columns(k, qkv, qd)
		b.Columns(v, qkv, qd+kvd)
		b.RoPE(q, c.NumHeads, pos, m.invFreq)
		b.RoPE(k, c.NumKVHeads, pos, m.invFreq)
		b.ToHost(qh, q)
		b.ToHost(kh, k)
		b.ToHost(vh, v)
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
		b.Linear(h, b.FromHost(oh, T, qd), l.o)
		oh = make([]float32, T*qd) // the CPU backend aliased the last one
		b.Add(x, h)
		b.RMSNorm(h, x, l.mlpNorm, eps)
		b.Linear(gu, h, l.gateUp)
		b.SiLUMul(act, gu)
		b.Linear(h, act, l.down)
		b.Add(x, h)
	}
	rows := make([]int32, T)
	for i := range rows {
		rows[i] = int32(i)
	}
	return m.logits(x, rows)
}
