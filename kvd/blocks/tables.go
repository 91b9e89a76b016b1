package blocks

import "fmt"

// Tables holds block tables: for each sequence, one table per layer. kvd's
// allocator keeps the authoritative copy; each client keeps a mirror, fed by
// the Deltas that reservations return, so a step's reply carries only the
// blocks that step added, never whole tables. Not safe for concurrent use.
type Tables struct {
	layers    int
	blockSize int
	seqs      map[SeqID][]table
}

// table is one (sequence, layer) block table: block ids in order and the
// number of tokens they hold.
type table struct {
	blocks []int32
	tokens int
}

// NewTables returns empty tables for a model of layers layers.
func NewTables(layers, blockSize int) *Tables {
	return &Tables{layers: layers, blockSize: blockSize, seqs: map[SeqID][]table{}}
}

// Layers is the number of layers each sequence has a table for.
func (t *Tables) Layers() int { return t.layers }

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

// Delta is what one reservation changed: every block it added, in step
// order. Most decode steps add no block to most tables, so the delta lists
// additions only. Applying it to a mirror that was equal to the allocator's
// tables before the reservation makes it equal again.
type Delta struct {
	Added []Added
}

// Added is one block appended to the table of layer Pos%layers of the
// step's append Pos/layers.
type Added struct {
	Pos   uint32
	Block int32
}

// Apply extends the tables by a step's appends and the blocks they took.
func (t *Tables) Apply(step []Append, d *Delta) error {
	seqs := make([][]table, len(step))
	for i, s := range step {
		ts, ok := t.seqs[s.Seq]
		if !ok {
			return fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		}
		seqs[i] = ts
	}
	limit := uint32(len(step) * t.layers)
	for _, a := range d.Added {
		if a.Pos >= limit {
			return fmt.Errorf("delta adds a block at %d, past %d appends × %d layers", a.Pos, len(step), t.layers)
		}
		tb := &seqs[a.Pos/uint32(t.layers)][a.Pos%uint32(t.layers)]
		tb.blocks = append(tb.blocks, a.Block)
	}
	for i, s := range step {
		ts := seqs[i]
		for l := range ts {
			ts[l].tokens += s.N
			if len(ts[l].blocks)*t.blockSize < ts[l].tokens {
				return fmt.Errorf("sequence %d layer %d: %d tokens in %d blocks", s.Seq, l, ts[l].tokens, len(ts[l].blocks))
			}
		}
	}
	return nil
}

// Truncate drops tokens beyond n in every layer of the sequence and returns
// the block ids that emptied, last first.
func (t *Tables) Truncate(id SeqID, n int) ([]int32, error) {
	ts, ok := t.seqs[id]
	if !ok {
		return nil, fmt.Errorf("sequence %d: %w", id, ErrUnknownSeq)
	}
	var freed []int32
	for l := range ts {
		tb := &ts[l]
		if n >= tb.tokens {
			continue
		}
		keep := (n + t.blockSize - 1) / t.blockSize
		for i := len(tb.blocks) - 1; i >= keep; i-- {
			freed = append(freed, tb.blocks[i])
		}
		tb.blocks = tb.blocks[:keep]
		tb.tokens = n
	}
	return freed, nil
}

// LayerPlan is what the forward pass needs for one layer of a step: where
// each new token goes, and what each sequence attends to (CSR over
// sequences).
type LayerPlan struct {
	Slots       []int32 // [step tokens] block*BlockSize+offset
	KVLen       []int32 // [seqs]
	BlockIndptr []int32 // [seqs+1]
	Blocks      []int32
}

// Plan describes a step whose appends have already been applied: the last
// N tokens of each sequence are the new ones. Each layer's slices are sized
// exactly up front: a step's plan is rebuilt every step, so it must not
// grow slices as it goes.
func (t *Tables) Plan(step []Append) ([]LayerPlan, error) {
	tokens := 0
	for _, s := range step {
		if !t.Has(s.Seq) {
			return nil, fmt.Errorf("sequence %d: %w", s.Seq, ErrUnknownSeq)
		}
		tokens += s.N
	}
	plans := make([]LayerPlan, t.layers)
	for l := range plans {
		nb := 0
		for _, s := range step {
			nb += len(t.seqs[s.Seq][l].blocks)
		}
		// One allocation per layer, cut into its four slices.
		buf := make([]int32, tokens+len(step)+len(step)+1+nb)
		plans[l] = LayerPlan{
			Slots:       buf[:0:tokens],
			KVLen:       buf[tokens : tokens : tokens+len(step)],
			BlockIndptr: buf[tokens+len(step) : tokens+len(step) : tokens+2*len(step)+1],
			Blocks:      buf[tokens+2*len(step)+1 : tokens+2*len(step)+1],
		}
		plans[l].BlockIndptr = append(plans[l].BlockIndptr, 0)
	}
	bs := t.blockSize
	for _, s := range step {
		ts := t.seqs[s.Seq]
		for l := range ts {
			tb, p := &ts[l], &plans[l]
			if s.N > tb.tokens {
				return nil, fmt.Errorf("sequence %d layer %d: step of %d tokens but %d held", s.Seq, l, s.N, tb.tokens)
			}
			for i := tb.tokens - s.N; i < tb.tokens; i++ {
				p.Slots = append(p.Slots, tb.blocks[i/bs]*int32(bs)+int32(i%bs))
			}
			p.KVLen = append(p.KVLen, int32(tb.tokens))
			p.Blocks = append(p.Blocks, tb.blocks...)
			p.BlockIndptr = append(p.BlockIndptr, int32(len(p.Blocks)))
		}
	}
	return plans, nil
}

// Unappend removes the last n tokens of every layer of the sequence (a step
// that never ran) and returns the block ids that emptied, last first.
// Unknown sequences are ignored.
func (t *Tables) Unappend(id SeqID, n int) []int32 {
	ts, ok := t.seqs[id]
	if !ok {
		return nil
	}
	var freed []int32
	for l := range ts {
		tb := &ts[l]
		tb.tokens = max(0, tb.tokens-n)
		keep := (tb.tokens + t.blockSize - 1) / t.blockSize
		for i := len(tb.blocks) - 1; i >= keep; i-- {
			freed = append(freed, tb.blocks[i])
		}
		tb.blocks = tb.blocks[:keep]
	}
	return freed
}

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
