package blocks

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

// check verifies the allocator's invariants: a block is free exactly when
// no table holds it, its reference count is the number of tables holding
// it, block 0 is never used, each table has exactly the blocks its tokens
// need, and free + used = total.
func check(t *testing.T, a *Allocator) {
	t.Helper()
	held := map[int32]int{}
	for s, ts := range a.seqs {
		for l, tb := range ts {
			if len(tb.blocks) != a.layout.BlocksFor(tb.tokens) {
				t.Fatalf("seq %d layer %d: %d blocks for %d tokens", s, l, len(tb.blocks), tb.tokens)
			}
			for _, id := range tb.blocks {
				if id == 0 {
					t.Fatal("null block in a table")
				}
				held[id]++
			}
		}
	}
	free := map[int32]bool{}
	for _, id := range a.free {
		if id == 0 || free[id] || held[id] > 0 {
			t.Fatalf("block %d on the free list is null, repeated or held by %d tables", id, held[id])
		}
		free[id] = true
	}
	for id := 1; id < a.layout.NumBlocks; id++ {
		if int(a.refs[id]) != held[int32(id)] {
			t.Fatalf("block %d: refcount %d, held by %d tables", id, a.refs[id], held[int32(id)])
		}
	}
	if len(free)+len(held) != a.Total() {
		t.Fatalf("free %d + used %d != total %d", len(free), len(held), a.Total())
	}
}

