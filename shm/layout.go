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
// token per KV head. Within a block, in float32 words:
//
//	K      [KVHeads, BlockSize, RowElems]
//	V      [KVHeads, BlockSize, RowElems]
//	Scores [KVHeads, BlockSize]            (float32, stored after V)
//
// A row (one token's K or V for one head) is HeadDim float32s, or with
// DType BFloat16 HeadDim bfloat16s packed two to a word: read as uint16s
// from the row's start, element d is dimension d (little-endian words hold
// dims 2i and 2i+1 in their low and high halves); with FP8E4M3, HeadDim
// bytes packed four to a word the same way (byte j of word i is dimension
// 4i+j). Offsets are in words
// either way, so code that moves rows (compaction, eviction) moves
// RowElems words and need not know the dtype; only what writes K and V
// and what reads them as numbers does.
//
// Head-major K and V keep one head's tokens contiguous, which is what decode
// attention streams and what per-head compaction moves. Block 0 is the null
// block: it exists in memory but is never handed out.
type Layout struct {
	NumBlocks int // including the null block 0
	BlockSize int // tokens per block
	KVHeads   int
	HeadDim   int
	DType     DType // of K and V; scores are float32 whatever it is
}

// DType is how K and V are stored in the pool.
type DType uint8

const (
	Float32  DType = iota // rows as the model computes them (auto on the CPU)
	BFloat16              // rounded to nearest even: half the bytes (auto on a GPU)
	// FP8E4M3 is OCP FP8 E4M3 (vLLM's fp8, fp8_e4m3): a quarter of
	// float32's bytes, 3 bits of mantissa, values rounded to nearest even
	// and saturated at ±448 with a scale of 1 (vLLM's default without
	// calibrated k_scale and v_scale).
	FP8E4M3
)

func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case BFloat16:
		return "bfloat16"
	case FP8E4M3:
		return "fp8_e4m3"
	}
	return fmt.Sprintf("DType(%d)", uint8(d))
}

// ParseDType reads a --kv-cache-dtype value (vLLM's flag): float32,
// bfloat16, or auto, which is float32 here; ResolveDType gives auto its
// meaning for where the pool lives.
func ParseDType(s string) (DType, error) {
	switch s {
	case "auto", "float32", "fp32":
		return Float32, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	case "fp8", "fp8_e4m3":
		return FP8E4M3, nil
	}
	return 0, fmt.Errorf("%w: KV cache dtype %q (want auto, float32, bfloat16 or fp8)", ErrLayout, s)
}

// ResolveDType reads a --kv-cache-dtype value as ParseDType does, with
// auto as vLLM means it, the model's dtype, where that is what runs: on a
// GPU (gpu), whose weights are bf16, auto is bfloat16. On an H200 a
// bfloat16 pool held twice the tokens, ran the 8B workload 22% faster
// than float32 (1179 against 967 tokens/s, run 7), and moved no accuracy
// metric outside its interval (bench/results/gpu-g.md, accuracy-gpu.md). On the CPU auto stays float32,
// the dtype the CPU backend's attention reads without converting; so it
// does for an odd head dim (headDim), whose rows bfloat16 cannot pack two
// to a word: auto then means what works, and only an explicit bfloat16
// is refused (by Validate).
func ResolveDType(s string, gpu bool, headDim int) (DType, error) {
	dt, err := ParseDType(s)
	if err == nil && s == "auto" && gpu && headDim%2 == 0 {
		dt = BFloat16
	}
	return dt, err
}

// RowElems is the number of float32 words one token's K (or V) takes for
// one head.
func (l Layout) RowElems() int {
	switch l.DType {
	case BFloat16:
		return l.HeadDim / 2
	case FP8E4M3:
		return l.HeadDim / 4
	}
	return l.HeadDim
}

// CheckHeadDim reports whether rows of headDim values pack into whole
// words in dtype dt.
func CheckHeadDim(dt DType, headDim int) error {
	switch {
	case dt == BFloat16 && headDim%2 != 0:
		return fmt.Errorf("%w: a bfloat16 pool packs two dims a word; head dim %d is odd", ErrLayout, headDim)
	case dt == FP8E4M3 && headDim%4 != 0:
		return fmt.Errorf("%w: an fp8 pool packs four dims a word; head dim %d is not a multiple of 4", ErrLayout, headDim)
	}
	return nil
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
	case l.DType > FP8E4M3:
		return fmt.Errorf("%w: KV dtype %v", ErrLayout, l.DType)
	}
	return CheckHeadDim(l.DType, l.HeadDim)
}

// HeadElems is the number of words one head's K (or V) takes in a block.
func (l Layout) HeadElems() int { return l.BlockSize * l.RowElems() }

// BlockElems is the size of one layer-block in float32 words, scores
// included.
func (l Layout) BlockElems() int {
	return 2*l.KVHeads*l.HeadElems() + l.KVHeads*l.BlockSize
}

// PoolElems is the size of the whole pool in float32 words.
func (l Layout) PoolElems() int { return l.NumBlocks * l.BlockElems() }

// K is the offset of token slot's key for head in block.
func (l Layout) K(block, head, slot int) int {
	return block*l.BlockElems() + (head*l.BlockSize+slot)*l.RowElems()
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
