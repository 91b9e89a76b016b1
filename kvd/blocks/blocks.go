// Package blocks is kvd's block allocator: it hands out layer-blocks of the
// pool, keeps one block table per (sequence, layer), counts references to
// shared blocks, and turns a step's new tokens into slot mappings and
// attention tables for the forward pass.
//
// It owns ids, never memory: the pool itself lives in shm (host) or on the
// device, laid out by shm.Layout. blocks must not import kernels or ipc.
package blocks

import (
	"errors"
	"fmt"

	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

// Sentinel errors the scheduler can act on.
var (
	ErrPoolExhausted = errors.New("pool exhausted")
	ErrUnknownSeq    = errors.New("unknown sequence")
	ErrSeqExists     = errors.New("sequence already open")
)

// SeqID names a sequence.
type SeqID uint64

// Allocator hands out layer-blocks from a free list. Block 0 is the null
// block and is never handed out. A block may sit in several tables (a shared
// prefix, see Fork); it returns to the free list when its last table lets it
// go. Not safe for concurrent use: kvd serialises calls.
type Allocator struct {
	layout shm.Layout
	*Tables
	free []int32 // stack of free block ids; never grows past its capacity
	refs []int32 // [NumBlocks] tables holding each block

	stepNo  uint64    // Reserve's count, to spot a sequence twice in a step
	scratch [][]table // Reserve's: the step's sequences' tables
}

// New returns an allocator over every block of l but block 0, for a model
// whose layers follow spec.
func New(l shm.Layout, spec policy.Spec) (*Allocator, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	if len(spec) < 1 {
		return nil, fmt.Errorf("blocks: %d layers", len(spec))
	}
	a := &Allocator{layout: l, Tables: NewTables(spec, l.BlockSize), refs: make([]int32, l.NumBlocks)}
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
func (a *Allocator) Open(id SeqID) error { return a.Add(id) }

// Close drops the sequence's tables; blocks no other table holds go back to
// the pool.
func (a *Allocator) Close(id SeqID) error {
	ts, err := a.Remove(id)
	if err != nil {
		return err
	}
	for _, t := range ts {
		for i := len(t.blocks) - 1; i >= 0; i-- {
			a.release(t.blocks[i])
		}
	}
	return nil
}

func (a *Allocator) release(id int32) {
	a.refs[id]--
	if a.refs[id] == 0 {
		a.free = append(a.free, id)
	}
}

// Fork opens dst sharing src's full blocks in every layer (a common prefix):
// dst holds the tokens of those blocks and nothing more. The shared blocks
// are read-only by convention: appends only ever write past them.
func (a *Allocator) Fork(src, dst SeqID) error {
	for l, p := range a.spec {
		if p.Decode != "" {
			// Compaction moves entries within a table's blocks: shared
			// blocks would change under the other sequence.
			return fmt.Errorf("fork: layer %d (%s) evicts by compacting its blocks, which cannot be shared", l, p)
		}
	}
	st, ok := a.seqs[src]
	if !ok {
		return fmt.Errorf("sequence %d: %w", src, ErrUnknownSeq)
	}
	if err := a.Add(dst); err != nil {
		return err
	}
	dt := a.seqs[dst]
	for l := range st {
		full := st[l].tokens / a.blockSize
		dt[l].blocks = append([]int32(nil), st[l].blocks[:full]...)
		dt[l].tokens = full * a.blockSize
		for _, id := range dt[l].blocks {
			a.refs[id]++
		}
	}
	return nil
}

// Refs is the number of tables holding block id.
func (a *Allocator) Refs(id int32) int { return int(a.refs[id]) }

// Reserve appends the step's tokens to every layer of their sequences and
// returns the blocks it added. It is all or nothing: if the pool cannot hold
// the whole step, nothing changes and the error wraps ErrPoolExhausted. A
// sequence may appear once per step.
func (a *Allocator) Reserve(step []Append) (*Delta, error) {
	a.stepNo++
	for _, s := range step {
		ts, ok := a.seqs[s.Seq]
		switch {
		case !ok:
			return nil, fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		case s.N < 0:
			return nil, fmt.Errorf("sequence %d: negative token count %d", s.Seq, s.N)
		case ts[0].mark == a.stepNo:
			return nil, fmt.Errorf("sequence %d appears twice in one step", s.Seq)
		}
		ts[0].mark = a.stepNo
	}
	// One pass that takes blocks as it goes (a step's cost is this loop
	// over every (sequence, layer)); if the pool runs dry, undo it.
	d := &Delta{}
	for i, s := range step {
		ts := a.seqs[s.Seq]
		for l := range ts {
			t := &ts[l]
			t.last = a.kept(l, t, s.N)
			t.tokens += t.last
			for len(t.blocks)*a.blockSize < t.tokens {
				if len(a.free) == 0 {
					err := fmt.Errorf("step needs more than the %d free blocks: %w", len(d.Added), ErrPoolExhausted)
					a.undo(step, i, l, d)
					return nil, err
				}
				id := a.free[len(a.free)-1]
				a.free = a.free[:len(a.free)-1]
				a.refs[id] = 1
				t.blocks = append(t.blocks, id)
				d.Added = append(d.Added, Added{Pos: uint32(i*a.layers + l), Block: id})
			}
		}
	}
	return d, nil
}

// undo reverses a Reserve that ran out of blocks at append failI, layer
// failL: the tables it extended give their tokens back and the blocks it
// took return, last first.
func (a *Allocator) undo(step []Append, failI, failL int, d *Delta) {
	for i := 0; i <= failI; i++ {
		ts := a.seqs[step[i].Seq]
		for l := range ts {
			if i == failI && l > failL {
				break
			}
			ts[l].tokens -= ts[l].last
			ts[l].last = 0
		}
	}
	for k := len(d.Added) - 1; k >= 0; k-- {
		ad := d.Added[k]
		t := &a.seqs[step[ad.Pos/uint32(a.layers)].Seq][ad.Pos%uint32(a.layers)]
		t.blocks = t.blocks[:len(t.blocks)-1]
		a.refs[ad.Block] = 0
		a.free = append(a.free, ad.Block)
	}
}

// Truncate drops tokens beyond n from every layer of the sequence (a step
// rolled back), returning blocks no other table holds to the pool.
func (a *Allocator) Truncate(id SeqID, n int) error {
	freed, err := a.Tables.Truncate(id, n)
	for _, b := range freed {
		a.release(b)
	}
	return err
}

// Rollback removes what the last step added to every layer of the
// sequence: the rollback of a step that reserved slots but never ran.
// Unknown sequences (closed meanwhile) are ignored.
func (a *Allocator) Rollback(id SeqID) {
	for _, b := range a.Unappend(id) {
		a.release(b)
	}
}

// Shrink cuts a table down after eviction compacted its tokens into the
// first blocks, releasing the emptied blocks (to the pool unless another
// table shares them); it reports how many blocks left the table.
func (a *Allocator) Shrink(id SeqID, layer, tokens int) (int, error) {
	freed, err := a.Tables.Shrink(id, layer, tokens)
	for _, b := range freed {
		a.release(b)
	}
	return len(freed), err
}