// TestRandomWorkload runs thousands of random open/reserve/fork/truncate/
// close operations and checks the invariants after each, and that a client
// mirror fed only with deltas plans every step exactly as the allocator's
// own tables do.
func TestRandomWorkload(t *testing.T) {
	// A full layer, a SnapKV layer keeping 12 tokens of a prompt, and a
	// StreamingLLM window of 2 sinks and 6 recent tokens (whose decode-time
	// compaction rules out forks); then the same without the window.
	specs := []string{"1=snapkv:budget=12,obs_window=4;2=window:sinks=2,window=6", "1-2=snapkv:budget=12,obs_window=4", "1-2=snapkv:budget=12,obs_window=4"}
	for seed, specText := range specs {
		t.Logf("seed %d, policy %s", seed, specText)
		rng := rand.New(rand.NewPCG(uint64(seed), 1))
		const layers = 3
		spec, err := policy.Parse(specText, layers)
		if err != nil {
			t.Fatal(err)
		}
		a, err := New(shm.Layout{NumBlocks: 300, BlockSize: 4, KVHeads: 1, HeadDim: 1}, spec)
		if err != nil {
			t.Fatal(err)
		}
		mirror := NewTables(spec, 4)
		var reused PlanBuf
		var open []SeqID
		next := SeqID(1)
		pick := func() (SeqID, int) { i := rng.IntN(len(open)); return open[i], i }
		for range 4000 {
			switch op := rng.IntN(12); {
			case op < 2:
				if err := a.Open(next); err != nil {
					t.Fatal(err)
				}
				mirror.Add(next)
				open = append(open, next)
				next++
			case op < 4 && len(open) > 0:
				s, i := pick()
				if err := a.Close(s); err != nil {
					t.Fatal(err)
				}
				mirror.Remove(s)
				open = append(open[:i], open[i+1:]...)
			case op < 5 && len(open) > 0:
				s, _ := pick()
				if err := a.Fork(s, next); err != nil {
					if spec[2].Decode == "" {
						t.Fatal(err)
					}
					continue // refused, as it must be
				}
				mirror.Add(next)
				for l := range layers {
					n, _ := a.Tokens(next, l)
					mirror.seqs[next][l] = table{blocks: append([]int32(nil), a.Blocks(next, l)...), tokens: n}
				}
				open = append(open, next)
				next++
			case op < 6 && len(open) > 0:
				s, _ := pick()
				n, _ := a.Tokens(s, 0)
				n = rng.IntN(n + 1)
				if err := a.Truncate(s, n); err != nil {
					t.Fatal(err)
				}
				mirror.Truncate(s, n)
			case op < 7 && len(open) > 0: // an eviction compacted one layer
				s, _ := pick()
				l := rng.IntN(layers)
				n, _ := a.Tokens(s, l)
				n = rng.IntN(n + 1)
				free := a.Free()
				left, err := a.Shrink(s, l, n)
				if err != nil || a.Free() < free || a.Free() > free+left {
					t.Fatalf("%d blocks left the table, free %d -> %d: %v", left, free, a.Free(), err)
				}
				mirror.Shrink(s, l, n)
			default:
				var step []Append
				for _, s := range open {
					if rng.IntN(2) == 0 {
						step = append(step, Append{Seq: s, N: rng.IntN(10)})
					}
				}
				free := a.Free()
				d, err := a.Reserve(step)
				if errors.Is(err, ErrPoolExhausted) {
					if a.Free() != free {
						t.Fatal("failed reserve changed the pool")
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := mirror.Apply(step, d); err != nil {
					t.Fatal(err)
				}
				want, err := a.Plan(step)
				if err != nil {
					t.Fatal(err)
				}
				// The mirror plans into storage reused over the whole run,
				// as the gateway's client does.
				got, err := mirror.PlanInto(step, &reused)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatal("mirror plans differ from the allocator's")
				}
				for i, st := range step {
					for l := range layers {
						if k := int(want[l].Kept[i]); k != spec[l].PrefillKeep(int(want[l].KVLen[i])-k, st.N) {
							t.Fatalf("layer %d kept %d of %d", l, k, st.N)
						}
					}
				}
			}
			check(t, a)
		}
		for _, s := range open {
			a.Close(s)
		}
		if a.Free() != a.Total() {
			t.Fatalf("leak: %d of %d free after closing everything", a.Free(), a.Total())
		}
	}
}

func TestErrors(t *testing.T) {
	a, err := New(shm.Layout{NumBlocks: 3, BlockSize: 2, KVHeads: 1, HeadDim: 1}, policy.AllFull(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reserve([]Append{{Seq: 9, N: 1}}); !errors.Is(err, ErrUnknownSeq) {
		t.Errorf("reserve on unknown sequence: %v", err)
	}
	a.Open(1)
	if err := a.Open(1); !errors.Is(err, ErrSeqExists) {
		t.Errorf("double open: %v", err)
	}
	if _, err := a.Reserve([]Append{{Seq: 1, N: 5}}); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("5 tokens in 2 blocks of 2: %v", err)
	}
	if _, err := a.Reserve([]Append{{Seq: 1, N: 1}, {Seq: 1, N: 1}}); err == nil {
		t.Error("a sequence twice in one step was accepted")
	}
	if _, err := a.Reserve([]Append{{Seq: 1, N: 4}}); err != nil {
		t.Errorf("4 tokens in 2 blocks of 2: %v", err)
	}
	if err := a.Close(2); !errors.Is(err, ErrUnknownSeq) {
		t.Errorf("close unknown: %v", err)
	}
	if _, err := New(shm.Layout{NumBlocks: 1, BlockSize: 2, KVHeads: 1, HeadDim: 1}, policy.AllFull(1)); !errors.Is(err, shm.ErrLayout) {
		t.Errorf("pool of only the null block: %v", err)
	}
}

func TestForkSharesFullBlocks(t *testing.T) {
	a, _ := New(shm.Layout{NumBlocks: 20, BlockSize: 4, KVHeads: 1, HeadDim: 1}, policy.AllFull(2))
	a.Open(1)
	a.Reserve([]Append{{Seq: 1, N: 10}}) // 3 blocks per layer, the last partly full
	if err := a.Fork(1, 2); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Tokens(2, 1); n != 8 {
		t.Fatalf("fork holds %d tokens, want the 8 of the two full blocks", n)
	}
	shared := a.Blocks(2, 0)[0]
	if a.Refs(shared) != 2 {
		t.Fatalf("shared block has %d refs", a.Refs(shared))
	}
	a.Close(1)
	if a.Refs(shared) != 1 || a.Free() != 19-4 {
		t.Fatalf("after closing the source: refs %d, free %d", a.Refs(shared), a.Free())
	}
	a.Close(2)
	if a.Free() != 19 {
		t.Fatalf("leak: %d free", a.Free())
	}
}

// TestStepPlanLayerAtATime builds a step's plan a layer at a time, in any
// order, as the forward pass does, and gets what Plan gives at once; it
// still does after the tables change under it (a sequence of the step
// rolled back, another closed and its blocks given to a new one), since
// the plan holds the tables as the step reserved them. (Running that plan
// would write where the step reserved: the runner reports a step done
// before the tables change.)
func TestStepPlanLayerAtATime(t *testing.T) {
	spec, err := policy.Parse("0-1=snapkv:budget=8,obs_window=4", 4)
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(shm.Layout{NumBlocks: 200, BlockSize: 4, KVHeads: 1, HeadDim: 1}, spec)
	if err != nil {
		t.Fatal(err)
	}
	for s := SeqID(1); s <= 3; s++ {
		a.Open(s)
	}
	if _, err := a.Reserve([]Append{{Seq: 1, N: 13}, {Seq: 2, N: 5}}); err != nil {
		t.Fatal(err)
	}
	step := []Append{{Seq: 1, N: 1}, {Seq: 2, N: 1}, {Seq: 3, N: 20}}
	if _, err := a.Reserve(step); err != nil {
		t.Fatal(err)
	}
	want, err := a.Plan(step)
	if err != nil {
		t.Fatal(err)
	}
	var pb PlanBuf
	sp, err := a.StepPlanInto(step, &pb)
	if err != nil {
		t.Fatal(err)
	}
	if sp.Layers() != 4 {
		t.Fatalf("%d layers planned, want 4", sp.Layers())
	}
	a.Rollback(1)
	if err := a.Close(2); err != nil {
		t.Fatal(err)
	}
	a.Open(4)
	if _, err := a.Reserve([]Append{{Seq: 4, N: 40}}); err != nil { // takes the freed blocks
		t.Fatal(err)
	}
	for _, l := range []int{2, 0, 3, 1} {
		if got := sp.Layer(l); !reflect.DeepEqual(got, want[l]) {
			t.Fatalf("layer %d: planned %+v, want %+v", l, got, want[l])
		}
	}
	if _, err := a.StepPlanInto([]Append{{Seq: 2, N: 1}}, &pb); !errors.Is(err, ErrUnknownSeq) {
		t.Fatalf("a closed sequence planned: %v", err)
	}
}
