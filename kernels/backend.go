// Package kernels is the compute layer: the Backend interface that the
// forward pass is written against, and its implementations. The pure-Go CPU
// backend here is both the production CPU path and the reference that every
// other backend is tested against.
//
// kernels may import shm (for the pool layout) and nothing else of this
// module; cgo, when a GPU backend arrives, stays inside this package.
package kernels

import (
	"fmt"
	"sync/atomic"

	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/shm"
)

// Tensor is a dense row-major float32 array owned by the Backend that made
// it. Shapes are written outermost first, as in PyTorch.
type Tensor struct {
	shape  []int
	data   []float32              // host storage (CPU backend)
	packed atomic.Pointer[packed] // a weight's GEMM panels, made on first Linear
	dev    uint64                 // device storage (CUDA backend)
	bf16   bool                   // dev holds bfloat16 (a CUDA weight or AllocLinearInput), not float32
	class  int                    // dev's size class in the CUDA backend's cache; 0: not cached
	opened bool                   // dev is another process's memory, mapped by OpenShared
	vmm    *cuda.VMM              // dev is a VMM mapping (AllocSharedFD, OpenSharedFD)
}

// Shape returns the tensor's dimensions; callers must not modify it.
func (t *Tensor) Shape() []int { return t.shape }

// Len is the number of elements.
func (t *Tensor) Len() int { return numel(t.shape) }

// Rows is the size of the outermost dimension.
func (t *Tensor) Rows() int { return t.shape[0] }

// Cols is the number of elements per outermost index.
func (t *Tensor) Cols() int { return t.Len() / t.shape[0] }

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// AttnBatch describes, CSR-style, which cached tokens each sequence's new
// queries attend to in one layer. Sequence i owns query rows
// QIndptr[i]..QIndptr[i+1] and the layer-blocks
// Blocks[BlockIndptr[i]:BlockIndptr[i+1]], whose first KVLen[i] slots hold
// its cached tokens in order, the new tokens of this step last. The j-th new
// query of sequence i sees cached tokens 0..KVLen[i]-n_i+j (causal), where
// n_i is its number of new queries. A sparse layer that evicted tokens has a
// shorter KVLen; positions no longer matter once RoPE is applied to K.
type AttnBatch struct {
	QIndptr     []int32 // [numSeqs+1]
	KVLen       []int32 // [numSeqs]
	BlockIndptr []int32 // [numSeqs+1]
	Blocks      []int32 // [BlockIndptr[numSeqs]] layer-block ids
	// ScoreFrom, when set, makes sequence i's queries from its
	// ScoreFrom[i]-th on add the attention they pay each cached token,
	// summed over the KV head's query group, to that token's score in the
	// pool: decode's H2O accumulation, or a prompt's observation window.
	ScoreFrom []int32 // [numSeqs] or nil
	// Skip, when set, leaves sequence i's rows of out alone (a sparse
	// layer's prompt, whose attention SparsePrefill computes).
	Skip []bool // [numSeqs] or nil
}

// Validate checks the batch against the number of query rows and the pool.
func (b *AttnBatch) Validate(numQueries int, l shm.Layout) error {
	n := len(b.KVLen)
	if (b.ScoreFrom != nil && len(b.ScoreFrom) != n) || (b.Skip != nil && len(b.Skip) != n) {
		return fmt.Errorf("attention batch: %d sequences but %d score starts and %d skips", n, len(b.ScoreFrom), len(b.Skip))
	}
	if len(b.QIndptr) != n+1 || len(b.BlockIndptr) != n+1 {
		return fmt.Errorf("attention batch: %d sequences but indptr lengths %d and %d", n, len(b.QIndptr), len(b.BlockIndptr))
	}
	if int(b.QIndptr[n]) != numQueries || int(b.BlockIndptr[n]) != len(b.Blocks) {
		return fmt.Errorf("attention batch: indptr ends %d/%d, want %d/%d", b.QIndptr[n], b.BlockIndptr[n], numQueries, len(b.Blocks))
	}
	for i := 0; i < n; i++ {
		nq := int(b.QIndptr[i+1] - b.QIndptr[i])
		nb := int(b.BlockIndptr[i+1] - b.BlockIndptr[i])
		if b.Skip != nil && b.Skip[i] {
			nq = 0 // a compressed prompt holds fewer tokens than it has queries
		}
		if nq < 0 || int(b.KVLen[i]) < nq || int(b.KVLen[i]) > nb*l.BlockSize {
			return fmt.Errorf("attention batch: sequence %d has %d queries, %d cached tokens, %d blocks", i, nq, b.KVLen[i], nb)
		}
	}
	for _, id := range b.Blocks {
		if id <= 0 || int(id) >= l.NumBlocks {
			return fmt.Errorf("attention batch: block %d outside pool of %d", id, l.NumBlocks)
		}
	}
	return nil
}

