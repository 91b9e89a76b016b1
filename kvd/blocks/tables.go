package blocks

import (
	"fmt"

	"github.com/kvd-project/kvd/kvd/policy"
)

// Tables holds block tables: for each sequence, one table per layer. kvd's
// allocator keeps the authoritative copy; each client keeps a mirror, fed by
// the Deltas that reservations return, so a step's reply carries only what
// changed, never whole tables. Both sides follow the same policy spec, so a
// sparse layer takes only its budget of a long prompt on both. Not safe for
// concurrent use.
type Tables struct {
	layers    int
	blockSize int
	spec      policy.Spec
	keepLimit []int // per layer: a prompt's budget, 0 keeps everything
	seqs      map[SeqID][]table
	added     []int32 // Apply's scratch: blocks added per (append, layer)
	keptBuf   []int32 // Apply's scratch: tokens kept per (append, layer)
}

// table is one (sequence, layer) block table: block ids in order, the number
// of tokens they hold, and how many of those the last step added.
type table struct {
	blocks []int32
	tokens int
	last   int
	mark   uint64 // layer 0's: the last Reserve that saw the sequence
}

// NewTables returns empty tables for a model whose layers follow spec.
func NewTables(spec policy.Spec, blockSize int) *Tables {
	t := &Tables{layers: len(spec), blockSize: blockSize, spec: spec, keepLimit: make([]int, len(spec)), seqs: map[SeqID][]table{}}
	for l, p := range spec {
		if p.Selects() {
			t.keepLimit[l] = p.Budget
		}
	}
	return t
}

// Layers is the number of layers each sequence has a table for.
func (t *Tables) Layers() int { return t.layers }

// Spec is the layers' policies.
func (t *Tables) Spec() policy.Spec { return t.spec }

// Has reports whether the sequence is open.
func (t *Tables) Has(id SeqID) bool { _, ok := t.seqs[id]; return ok }

// Len is the number of open sequences.
func (t *Tables) Len() int { return len(t.seqs) }

// Add starts an empty sequence.
func (t *Tables) Add(id SeqID) error {
	if _, ok := t.seqs[id]; ok {
		return fmt.Errorf("sequence %d: %w", id, ErrSeqExists)
	}
	t.seqs[id] = make([]table, t.layers)
	return nil
}

