package blocks

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/kvd-project/kvd/shm"
)

// check verifies the allocator's invariants: every block is either free or
// in exactly one table, block 0 is in neither, and each table has exactly
// the blocks its token count needs.
func check(t *testing.T, a *Allocator) {
	t.Helper()
	owner := map[int32]string{}
	for _, id := range a.free {
		if id == 0 {
			t.Fatal("null block on the free list")
		}
		if owner[id] != "" {
			t.Fatalf("block %d free twice", id)
		}
		owner[id] = "free"
	}
	for s, ts := range a.seqs {
		for l, tb := range ts {
			if len(tb.blocks) != a.layout.BlocksFor(tb.tokens) {
				t.Fatalf("seq %d layer %d: %d blocks for %d tokens", s, l, len(tb.blocks), tb.tokens)
			}
			for _, id := range tb.blocks {
				if id == 0 || owner[id] != "" {
					t.Fatalf("block %d in seq %d layer %d is also %q", id, s, l, owner[id])
				}
				owner[id] = "used"
			}
		}
	}
	if len(owner) != a.Total() {
		t.Fatalf("%d blocks accounted for, %d total", len(owner), a.Total())
	}
}

func TestRandomWorkload(t *testing.T) {
	seed := uint64(42)
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	a, err := New(shm.Layout{NumBlocks: 200, BlockSize: 4, KVHeads: 1, HeadDim: 1}, 3)
	if err != nil {
		t.Fatal(err)
	}
	open := map[SeqID]bool{}
	next := SeqID(1)
	for range 5000 {
		switch op := rng.IntN(10); {
		case op < 2:
			if err := a.Open(next); err != nil {
				t.Fatal(err)
			}
			open[next] = true
			next++
		case op < 4 && len(open) > 0:
			for s := range open {
				if err := a.Close(s); err != nil {
					t.Fatal(err)
				}
				delete(open, s)
				break
			}
		case op < 5 && len(open) > 0:
			for s := range open {
				n, _ := a.Tokens(s, 0)
				if err := a.Truncate(s, rng.IntN(n+1)); err != nil {
					t.Fatal(err)
				}
				break
			}
		default:
			var step []Append
			for s := range open {
				if rng.IntN(2) == 0 {
					step = append(step, Append{Seq: s, N: 1 + rng.IntN(9)})
				}
			}
			free := a.Free()
			plans, err := a.Reserve(step)
			if errors.Is(err, ErrPoolExhausted) {
				if a.Free() != free {
					t.Fatal("failed reserve changed the pool")
				}
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			for l, p := range plans {
				n := 0
				for _, s := range step {
					n += s.N
				}
				if len(p.Slots) != n || len(p.KVLen) != len(step) {
					t.Fatalf("layer %d: %d slots for %d tokens", l, len(p.Slots), n)
				}
			}
		}
		check(t, a)
	}
	for s := range open {
		a.Close(s)
	}
	if a.Free() != a.Total() {
		t.Fatalf("leak: %d of %d free after closing everything", a.Free(), a.Total())
	}
}

func TestErrors(t *testing.T) {
	a, err := New(shm.Layout{NumBlocks: 3, BlockSize: 2, KVHeads: 1, HeadDim: 1}, 1)
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
	if _, err := a.Reserve([]Append{{Seq: 1, N: 4}}); err != nil {
		t.Errorf("4 tokens in 2 blocks of 2: %v", err)
	}
	if err := a.Close(2); !errors.Is(err, ErrUnknownSeq) {
		t.Errorf("close unknown: %v", err)
	}
	if _, err := New(shm.Layout{NumBlocks: 1, BlockSize: 2, KVHeads: 1, HeadDim: 1}, 1); !errors.Is(err, shm.ErrLayout) {
		t.Errorf("pool of only the null block: %v", err)
	}
}