// Backend is the set of operations a forward pass needs. A Backend is used
// by one forward pass at a time; its methods may parallelise internally.
// Tensors are allocated by the Backend (Alloc, AllocLinearInput, FromHost,
// Weight); a step's scratch is given back with Free (device memory is not
// the garbage collector's). Methods do not return errors: a backend whose
// calls can fail (CUDA) keeps the first failure for Err, which the forward
// pass checks.
//
// Shapes in the comments: T tokens in the step, D hidden size, N output
// features, H heads, Hd head dim.
type Backend interface {
	// Name says which backend this is, for logs.
	Name() string

	// Alloc returns a zeroed tensor.
	Alloc(shape ...int) *Tensor
	// FromHost wraps or copies host data; the CPU backend aliases it, so
	// the caller must not modify data afterwards.
	FromHost(data []float32, shape ...int) *Tensor
	// Weight is FromHost for a model weight: a backend may keep it in a
	// narrower type (CUDA stores matrices as bf16, exact for bf16
	// checkpoints), and its values must not change after.
	Weight(data []float32, shape ...int) *Tensor
	// AllocLinearInput returns a zeroed [rows, cols] tensor that is only
	// ever Linear's x (with a weight from Weight), written by RMSNorm,
	// AddRMSNorm or SiLUMul as their out; no other method takes it, and
	// ToHost reads it widened to float32. The backend stores it in its
	// GEMM operand type: CUDA in bf16, what Linear rounds x to anyway, so
	// the producer writes it rounded and no conversion runs before the
	// GEMM; the CPU in float32, its results those of an Alloc'd tensor.
	AllocLinearInput(rows, cols int) *Tensor
	// AllocGateUp returns a zeroed [rows, cols] tensor that is only ever
	// Linear's out (with a weight from Weight) and SiLUMul's gateUp:
	// CUDA keeps it in bf16 (the GEMM's float32 sums rounded, as HF's
	// bf16 MLP rounds the gate and up projections; half the bytes
	// written and read), the CPU in float32.
	AllocGateUp(rows, cols int) *Tensor
	// ToHost copies t into dst, which must have t.Len() elements.
	ToHost(dst []float32, t *Tensor)
	// Free gives t's storage back; t must not be used after.
	Free(t *Tensor)
	// Err returns, and clears, the first failure since the last call: a
	// CUDA error converted at the boundary. The CPU backend never fails.
	Err() error

	// Embedding gathers rows: out[T,D] = table[ids[t], :].
	Embedding(out, table *Tensor, ids []int32)
	// RMSNorm: out[T,D] = x / sqrt(mean(x²) + eps) * w[D].
	RMSNorm(out, x, w *Tensor, eps float32)
	// Linear: out[T,N] = x[T,K] · w[N,K]ᵀ (the HF weight layout). w is a
	// weight: a backend may keep it in its own layout from the first call,
	// so its values must not change after.
	Linear(out, x, w *Tensor)
	// LinearAdd: out[T,N] += x[T,K] · w[N,K]ᵀ, out float32: a projection
	// added to the residual stream, the add fused where the backend can.
	LinearAdd(out, x, w *Tensor)
	// RoPE rotates, in place, each head of x[T, heads*Hd] by the angle
	// positions[t]*invFreq[i], pairing element i with i+Hd/2 (HF's
	// rotate_half convention).
	RoPE(x *Tensor, heads int, positions []int32, invFreq []float32)
	// SplitRoPE splits qkv [T, (H+2·KVH)·Hd] into q [T, H·Hd], k and v
	// [T, KVH·Hd], rotating q and k as RoPE does: the three Columns and two
	// RoPEs of attention's input, fused.
	SplitRoPE(q, k, v, qkv *Tensor, positions []int32, invFreq []float32)
	// AddRMSNorm: x += delta, then out = RMSNorm(x)·w: a residual add and
	// the next norm, fused. out may be delta, unless out is from
	// AllocLinearInput (bf16 on CUDA: it cannot alias a float32 delta).
	AddRMSNorm(out, x, delta, w *Tensor, eps float32)
	// SiLUMul: out[T,F] = silu(gateUp[T, :F]) * gateUp[T, F:].
	SiLUMul(out, gateUp *Tensor)
	// Add: dst += x, elementwise.
	Add(dst, x *Tensor)
	// Sample draws dst[r] from logits[r] as params[r] says (SampleParams;
	// greedy is the argmax, the lowest index on a tie), where the logits
	// are, so they need not come to the host. It may overwrite suppressed
	// ids' logits with -Inf.
	Sample(dst []int32, logits *Tensor, params []SampleParams)
	// Gather copies rows: out[len(rows), C] = x[rows[i], :].
	Gather(out, x *Tensor, rows []int32)
	// Columns copies a band of columns: out[T, C] = x[T, start:start+C].
	Columns(out, x *Tensor, start int)

	// WriteKV stores k, v [T, KVHeads*Hd] into the pool at slots[t]
	// (block*BlockSize + offset); a negative slot skips the token.
	WriteKV(pool *Tensor, l shm.Layout, k, v *Tensor, slots []int32)
	// Attention computes, for q [T, H*Hd], out [T, H*Hd] = softmax(q·Kᵀ·scale)·V
	// over the cached tokens that b gives each sequence, grouping H/KVHeads
	// query heads per KV head, and accumulates scores as b.ScoreFrom asks.
	// Sequences with no query rows are skipped.
	Attention(out, q, pool *Tensor, l shm.Layout, b *AttnBatch, scale float32)

	// SparsePrefill is a sparse layer's whole-prompt step for one sequence
	// (rows row0..row0+n of q, k, v): exact attention into out, then only
	// the tokens sel keeps written to slots with their scores.
	SparsePrefill(out, q, k, v *Tensor, row0, n int, pool *Tensor, l shm.Layout, slots []int32, sel Selection, scale float32)
	// Evict compacts each job's (sequence, layer) table to its Keep
	// best-scored tokens per head (Sinks and Recent kept always), moved in
	// order to the first Keep slots. Jobs must not share blocks. A step's
	// evictions come in one call, so a device backend waits for the device
	// once to read the scores, not once per table; it returns when the
	// entries have moved, so the blocks freed after may go to anyone.
	Evict(pool *Tensor, l shm.Layout, jobs []EvictJob)
}

// ExactAllocBytes is the size from which a device backend gives a tensor
// an allocation of its own; smaller ones come from power-of-two size
// classes, which may hold up to twice their size.
const ExactAllocBytes = 4 << 30

// EvictJob is one table for Evict: Tokens tokens laid out in Blocks.
type EvictJob struct {
	Blocks                      []int32
	Tokens, Keep, Sinks, Recent int
}
