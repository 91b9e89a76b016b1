// Package runner drives the model over a paged KV cache: it asks the block
// allocator for slots, builds each step's batch, runs the forward pass and
// tracks every sequence's position. The scheduler (issue C) decides what
// goes into a step; the runner only executes it.
//
// runner must not import the HTTP layer.
package runner

import (
	"context"
	"fmt"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/shm"
)

// Runner owns an in-process KV pool (the embedded mode; kvd's shared pool
// replaces it in sidecar mode). Not safe for concurrent use.
type Runner struct {
	m     *model.Model
	alloc *blocks.Allocator
	cache *model.Cache
	pos   map[blocks.SeqID]int // tokens seen, which is the next position
}

// New makes a pool of numBlocks layer-blocks of blockSize tokens for m.
func New(m *model.Model, numBlocks, blockSize int) (*Runner, error) {
	c := m.Config
	l := shm.Layout{NumBlocks: numBlocks, BlockSize: blockSize, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim}
	a, err := blocks.New(l, c.NumLayers)
	if err != nil {
		return nil, err
	}
	return &Runner{
		m:     m,
		alloc: a,
		cache: &model.Cache{Pool: m.Backend().Alloc(l.PoolElems()), Layout: l},
		pos:   map[blocks.SeqID]int{},
	}, nil
}

// BlocksFor returns how many layer-blocks hold n tokens of context in every
// layer: a pool-sizing helper.
func BlocksFor(c *model.Config, n, blockSize int) int {
	return c.NumLayers*((n+blockSize-1)/blockSize) + 1
}

// Model is the runner's model.
func (r *Runner) Model() *model.Model { return r.m }

// FreeBlocks is the number of unused layer-blocks.
func (r *Runner) FreeBlocks() int { return r.alloc.Free() }

// Open starts a sequence.
func (r *Runner) Open(id blocks.SeqID) error {
	if err := r.alloc.Open(id); err != nil {
		return err
	}
	r.pos[id] = 0
	return nil
}

// Close ends a sequence and frees its blocks.
func (r *Runner) Close(id blocks.SeqID) error {
	delete(r.pos, id)
	return r.alloc.Close(id)
}

// Work is one sequence's share of a step.
type Work struct {
	Seq    blocks.SeqID
	Tokens []int32
	// AllLogits asks for logits after every token (prompt log-probs);
	// otherwise only after the last.
	AllLogits bool
}

// Step runs one forward pass and returns each Work's logits:
// [rows, VocabSize] where rows is len(Tokens) or 1.
func (r *Runner) Step(ctx context.Context, work []Work) ([][]float32, error) {
	appends := make([]blocks.Append, len(work))
	bt := &model.Batch{Seqs: make([]model.Seq, len(work))}
	row := int32(0)
	for i, w := range work {
		pos, ok := r.pos[w.Seq]
		if !ok {
			return nil, fmt.Errorf("sequence %d: %w", w.Seq, blocks.ErrUnknownSeq)
		}
		if len(w.Tokens) == 0 {
			return nil, fmt.Errorf("sequence %d: no tokens in step", w.Seq)
		}
		appends[i] = blocks.Append{Seq: w.Seq, N: len(w.Tokens)}
		bt.Seqs[i] = model.Seq{Tokens: w.Tokens, Pos: pos}
		first := row
		row += int32(len(w.Tokens))
		if w.AllLogits {
			for j := first; j < row; j++ {
				bt.LogitRows = append(bt.LogitRows, j)
			}
		} else {
			bt.LogitRows = append(bt.LogitRows, row-1)
		}
	}
	if _, err := r.alloc.Reserve(appends); err != nil {
		return nil, err
	}
	plans, err := r.alloc.Plan(appends)
	if err != nil {
		return nil, err
	}
	bt.Layers = make([]model.LayerKV, len(plans))
	for l, p := range plans {
		bt.Layers[l] = model.LayerKV{Slots: p.Slots, Attn: kernels.AttnBatch{KVLen: p.KVLen, BlockIndptr: p.BlockIndptr, Blocks: p.Blocks}}
	}
	logits, err := r.m.Forward(ctx, bt, r.cache)
	if err != nil {
		// Roll the tables back so a failed step leaves no half-written tokens.
		for _, w := range work {
			_ = r.alloc.Truncate(w.Seq, r.pos[w.Seq])
		}
		return nil, err
	}
	v := r.m.Config.VocabSize
	out := make([][]float32, len(work))
	off := 0
	for i, w := range work {
		n := 1
		if w.AllLogits {
			n = len(w.Tokens)
		}
		out[i] = logits[off*v : (off+n)*v]
		off += n
		r.pos[w.Seq] += len(w.Tokens)
	}
	return out, nil
}

// Argmax is greedy sampling: the index of the largest logit.
func Argmax(logits []float32) int32 {
	best := 0
	for i, x := range logits {
		if x > logits[best] {
			best = i
		}
	}
	return int32(best)
}

// Greedy prefills prompt as one sequence and decodes up to maxTokens tokens
// greedily, stopping after any token in stop. It returns the new tokens.
func (r *Runner) Greedy(ctx context.Context, id blocks.SeqID, prompt []int32, maxTokens int, stop []int32, emit func(int32)) ([]int32, error) {
	if err := r.Open(id); err != nil {
		return nil, err
	}
	defer r.Close(id)
	var out []int32
	next := prompt
	for len(out) < maxTokens {
		lg, err := r.Step(ctx, []Work{{Seq: id, Tokens: next}})
		if err != nil {
			return out, err
		}
		t := Argmax(lg[0])
		out = append(out, t)
		if emit != nil {
			emit(t)
		}
		for _, s := range stop {
			if t == s {
				return out, nil
			}
		}
		next = []int32{t}
	}
	return out, nil
}
