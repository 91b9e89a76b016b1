package model

import (
	"context"
	"fmt"
	"math"

	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/shm"
)

// Model is a loaded Llama-family model bound to a backend. Forward may be
// called by one goroutine at a time.
type Model struct {
	Config  *Config
	b       kernels.Backend
	w       *weights
	invFreq []float32
	scale   float32
}

func newModel(c *Config, b kernels.Backend, w *weights) *Model {
	return &Model{Config: c, b: b, w: w, invFreq: c.InvFreq(), scale: float32(1 / math.Sqrt(float64(c.HeadDim)))}
}

// Backend is the backend the weights live on.
func (m *Model) Backend() kernels.Backend { return m.b }

// Cache is the KV pool a forward pass reads and writes: layer-blocks laid
// out by Layout. Who allocates blocks is the caller's business (kvd); the
// forward pass only follows the slots and tables of a Batch.
type Cache struct {
	Pool   *kernels.Tensor // [Layout.PoolElems()]
	Layout shm.Layout
}

// Seq is one sequence's share of a step: its new tokens, the first of which
// sits at position Pos.
type Seq struct {
	Tokens []int32
	Pos    int
}

// LayerKV is one layer's cache plan for a step: the slot of each new token
// (in step order) and the attention tables (QIndptr is filled by Forward).
type LayerKV struct {
	Slots []int32
	Attn  kernels.AttnBatch
}

// Batch is one forward step over several sequences at different positions.
type Batch struct {
	Seqs   []Seq
	Layers []LayerKV // [NumLayers]
	// LogitRows selects the step tokens (indices into the concatenation of
	// all Seqs' Tokens) whose next-token logits are returned.
	LogitRows []int32
}

// Forward runs one step and returns logits [len(LogitRows), VocabSize].
func (m *Model) Forward(ctx context.Context, bt *Batch, cache *Cache) ([]float32, error) {
	c, b, w := m.Config, m.b, m.w
	ids, pos, qIndptr, err := m.flatten(bt)
	if err != nil {
		return nil, err
	}
	if len(bt.Layers) != c.NumLayers {
		return nil, fmt.Errorf("forward: %d layer plans for %d layers", len(bt.Layers), c.NumLayers)
	}
	T := len(ids)
	d, f := c.HiddenSize, c.IntermediateSize
	qd, kvd := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	x, h := b.Alloc(T, d), b.Alloc(T, d)
	qkv := b.Alloc(T, qd+2*kvd)
	q, k, v := b.Alloc(T, qd), b.Alloc(T, kvd), b.Alloc(T, kvd)
	attn := b.Alloc(T, qd)
	gu, act := b.Alloc(T, 2*f), b.Alloc(T, f)
	eps := float32(c.RMSNormEps)

	b.Embedding(x, w.embed, ids)
	for i := range w.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l, plan := &w.layers[i], &bt.Layers[i]
		plan.Attn.QIndptr = qIndptr
		if len(plan.Slots) != T {
			return nil, fmt.Errorf("forward: layer %d: %d slots for %d tokens", i, len(plan.Slots), T)
		}
		if err := plan.Attn.Validate(T, cache.Layout); err != nil {
			return nil, fmt.Errorf("forward: layer %d: %w", i, err)
		}
		b.RMSNorm(h, x, l.attnNorm, eps)
		b.Linear(qkv, h, l.qkv)
		b.Columns(q, qkv, 0)
		b.Columns(k, qkv, qd)
		b.Columns(v, qkv, qd+kvd)
		b.RoPE(q, c.NumHeads, pos, m.invFreq)
		b.RoPE(k, c.NumKVHeads, pos, m.invFreq)
		b.WriteKV(cache.Pool, cache.Layout, k, v, plan.Slots)
		b.Attention(attn, q, cache.Pool, cache.Layout, &plan.Attn, m.scale)
		b.Linear(h, attn, l.o)
		b.Add(x, h)
		b.RMSNorm(h, x, l.mlpNorm, eps)
		b.Linear(gu, h, l.gateUp)
		b.SiLUMul(act, gu)
		b.Linear(h, act, l.down)
		b.Add(x, h)
	}
	return m.logits(x, bt.LogitRows)
}

// logits applies the final norm and the LM head to the selected rows of x.
func (m *Model) logits(x *kernels.Tensor, rows []int32) ([]float32, error) {
	b, c := m.b, m.Config
	for _, r := range rows {
		if r < 0 || int(r) >= x.Rows() {
			return nil, fmt.Errorf("forward: logit row %d outside the step's %d tokens", r, x.Rows())
		}
	}
	out := make([]float32, len(rows)*c.VocabSize)
	if len(rows) == 0 {
		return out, nil
	}
	sel, normed := b.Alloc(len(rows), c.HiddenSize), b.Alloc(len(rows), c.HiddenSize)
	b.Gather(sel, x, rows)
	b.RMSNorm(normed, sel, m.w.norm, float32(c.RMSNormEps))
	lg := b.Alloc(len(rows), c.VocabSize)
	b.Linear(lg, normed, m.w.lmHead)
	b.ToHost(out, lg)
	return out, nil
}

// flatten concatenates the step's tokens and positions, checking ids.
func (m *Model) flatten(bt *Batch) (ids, pos, qIndptr []int32, err error) {
	qIndptr = make([]int32, 1, len(bt.Seqs)+1)
	for si, s := range bt.Seqs {
		for j, t := range s.Tokens {
			if t < 0 || int(t) >= m.Config.VocabSize {
				return nil, nil, nil, fmt.Errorf("forward: sequence %d: token %d outside vocabulary of %d", si, t, m.Config.VocabSize)
			}
			ids = append(ids, t)
			pos = append(pos, int32(s.Pos+j))
		}
		qIndptr = append(qIndptr, int32(len(ids)))
	}
	if len(ids) == 0 {
		return nil, nil, nil, fmt.Errorf("forward: empty batch")
	}
	return ids, pos, qIndptr, nil
}