// Remove forgets a sequence, returning its tables (for the allocator to
// release the blocks).
func (t *Tables) Remove(id SeqID) ([]table, error) {
	ts, ok := t.seqs[id]
	if !ok {
		return nil, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	delete(t.seqs, id)
	return ts, nil
}

// Tokens is the number of tokens the sequence holds in layer.
func (t *Tables) Tokens(id SeqID, layer int) (int, error) {
	ts, ok := t.seqs[id]
	if !ok {
		return 0, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	return ts[layer].tokens, nil
}

// Blocks is the sequence's block table in layer; callers must not modify it.
func (t *Tables) Blocks(id SeqID, layer int) []int32 { return t.seqs[id][layer].blocks }

// Append is one sequence's share of a step: N new tokens.
type Append struct {
	Seq SeqID
	N   int
}

// kept is how many of n new tokens layer l of table tb takes: the policy's
// PrefillKeep, precomputed because it runs for every table every step.
func (t *Tables) kept(l int, tb *table, n int) int { return t.keep(l, tb.tokens, n) }

func (t *Tables) keep(l, before, n int) int {
	if lim := t.keepLimit[l]; before == 0 && lim > 0 && n > lim {
		return lim
	}
	return n
}

// Delta is what one reservation changed: the tables that an earlier step's
// eviction shrank, then every block the step added, in step order. Most
// decode steps add no block to most tables, so the delta lists changes only.
// Applying it to a mirror that was equal to the allocator's tables before
// makes it equal again.
type Delta struct {
	Shrunk []Shrink
	Added  []Added
}

// Shrink is a table cut down by eviction: it now holds Tokens tokens in its
// first blocks, and the blocks after them went back to the pool.
type Shrink struct {
	Seq    SeqID
	Layer  uint32
	Tokens uint32
}

// Added is one block appended to the table of layer Pos%layers of the
// step's append Pos/layers.
type Added struct {
	Pos   uint32
	Block int32
}

// Apply applies a reservation's delta: the shrinks, then the step's appends
// and the blocks they took. It checks everything first and changes nothing
// if the delta does not fit the tables.
func (t *Tables) Apply(step []Append, d *Delta) error {
	for _, s := range d.Shrunk {
		if s.Layer >= uint32(t.layers) {
			return fmt.Errorf("delta shrinks layer %d of %d", s.Layer, t.layers)
		}
	}
	seqs := make([][]table, len(step))
	for i, s := range step {
		ts, ok := t.seqs[s.Seq]
		if !ok {
			return fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		}
		seqs[i] = ts
	}
	limit := uint32(len(step) * t.layers)
	if cap(t.added) < int(limit) {
		t.added = make([]int32, limit)
		t.keptBuf = make([]int32, limit)
	}
	added, kept := t.added[:limit], t.keptBuf[:limit]
	clear(added)
	for _, a := range d.Added {
		if a.Pos >= limit {
			return fmt.Errorf("delta adds a block at %d, past %d appends × %d layers", a.Pos, len(step), t.layers)
		}
		added[a.Pos]++
	}
	// Tokens and blocks each table will have, after the shrinks.
	type key struct {
		seq   SeqID
		layer int
	}
	var shrinks map[key]int
	if len(d.Shrunk) > 0 {
		shrinks = make(map[key]int, len(d.Shrunk))
	}
	for _, sh := range d.Shrunk {
		k := key{sh.Seq, int(sh.Layer)}
		if v, ok := shrinks[k]; !ok || int(sh.Tokens) < v {
			shrinks[k] = int(sh.Tokens)
		}
	}
	for i, s := range step {
		for l := range t.layers {
			tb := &seqs[i][l]
			tokens, nb := tb.tokens, len(tb.blocks)
			if shrinks != nil {
				if v, ok := shrinks[key{s.Seq, l}]; ok && v < tokens {
					tokens, nb = v, (v+t.blockSize-1)/t.blockSize
				}
			}
			k := t.keep(l, tokens, s.N)
			kept[i*t.layers+l] = int32(k)
			tokens += k
			if nb += int(added[i*t.layers+l]); nb*t.blockSize < tokens || (nb-1)*t.blockSize >= tokens && nb > 0 {
				return fmt.Errorf("sequence %d layer %d: %d tokens in %d blocks", s.Seq, l, tokens, nb)
			}
		}
	}
	for _, s := range d.Shrunk {
		if t.Has(s.Seq) { // else closed here since kvd evicted
			t.Shrink(s.Seq, int(s.Layer), int(s.Tokens))
		}
	}
	for _, a := range d.Added {
		tb := &seqs[a.Pos/uint32(t.layers)][a.Pos%uint32(t.layers)]
		tb.blocks = append(tb.blocks, a.Block)
	}
	for i := range step {
		ts, ks := seqs[i], kept[i*t.layers:(i+1)*t.layers]
		for l := range ts {
			ts[l].last = int(ks[l])
			ts[l].tokens += ts[l].last
		}
	}
	return nil
}

// Shrink cuts the sequence's table in layer to its first tokens tokens and
// returns the block ids that emptied, last first.
func (t *Tables) Shrink(id SeqID, layer, tokens int) ([]int32, error) {
	ts, ok := t.seqs[id]
	if !ok {
		return nil, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	if layer < 0 || layer >= t.layers || tokens < 0 {
		return nil, fmt.Errorf("sequence %d: shrink layer %d to %d tokens", id, layer, tokens)
	}
	tb := &ts[layer]
	if tokens >= tb.tokens {
		return nil, nil
	}
	keep := (tokens + t.blockSize - 1) / t.blockSize
	var freed []int32
	for i := len(tb.blocks) - 1; i >= keep; i-- {
		freed = append(freed, tb.blocks[i])
	}
	tb.blocks = tb.blocks[:keep]
	tb.tokens = tokens
	tb.last = min(tb.last, tokens)
	return freed, nil
}

// Truncate drops tokens beyond n in every layer of the sequence and returns
// the block ids that emptied, last first.
func (t *Tables) Truncate(id SeqID, n int) ([]int32, error) {
	if !t.Has(id) {
		return nil, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	var freed []int32
	for l := range t.layers {
		f, _ := t.Shrink(id, l, n)
		freed = append(freed, f...)
	}
	return freed, nil
}

// Unappend removes, in every layer of the sequence, the tokens the last
// step added (a step that never ran) and returns the block ids that
// emptied, last first. Unknown sequences are ignored.
func (t *Tables) Unappend(id SeqID) []int32 {
	ts, ok := t.seqs[id]
	if !ok {
		return nil
	}
	var freed []int32
	for l := range ts {
		f, _ := t.Shrink(id, l, ts[l].tokens-ts[l].last)
		ts[l].last = 0
		freed = append(freed, f...)
	}
	return freed
}

// LayerPlan is what the forward pass needs for one layer of a step: where
// each new token goes, and what each sequence attends to (CSR over
// sequences). A sparse layer's prompt keeps only Kept[i] of sequence i's
// tokens: its slots are those of the kept tokens, which the forward pass
// selects.
type LayerPlan struct {
	Slots       []int32 // [kept tokens of the step] block*BlockSize+offset
	Kept        []int32 // [seqs] tokens each sequence writes in this layer
	KVLen       []int32 // [seqs]
	BlockIndptr []int32 // [seqs+1]
	Blocks      []int32
}

// Plan describes a step whose appends have already been applied, in new
// storage. Each layer's slices are sized exactly up front: a step's plan is
// rebuilt every step, so it must not grow slices as it goes.
func (t *Tables) Plan(step []Append) ([]LayerPlan, error) {
	return t.PlanInto(step, &PlanBuf{})
}

// PlanBuf is storage a step's plan reuses: the plans PlanInto returns live
// in it until its next use, so a caller that plans every step allocates
// nothing (nor gives the garbage collector anything) once it has grown.
type PlanBuf struct {
	plans []LayerPlan
	bufs  [][]int32
	snap  []planTable
}

// PlanInto is Plan into pb's storage.
func (t *Tables) PlanInto(step []Append, pb *PlanBuf) ([]LayerPlan, error) {
	sp, err := t.StepPlanInto(step, pb)
	if err != nil {
		return nil, err
	}
	if cap(pb.plans) < t.layers {
		pb.plans = make([]LayerPlan, t.layers)
	}
	plans := pb.plans[:t.layers]
	for l := range plans {
		plans[l] = sp.Layer(l)
	}
	return plans, nil
}

// StepPlan is a step's plan built a layer at a time (Layer), so that a
// forward pass can build each layer's as it reaches it, while the device
// runs the layers before: copying every table of a step up front is most
// of a decode step's reserve (BenchmarkStepRoundTrip at 32 sequences of
// 5000 tokens: 314 of 357 µs; at 128, 920 of 1078), and the device waits
// for it. It holds each (sequence, layer) table's length and block list as
// the step left them (their headers, not the block ids: tables only ever
// grow past their length, shrink by their length, or are dropped, so the
// ids it holds stay as they were until the next step's appends), so
// nothing done to the tables after it is made changes what it builds.
type StepPlan struct {
	snap              []planTable // [layer][sequence]: layer l's are snap[l*n : (l+1)*n]
	n                 int         // the step's sequences
	layers, blockSize int
	pb                *PlanBuf
}

// planTable is what a plan needs of one table.
type planTable struct {
	blocks       []int32
	tokens, last int
}

// StepPlanInto starts step's plan in pb's storage (it replaces pb's
// previous plan): the step's appends must have been applied.
func (t *Tables) StepPlanInto(step []Append, pb *PlanBuf) (*StepPlan, error) {
	for _, s := range step {
		if !t.Has(s.Seq) {
			return nil, fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		}
	}
	n := len(step)
	if cap(pb.snap) < n*t.layers {
		pb.snap = make([]planTable, n*t.layers)
	}
	snap := pb.snap[:n*t.layers]
	for i, s := range step {
		for l, tb := range t.seqs[s.Seq] {
			snap[l*n+i] = planTable{blocks: tb.blocks, tokens: tb.tokens, last: tb.last}
		}
	}
	if len(pb.bufs) < t.layers {
		pb.bufs = append(pb.bufs, make([][]int32, t.layers-len(pb.bufs))...)
	}
	return &StepPlan{snap: snap, n: n, layers: t.layers, blockSize: t.blockSize, pb: pb}, nil
}

// Layer builds layer l's plan. It lives in the PlanBuf until the buffer's
// next step.
func (sp *StepPlan) Layer(l int) LayerPlan {
	tbs := sp.snap[l*sp.n : (l+1)*sp.n]
	kept, nb, n := 0, 0, sp.n
	for i := range tbs {
		kept += tbs[i].last
		nb += len(tbs[i].blocks)
	}
	// One buffer per layer, cut into its five slices.
	need := kept + 3*n + 1 + nb
	if cap(sp.pb.bufs[l]) < need {
		sp.pb.bufs[l] = make([]int32, need+need/4) // room to grow a few steps
	}
	buf := sp.pb.bufs[l][:need]
	p := LayerPlan{
		Slots:       buf[:0:kept],
		Kept:        buf[kept : kept : kept+n],
		KVLen:       buf[kept+n : kept+n : kept+2*n],
		BlockIndptr: buf[kept+2*n : kept+2*n : kept+3*n+1],
		Blocks:      buf[kept+3*n+1 : kept+3*n+1],
	}
	p.BlockIndptr = append(p.BlockIndptr, 0)
	bs := int32(sp.blockSize)
	for i := range tbs {
		tb := &tbs[i]
		for t := tb.tokens - tb.last; t < tb.tokens; t++ {
			p.Slots = append(p.Slots, tb.blocks[int32(t)/bs]*bs+int32(t)%bs)
		}
		p.Kept = append(p.Kept, int32(tb.last))
		p.KVLen = append(p.KVLen, int32(tb.tokens))
		p.Blocks = append(p.Blocks, tb.blocks...)
		p.BlockIndptr = append(p.BlockIndptr, int32(len(p.Blocks)))
	}
	return p
}

// Layers is the number of layers the plan has.
func (sp *StepPlan) Layers() int { return sp.layers }

// EachTable calls fn with every (sequence, layer) table's size.
func (t *Tables) EachTable(fn func(layer, tokens, blocks int)) {
	for _, ts := range t.seqs {
		for l, tb := range ts {
			fn(l, tb.tokens, len(tb.blocks))
		}
	}
}

// Each calls fn with every open sequence (fn may Remove it).
func (t *Tables) Each(fn func(SeqID)) {
	for id := range t.seqs {
		fn(id)
	}
}
