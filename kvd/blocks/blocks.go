// Package blocks is kvd's block allocator: it hands out layer-blocks of the
// pool, keeps one block table per (sequence, layer), and turns a step's new
// tokens into slot mappings and attention tables for the forward pass.
//
// It owns ids, never memory: the pool itself lives in shm (host) or on the
// device, laid out by shm.Layout. blocks must not import kernels or ipc.
package blocks

import (
	"errors"
	"fmt"

	"github.com/kvd-project/kvd/shm"
)

// Sentinel errors the scheduler can act on.
var (
	ErrPoolExhausted = errors.New("pool exhausted")
	ErrUnknownSeq    = errors.New("unknown sequence")
	ErrSeqExists     = errors.New("sequence already open")
)

// SeqID names a sequence; the client chooses it.
type SeqID uint64

// table is one (sequence, layer) block table: block ids in order and the
// number of tokens they hold.
type table struct {
	blocks []int32
	tokens int
}

// Allocator hands out layer-blocks from a free list. Block 0 is the null
// block and is never handed out. It is not safe for concurrent use; kvd
// serialises calls.
type Allocator struct {
	layout shm.Layout
	layers int
	free   []int32 // stack of free block ids
	seqs   map[SeqID][]table
}

// New returns an allocator over every block of l but block 0, for a model of
// the given number of layers.
func New(l shm.Layout, layers int) (*Allocator, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if layers < 1 {
		return nil, fmt.Errorf("blocks: %d layers", layers)
	}
	a := &Allocator{layout: l, layers: layers, seqs: map[SeqID][]table{}}
	a.free = make([]int32, 0, l.NumBlocks-1)
	for id := l.NumBlocks - 1; id >= 1; id-- { // pop order 1, 2, 3, ...
		a.free = append(a.free, int32(id))
	}
	return a, nil
}

// Layout is the pool's geometry.
func (a *Allocator) Layout() shm.Layout { return a.layout }

// Free is the number of blocks not in any table.
func (a *Allocator) Free() int { return len(a.free) }

// Total is the number of blocks that can be handed out (the null block
// excluded).
func (a *Allocator) Total() int { return a.layout.NumBlocks - 1 }

// Open starts an empty sequence.
func (a *Allocator) Open(id SeqID) error {
	if _, ok := a.seqs[id]; ok {
		return fmt.Errorf("sequence %d: %w", id, ErrSeqExists)
	}
	a.seqs[id] = make([]table, a.layers)
	return nil
}

// Close returns every block of the sequence to the pool.
func (a *Allocator) Close(id SeqID) error {
	ts, ok := a.seqs[id]
	if !ok {
		return fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	for _, t := range ts {
		for i := len(t.blocks) - 1; i >= 0; i-- {
			a.free = append(a.free, t.blocks[i])
		}
	}
	delete(a.seqs, id)
	return nil
}

// Tokens is the number of tokens the sequence holds in layer.
func (a *Allocator) Tokens(id SeqID, layer int) (int, error) {
	ts, ok := a.seqs[id]
	if !ok {
		return 0, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	return ts[layer].tokens, nil
}

// Need is the number of blocks that appending n tokens to every layer of
// the sequence takes.
func (a *Allocator) need(ts []table, n int) int {
	total := 0
	for _, t := range ts {
		total += a.layout.BlocksFor(t.tokens+n) - len(t.blocks)
	}
	return total
}

// Append is one sequence's share of a step: N new tokens.
type Append struct {
	Seq SeqID
	N   int
}

// LayerPlan is what the forward pass needs for one layer of a step: where
// each new token goes, and what each sequence attends to.
type LayerPlan struct {
	Slots       []int32 // [step tokens] block*BlockSize+offset
	KVLen       []int32 // [seqs]
	BlockIndptr []int32 // [seqs+1]
	Blocks      []int32
}

// Reserve appends the step's tokens to every layer of their sequences and
// returns the per-layer plans. It is all or nothing: if the pool cannot hold
// the whole step, nothing changes and the error wraps ErrPoolExhausted.
func (a *Allocator) Reserve(step []Append) ([]LayerPlan, error) {
	need := 0
	for _, s := range step {
		ts, ok := a.seqs[s.Seq]
		if !ok {
			return nil, fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		}
		if s.N < 0 {
			return nil, fmt.Errorf("sequence %d: negative token count %d", s.Seq, s.N)
		}
		need += a.need(ts, s.N)
	}
	if need > len(a.free) {
		return nil, fmt.Errorf("step needs %d blocks, %d free: %w", need, len(a.free), ErrPoolExhausted)
	}
	plans := make([]LayerPlan, a.layers)
	for l := range plans {
		plans[l].BlockIndptr = append(plans[l].BlockIndptr, 0)
	}
	bs := a.layout.BlockSize
	for _, s := range step {
		ts := a.seqs[s.Seq]
		for l := range ts {
			t := &ts[l]
			for len(t.blocks) < a.layout.BlocksFor(t.tokens+s.N) {
				id := a.free[len(a.free)-1]
				a.free = a.free[:len(a.free)-1]
				t.blocks = append(t.blocks, id)
			}
			p := &plans[l]
			for i := t.tokens; i < t.tokens+s.N; i++ {
				p.Slots = append(p.Slots, t.blocks[i/bs]*int32(bs)+int32(i%bs))
			}
			t.tokens += s.N
			p.KVLen = append(p.KVLen, int32(t.tokens))
			p.Blocks = append(p.Blocks, t.blocks...)
			p.BlockIndptr = append(p.BlockIndptr, int32(len(p.Blocks)))
		}
	}
	return plans, nil
}

// Truncate drops tokens beyond n from every layer of the sequence (used when
// a step's tokens are rolled back), returning emptied blocks to the pool.
func (a *Allocator) Truncate(id SeqID, n int) error {
	ts, ok := a.seqs[id]
	if !ok {
		return fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	for l := range ts {
		t := &ts[l]
		if n >= t.tokens {
			continue
		}
		keep := a.layout.BlocksFor(n)
		for i := len(t.blocks) - 1; i >= keep; i-- {
			a.free = append(a.free, t.blocks[i])
		}
		t.blocks = t.blocks[:keep]
		t.tokens = n
	}
	return nil
}
