// Package shm owns the memory layouts that kvd and the gateway share: where
// each layer-block's K, V and scores live inside the pool. Both processes
// compute offsets from the same Layout, so the pool needs no per-block
// metadata of its own.
//
// shm must not import kernels, ipc or anything with cgo: it is plain data.
package shm

import (
	"errors"
	"fmt"
)

// ErrLayout reports a geometry that cannot describe a pool.
var ErrLayout = errors.New("invalid pool layout")

// Layout describes a pool of layer-blocks. A layer-block holds BlockSize
// tokens of one layer: K and V for every KV head, and one float32 score per
// token per KV head. Within a block, in elements of the pool's dtype:
//
//	K      [KVHeads, BlockSize, HeadDim]
//	V      [KVHeads, BlockSize, HeadDim]
//	Scores [KVHeads, BlockSize]            (float32, stored after V)
//
// Head-major K and V keep one head's tokens contiguous, which is what decode
// attention streams and what per-head compaction moves. Block 0 is the null
// block: it exists in memory but is never handed out.
type Layout struct {
	NumBlocks int // including the null block 0
	BlockSize int // tokens per block
	KVHeads   int
	HeadDim   int
}

// Validate checks that every field is usable.
func (l Layout) Validate() error {
	switch {
	case l.NumBlocks < 2:
		return fmt.Errorf("%w: %d blocks (need at least 2: block 0 is reserved)", ErrLayout, l.NumBlocks)
	case l.BlockSize < 1:
		return fmt.Errorf("%w: block size %d", ErrLayout, l.BlockSize)
	case l.KVHeads < 1 || l.HeadDim < 1:
		return fmt.Errorf("%w: %d KV heads of dim %d", ErrLayout, l.KVHeads, l.HeadDim)
	}
	return nil
}

// HeadElems is the number of K (or V) elements one head has in a block.
func (l Layout) HeadElems() int { return l.BlockSize * l.HeadDim }

// BlockElems is the size of one layer-block in float32 elements, scores
// included.
func (l Layout) BlockElems() int {
	return 2*l.KVHeads*l.HeadElems() + l.KVHeads*l.BlockSize
}

// PoolElems is the size of the whole pool in float32 elements.
func (l Layout) PoolElems() int { return l.NumBlocks * l.BlockElems() }

// K is the offset of token slot's key for head in block.
func (l Layout) K(block, head, slot int) int {
	return block*l.BlockElems() + (head*l.BlockSize+slot)*l.HeadDim
}

// V is the offset of token slot's value for head in block.
func (l Layout) V(block, head, slot int) int {
	return l.K(block, head, slot) + l.KVHeads*l.HeadElems()
}

// Score is the offset of token slot's score for head in block.
func (l Layout) Score(block, head, slot int) int {
	return block*l.BlockElems() + 2*l.KVHeads*l.HeadElems() + head*l.BlockSize + slot
}

// BlocksFor is the number of blocks that hold n tokens.
func (l Layout) BlocksFor(n int) int { return (n + l.BlockSize - 1) / l.BlockSize }
