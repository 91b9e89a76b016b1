package model

import (
	"context"
	"fmt"
	"math"

	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/policy"
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

// LayerKV is one layer's cache plan for a step: the layer's policy, how
// many tokens each sequence keeps in it, their slots (in step order) and
// the attention tables (QIndptr, ScoreFrom and Skip are filled by Forward).
// A sequence that keeps fewer tokens than it brings is a prompt the layer
// compresses: its attention is computed over the prompt itself, then only
// the tokens the policy selects are written.
type LayerKV struct {
	Policy policy.Layer
	Kept   []int32 // [seqs]; nil keeps every token
	Slots  []int32 // [sum of Kept]
	Attn   kernels.AttnBatch
}

// Batch is one forward step over several sequences at different positions.
type Batch struct {
	Seqs []Seq
	// Layers are the layers' plans, [NumLayers]; or, with Layers nil,
	// LayerPlan gives layer i's as the forward pass reaches it (after
	// launching the layers before, so that building it overlaps their
	// device time), NumLayers of them.
	Layers    []LayerKV
	LayerPlan func(i int) LayerKV
	NumLayers int
	// LogitRows selects the step tokens (indices into the concatenation of
	// all Seqs' Tokens) whose next-token logits are returned.
	LogitRows []int32
	// BeforeWait, when set, runs once every kernel of the step is queued
	// and before the host first waits for the device (ForwardSample): the
	// runner prepares the next step there, while this one runs.
	BeforeWait func()
}

func (bt *Batch) layers() int {
	if bt.Layers == nil && bt.LayerPlan != nil {
		return bt.NumLayers
	}
	return len(bt.Layers)
}

func (bt *Batch) layer(i int) *LayerKV {
	if bt.Layers == nil && bt.LayerPlan != nil {
		lk := bt.LayerPlan(i)
		return &lk
	}
	return &bt.Layers[i]
}

// Forward runs one step and returns logits [len(LogitRows), VocabSize].
func (m *Model) Forward(ctx context.Context, bt *Batch, cache *Cache) ([]float32, error) {
	lg, _, err := m.ForwardSample(ctx, bt, cache, nil, nil)
	return lg, err
}

// Draws asks ForwardSample for tokens drawn where the logits are (the GPU):
// Rows are indices into LogitRows, each drawn under its Params.
type Draws struct {
	Rows   []int32
	Params []kernels.SampleParams
}

// ForwardSample is Forward for a caller that samples: it brings to the host
// only the logits of the rows with host[i] set (nil: every row), in order,
// and draws a token for each of d's rows on the backend.
func (m *Model) ForwardSample(ctx context.Context, bt *Batch, cache *Cache, host []bool, d *Draws) (logits []float32, tokens []int32, err error) {
	if host != nil && len(host) != len(bt.LogitRows) {
		return nil, nil, fmt.Errorf("forward: %d host flags for %d logit rows", len(host), len(bt.LogitRows))
	}
	if d != nil {
		if len(d.Rows) != len(d.Params) {
			return nil, nil, fmt.Errorf("forward: %d draws with %d settings", len(d.Rows), len(d.Params))
		}
		for _, r := range d.Rows {
			if r < 0 || int(r) >= len(bt.LogitRows) {
				return nil, nil, fmt.Errorf("forward: draw from logit row %d of %d", r, len(bt.LogitRows))
			}
		}
	}
	c, b, w := m.Config, m.b, m.w
	ids, pos, qIndptr, err := m.flatten(bt)
	if err != nil {
		return nil, nil, err
	}
	if n := bt.layers(); n != c.NumLayers {
		return nil, nil, fmt.Errorf("forward: %d layer plans for %d layers", n, c.NumLayers)
	}
	T := len(ids)
	x, sc := b.Alloc(T, c.HiddenSize), m.newScratch(T)
	attn := b.Alloc(T, c.NumHeads*c.HeadDim)
	defer sc.free(b, x, attn)

	b.Embedding(x, w.embed, ids)
	for i := range w.layers {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if err := b.Err(); err != nil {
			return nil, nil, fmt.Errorf("forward: layer %d: %w", i, err)
		}
		l := &w.layers[i]
		m.attnInput(sc, x, l, pos)
		// The plan after the layer's first kernels are queued: the device
		// has work while the host builds it.
		plan := bt.layer(i)
		tokSlots, err := m.preparePlan(plan, qIndptr, T, cache.Layout)
		if err != nil {
			return nil, nil, fmt.Errorf("forward: layer %d: %w", i, err)
		}
		b.WriteKV(cache.Pool, cache.Layout, sc.k, sc.v, tokSlots)
		m.sparsePrefills(plan, qIndptr, sc, attn, cache)
		b.Attention(attn, sc.q, cache.Pool, cache.Layout, &plan.Attn, m.scale)
		m.attnOutputAndMLP(sc, x, attn, l)
	}
	return m.logits(x, bt.LogitRows, host, d, bt.BeforeWait)
}

// scratch holds one step's intermediate tensors, [T, ·]. normed and act
// are only ever Linear's inputs (AllocLinearInput: bf16 on CUDA, written
// so by the norms and SiLUMul); gu only the gate and up projections'
// output and SiLUMul's input (AllocGateUp); h takes the o and down
// projections' outputs, which AddRMSNorm and Add read (unless the backend
// adds them to the residual itself: attnOutputAndMLP).
type scratch struct {
	h, normed, qkv, q, k, v, gu, act *kernels.Tensor
}

func (m *Model) newScratch(T int) *scratch {
	c, b := m.Config, m.b
	qd, kvd := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	return &scratch{
		h: b.Alloc(T, c.HiddenSize), normed: b.AllocLinearInput(T, c.HiddenSize), qkv: b.Alloc(T, qd+2*kvd),
		q: b.Alloc(T, qd), k: b.Alloc(T, kvd), v: b.Alloc(T, kvd),
		gu: b.AllocGateUp(T, 2*c.IntermediateSize), act: b.AllocLinearInput(T, c.IntermediateSize),
	}
}

// free gives the scratch and the other step tensors back to b.
func (sc *scratch) free(b kernels.Backend, more ...*kernels.Tensor) {
	for _, t := range append(more, sc.h, sc.normed, sc.qkv, sc.q, sc.k, sc.v, sc.gu, sc.act) {
		b.Free(t)
	}
}

// attnInput leaves the layer's RoPE'd queries and keys, and its values, for
// the hidden states x in sc.q, sc.k, sc.v.
func (m *Model) attnInput(sc *scratch, x *kernels.Tensor, l *layer, pos []int32) {
	c, b := m.Config, m.b
	b.RMSNorm(sc.normed, x, l.attnNorm, float32(c.RMSNormEps))
	b.Linear(sc.qkv, sc.normed, l.qkv)
	b.SplitRoPE(sc.q, sc.k, sc.v, sc.qkv, pos, m.invFreq)
}

// attnOutputAndMLP adds the attention output's projection, then the MLP, to
// the residual stream x: through h and AddRMSNorm and Add, or where the
// backend says so (CUDA, unless KVD_FUSED_RESIDUAL=0) with LinearAdd, the GEMM
// adding its float32 sums to x. The attention output stays float32
// (Linear rounds it for the GEMM): the attention kernels write float32.
func (m *Model) attnOutputAndMLP(sc *scratch, x, attn *kernels.Tensor, l *layer) {
	b, eps := m.b, float32(m.Config.RMSNormEps)
	if f, ok := b.(interface{ FusedResidual() bool }); ok && f.FusedResidual() {
		b.LinearAdd(x, attn, l.o)
		b.RMSNorm(sc.normed, x, l.mlpNorm, eps)
		b.Linear(sc.gu, sc.normed, l.gateUp)
		b.SiLUMul(sc.act, sc.gu)
		b.LinearAdd(x, sc.act, l.down)
		return
	}
	b.Linear(sc.h, attn, l.o)
	b.AddRMSNorm(sc.normed, x, sc.h, l.mlpNorm, eps) // normed cannot be h: a GEMM input may be narrower
	b.Linear(sc.gu, sc.normed, l.gateUp)
	b.SiLUMul(sc.act, sc.gu)
	b.Linear(sc.h, sc.act, l.down)
	b.Add(x, sc.h)
}

// preparePlan checks a layer's plan against the step and fills in what
// Forward owns: the query rows, which sequences SparsePrefill handles, and
// where scores accumulate. It returns each token's slot for WriteKV (-1 for
// the tokens of compressed prompts, which SparsePrefill writes).
func (m *Model) preparePlan(plan *LayerKV, qIndptr []int32, T int, l shm.Layout) ([]int32, error) {
	n := len(qIndptr) - 1
	kept := plan.Kept
	if kept == nil {
		kept = make([]int32, n)
		for s := range kept {
			kept[s] = qIndptr[s+1] - qIndptr[s]
		}
		plan.Kept = kept
	}
	if len(kept) != n {
		return nil, fmt.Errorf("%d kept counts for %d sequences", len(kept), n)
	}
	total := 0
	for _, k := range kept {
		total += int(k)
	}
	if len(plan.Slots) != total {
		return nil, fmt.Errorf("%d slots for %d kept tokens", len(plan.Slots), total)
	}
	a := &plan.Attn
	a.QIndptr, a.Skip, a.ScoreFrom = qIndptr, nil, nil
	p := plan.Policy
	obs := p.ObsWindow
	if obs == 0 {
		obs = policy.DefaultObsWindow
	}
	tokSlots := make([]int32, T)
	next := 0
	for s := range n {
		rows := int(qIndptr[s+1] - qIndptr[s])
		k := int(kept[s])
		switch {
		case k == rows:
			copy(tokSlots[qIndptr[s]:qIndptr[s+1]], plan.Slots[next:next+k])
		case k < rows && p.Selects() && s < len(a.KVLen) && int(a.KVLen[s]) == k:
			if a.Skip == nil {
				a.Skip = make([]bool, n)
			}
			a.Skip[s] = true
			for r := qIndptr[s]; r < qIndptr[s+1]; r++ {
				tokSlots[r] = -1
			}
		default:
			return nil, fmt.Errorf("sequence %d keeps %d of %d tokens under policy %s", s, k, rows, p)
		}
		next += k
		if p.Decode == policy.H2O {
			if a.ScoreFrom == nil {
				a.ScoreFrom = make([]int32, n)
			}
			// A decode token scores at once; a prompt through its
			// observation window.
			a.ScoreFrom[s] = int32(max(0, rows-obs))
		}
	}
	return tokSlots, a.Validate(T, l)
}

// sparsePrefills runs SparsePrefill for the compressed prompts of a layer.
func (m *Model) sparsePrefills(plan *LayerKV, qIndptr []int32, sc *scratch, attn *kernels.Tensor, cache *Cache) {
	if plan.Attn.Skip == nil {
		return
	}
	p := plan.Policy
	sel := kernels.Selection{
		SnapKV: p.Prefill == policy.SnapKV || p.Prefill == policy.Pyramid, Sinks: p.Sinks,
		ObsWindow: max(p.ObsWindow, 1), Kernel: max(p.Kernel, 1), PoolAvg: p.Pool == "avg", GQAMax: p.GQA == "max",
	}
	if !sel.SnapKV {
		sel.ObsWindow = policy.DefaultObsWindow // window layers score their prompt's tail too
	}
	next := 0
	for s, skip := range plan.Attn.Skip {
		k := int(plan.Kept[s])
		if skip {
			sel.Keep = k
			row0, n := int(qIndptr[s]), int(qIndptr[s+1]-qIndptr[s])
			m.b.SparsePrefill(attn, sc.q, sc.k, sc.v, row0, n, cache.Pool, cache.Layout, plan.Slots[next:next+k], sel, m.scale)
		}
		next += k
	}
}

// logits applies the final norm and the LM head to the selected rows of x,
// and returns the rows host asks for (all when nil) and the tokens d draws.
func (m *Model) logits(x *kernels.Tensor, rows []int32, host []bool, d *Draws, beforeWait func()) ([]float32, []int32, error) {
	b, c := m.b, m.Config
	for _, r := range rows {
		if r < 0 || int(r) >= x.Rows() {
			return nil, nil, fmt.Errorf("forward: logit row %d outside the step's %d tokens", r, x.Rows())
		}
	}
	if beforeWait == nil {
		beforeWait = func() {}
	}
	if len(rows) == 0 {
		beforeWait()
		return nil, nil, b.Err()
	}
	sel, normed := b.Alloc(len(rows), c.HiddenSize), b.Alloc(len(rows), c.HiddenSize)
	lg := b.Alloc(len(rows), c.VocabSize)
	defer func() { b.Free(sel); b.Free(normed); b.Free(lg) }()
	b.Gather(sel, x, rows)
	b.RMSNorm(normed, sel, m.w.norm, float32(c.RMSNormEps))
	b.Linear(lg, normed, m.w.lmHead)
	keep := make([]int32, 0, len(rows))
	for i := range rows {
		if host == nil || host[i] {
			keep = append(keep, int32(i))
		}
	}
	// The host's copy first: drawing may write -Inf over suppressed ids.
	// The draw's rows are gathered before the first wait, so that
	// beforeWait comes after every kernel but the draw's own.
	out := make([]float32, len(keep)*c.VocabSize)
	var part *kernels.Tensor
	if len(keep) > 0 && len(keep) < len(rows) {
		part = b.Alloc(len(keep), c.VocabSize)
		defer b.Free(part)
		b.Gather(part, lg, keep)
	}
	drawing := d != nil && len(d.Rows) > 0
	src := lg
	if drawing && (len(d.Rows) != len(rows) || !isIota(d.Rows)) {
		src = b.Alloc(len(d.Rows), c.VocabSize)
		defer b.Free(src)
		b.Gather(src, lg, d.Rows)
	}
	beforeWait()
	switch {
	case len(keep) == len(rows):
		b.ToHost(out, lg)
	case len(keep) > 0:
		b.ToHost(out, part)
	}
	var tokens []int32
	if drawing {
		tokens = make([]int32, len(d.Rows))
		b.Sample(tokens, src, d.Params)
	}
	if err := b.Err(); err != nil {
		return nil, nil, fmt.Errorf("forward: logits: %w", err)
	}
	return out, tokens, nil
}

// isIota says rows is 0, 1, 2, ...
func isIota(rows []int32) bool {
	for i, r := range rows {
		if int(r) != i {
			return false
		}
	}
	return true
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
