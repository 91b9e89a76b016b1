//go:build cgo

package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestStreamItems checks rowWork.stream, the split of a streamed launch
// (streamV2) into items and CTAs, on the host: every row's keys are
// covered once, in order, by items that rowsplit finds; CTAs take
// consecutive items, no more CTAs than asked, each but the last at least
// its share of the keys and less than a share and a round more; a row is
// cut only on a multiple of round keys.
func TestStreamItems(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, tc := range []struct {
		lens []int
		nx   int
	}{
		{[]int{5000}, 49},
		{[]int{5000, 5000, 5000}, 49},
		{[]int{1, 2, 3}, 100},
		{[]int{127, 128, 129, 1000, 64}, 4},
		{nil, 10},
		{[]int{300}, 1},
	} {
		testStream(t, tc.lens, tc.nx)
	}
	for range 200 {
		lens := make([]int, 1+rng.IntN(200))
		for i := range lens {
			lens[i] = 1 + rng.IntN(9000)
		}
		testStream(t, lens, 1+rng.IntN(600))
	}
}

func testStream(t *testing.T, lens []int, nx int) {
	t.Helper()
	const round = 128
	var w rowWork
	total := 0
	for r, n := range lens {
		w.row(r, n, 0, false)
		total += n
	}
	label := fmt.Sprintf("%d rows (%d keys) over %d CTAs", len(lens), total, nx)
	items, rowsplit, cta := w.stream(nx, round)
	if len(rowsplit) != len(lens)+1 {
		t.Fatalf("%s: rowsplit has %d entries", label, len(rowsplit))
	}
	for r, n := range lens {
		k := 0
		for i := rowsplit[r]; i < rowsplit[r+1]; i++ {
			it := items[4*i : 4*i+4]
			if int(it[0]) != r || int(it[1]) != k || it[2] <= it[1] || int(it[3]) != int(i) {
				t.Fatalf("%s: row %d's item %d is %v after key %d", label, r, i, it, k)
			}
			if int(it[2]) < n && int(it[2])%round != 0 {
				t.Fatalf("%s: row %d cut at key %d", label, r, it[2])
			}
			k = int(it[2])
		}
		if k != n {
			t.Fatalf("%s: row %d's items end at key %d of %d", label, r, k, n)
		}
	}
	if len(items) == 0 {
		if len(cta) != 1 {
			t.Fatalf("%s: no items but CTAs %v", label, cta)
		}
		return
	}
	if cta[0] != 0 || int(cta[len(cta)-1]) != len(items)/4 || len(cta)-1 > nx {
		t.Fatalf("%s: CTA bounds %v for %d items", label, cta, len(items)/4)
	}
	per := max(round, (total+nx-1)/nx)
	for x := 0; x+1 < len(cta); x++ {
		if cta[x+1] <= cta[x] {
			t.Fatalf("%s: CTA %d has no items (%v)", label, x, cta)
		}
		keys := 0
		for i := cta[x]; i < cta[x+1]; i++ {
			keys += int(items[4*i+2] - items[4*i+1])
		}
		if x+2 < len(cta) && keys < per || keys >= per+round {
			t.Fatalf("%s: CTA %d has %d keys, its share %d", label, x, keys, per)
		}
	}
}
