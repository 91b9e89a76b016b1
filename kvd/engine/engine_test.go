package engine

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/shm"
)

// TestSparseInvariants drives the engine like a gateway would, with random
// prompts, decode steps and closes across many sequences, and plays the
// forward pass's part by writing each token's position into its K slots
// and a random score. After every step: no layer holds more than its
// budget plus one block; every head still holds its sequence's sinks and
// most recent tokens; heads of a layer hold the same number of tokens;
// the allocator's books balance. At the end nothing leaks.
func TestSparseInvariants(t *testing.T) {
	const (
		layers    = 3
		blockSize = 4
		kvHeads   = 2
	)
	spec, err := policy.Parse("0=window:sinks=2,window=10;1=snapkv:budget=16,obs_window=4/h2o:recent=4,sinks=1;2=full/h2o:heavy=8,recent=3", layers)
	if err != nil {
		t.Fatal(err)
	}
	l := shm.Layout{NumBlocks: 400, BlockSize: blockSize, KVHeads: kvHeads, HeadDim: 2}
	kv, err := NewLocal(l, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer kv.Shutdown()
	e, mem, ctx := kv.Engine(), kv.pool.(*pool.Host).Float32s(), context.Background()
	seed := uint64(7)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	length := map[uint64]int{} // tokens given to each open sequence
	next := uint64(1)
	for step := range 600 {
		var appends []blocks.Append
		switch r := rng.IntN(10); {
		case r < 2 || len(length) == 0:
			if err := kv.Open(ctx, next); err != nil {
				t.Fatal(err)
			}
			appends = append(appends, blocks.Append{Seq: blocks.SeqID(next), N: 1 + rng.IntN(40)})
			length[next] = 0
			next++
		case r < 3:
			for id := range length {
				if err := kv.Close(ctx, id); err != nil {
					t.Fatal(err)
				}
				delete(length, id)
				break
			}
			continue
		default:
			for id := range length {
				appends = append(appends, blocks.Append{Seq: blocks.SeqID(id), N: 1})
			}
		}
		id, plan, err := kv.Reserve(ctx, appends)
		if errors.Is(err, blocks.ErrPoolExhausted) {
			for id := range length { // make room, as the scheduler would
				kv.Close(ctx, id)
				delete(length, id)
				break
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		// The forward pass's part: every kept slot of this step gets its
		// token's position (the prompt's kept tokens are its first and
		// last ones here; which ones does not matter to these checks) and
		// a random score.
		for li := range plan.Layers() {
			p := plan.Layer(li)
			next := 0
			for i, a := range appends {
				k := int(p.Kept[i])
				start := length[uint64(a.Seq)]
				for j := range k {
					pos := start + a.N - k + j
					if k < a.N && j < spec[li].Sinks {
						pos = start + j
					}
					s := p.Slots[next+j]
					for h := range kvHeads {
						mem[l.K(int(s)/blockSize, h, int(s)%blockSize)] = float32(pos)
						mem[l.Score(int(s)/blockSize, h, int(s)%blockSize)] = rng.Float32()
					}
				}
				next += k
			}
		}
		for _, a := range appends {
			length[uint64(a.Seq)] += a.N
		}
		if err := e.StepDone(ctx, kv.sess, id, false); err != nil { // eviction runs here
			t.Fatal(err)
		}
		checkSparse(t, e, spec, l, mem, length)
	}
	for id := range length {
		kv.Close(ctx, id)
	}
	st := e.Status(ctx)
	if st.BlocksUsed != 0 || st.BlocksFree != st.BlocksTotal {
		t.Fatalf("leak: %+v", st)
	}
	if st.TokensEvicted == 0 || st.BlocksReturned == 0 {
		t.Fatalf("the workload never evicted: %+v", st)
	}
	t.Logf("evicted %d tokens, returned %d blocks", st.TokensEvicted, st.BlocksReturned)
}

func checkSparse(t *testing.T, e *Engine, spec policy.Spec, l shm.Layout, mem []float32, length map[uint64]int) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.clients[e.anyLease()]
	used := 0
	for cid, sid := range c.seqs {
		for li, p := range spec {
			tokens, _ := e.alloc.Tokens(sid, li)
			bl := e.alloc.Blocks(sid, li)
			used += len(bl)
			limit := length[cid]
			if p.Selects() {
				limit = min(limit, p.Budget+length[cid]) // a prompt within budget, then decode growth
			}
			if p.Decode != "" && tokens >= p.DecodeBudget+l.BlockSize {
				t.Fatalf("seq %d layer %d holds %d tokens, budget %d + a block of %d", cid, li, tokens, p.DecodeBudget, l.BlockSize)
			}
			for h := range l.KVHeads {
				var held []int
				for i := range tokens {
					held = append(held, int(mem[l.K(int(bl[i/l.BlockSize]), h, i%l.BlockSize)]))
				}
				if len(held) != tokens {
					t.Fatalf("head %d holds %d of the layer's %d tokens", h, len(held), tokens)
				}
				// Recent tokens are always kept.
				for j := max(0, length[cid]-p.Recent); j < length[cid]; j++ {
					if p.Decode != "" && !slices.Contains(held, j) {
						t.Fatalf("seq %d layer %d head %d lost recent token %d (holds %v)", cid, li, h, j, held)
					}
				}
				// Sinks are always kept.
				for j := range min(p.Sinks, length[cid]) {
					if !slices.Contains(held, j) {
						t.Fatalf("seq %d layer %d head %d lost sink %d (holds %v)", cid, li, h, j, held)
					}
				}
				if !slices.IsSorted(held) {
					t.Fatalf("seq %d layer %d head %d out of order: %v", cid, li, h, held)
				}
			}
		}
	}
	if e.alloc.Total()-e.alloc.Free() != used {
		t.Fatalf("allocator says %d blocks used, tables hold %d", e.alloc.Total()-e.alloc.Free(), used)
	}
}

func (e *Engine) anyLease() string {
	for l := range e.clients {
		return l
	}
	return ""
}
