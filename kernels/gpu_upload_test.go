//go:build cgo

package kernels

import (
	"math/rand/v2"
	"os"
	"testing"
)

// TestGPUUploadOrder queues many small uploads (Gather's row lists, one
// buffer size class, each released right after its launch) behind GEMMs
// that keep the device busy, so the host runs far ahead: with the upload
// stream (the default), a copy may run before kernels queued earlier, and
// a row list copied into a buffer that a queued gather has yet to read
// would garble that gather. Every gather must read its own rows.
// KVD_UPLOAD_STREAM=0 runs the same over the default stream.
func TestGPUUploadOrder(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(7, 15))
	const n, k, rows, gathers = 2048, 4096, 64, 96
	x := g.FromHost(randn(rng, n*k), n, k)
	w := g.Weight(randn(rng, k*k), k, k)
	busy := g.Alloc(n, k)
	src := randn(rng, n*64)
	table := g.FromHost(src, n, 64)
	outs := make([]*Tensor, gathers)
	lists := make([][]int32, gathers)
	for i := range gathers {
		if i%16 == 0 {
			for range 16 {
				g.Linear(busy, x, w) // ~1.5 ms of work on an H200 ahead of the next 16 gathers
			}
		}
		lists[i] = make([]int32, rows)
		for j := range lists[i] {
			lists[i][j] = int32(rng.IntN(n))
		}
		outs[i] = g.poisoned(rows, 64)
		g.Gather(outs[i], table, lists[i])
	}
	if g.upOn {
		g.mu.Lock()
		held := len(g.upHeld)
		g.mu.Unlock()
		if held < gathers {
			t.Errorf("%d upload buffers held before the device drained, want at least %d (one a gather)", held, gathers)
		}
	} else if os.Getenv("KVD_UPLOAD_STREAM") != "0" {
		t.Error("no upload stream, and KVD_UPLOAD_STREAM is not 0")
	}
	for i, out := range outs {
		got := g.host(t, out)
		bad := 0
		for j, r := range lists[i] {
			for d := range 64 {
				if got[j*64+d] != src[int(r)*64+d] {
					bad++
				}
			}
		}
		if bad > 0 {
			t.Fatalf("gather %d of %d: %d of %d values are not its rows' (upload stream %v)", i, gathers, bad, rows*64, g.upOn)
		}
	}
	g.mu.Lock()
	held, free := len(g.upHeld), 0
	for _, f := range g.upFree {
		free += len(f)
	}
	g.mu.Unlock()
	if g.upOn && (held != 0 || free == 0) {
		t.Errorf("after the device drained: %d upload buffers held, %d free; want none held", held, free)
	}
}

// TestGPUUploadWrap uploads more between drains than the staging area
// holds (80 row lists of 1 MiB through its 64 MiB), so that an upload
// finds it full, waits for the device and starts it over: every gather
// must still read its own rows, and no upload buffer may stay held once
// the device drained.
func TestGPUUploadWrap(t *testing.T) {
	g := newGPU(t)
	rng := rand.New(rand.NewPCG(9, 1))
	const n, rows, gathers = 4096, 1 << 18, 80
	src := randn(rng, n)
	table := g.FromHost(src, n, 1)
	outs := make([]*Tensor, gathers)
	lists := make([][]int32, gathers)
	for i := range gathers {
		lists[i] = make([]int32, rows)
		for j := range lists[i] {
			lists[i][j] = int32(rng.IntN(n))
		}
		outs[i] = g.Alloc(rows, 1)
		g.Gather(outs[i], table, lists[i])
	}
	for i, out := range outs {
		got := g.host(t, out)
		for j, r := range lists[i] {
			if got[j] != src[r] {
				t.Fatalf("gather %d of %d: row %d is %v, want table row %d's %v", i, gathers, j, got[j], r, src[r])
			}
		}
	}
	g.mu.Lock()
	held := len(g.upHeld)
	g.mu.Unlock()
	if held != 0 {
		t.Errorf("%d upload buffers still held after the device drained", held)
	}
}
