package kernels

import (
	"math"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas32"

	"github.com/kvd-project/kvd/shm"
)

// CPU is the pure-Go backend (plus one assembly kernel). GEMMs run on an
// AVX2/FMA micro-kernel over weights packed into panels (gemm.go), or on
// gonum's float32 BLAS where the CPU lacks AVX2, split across cores by
// output features so that decode's one-row products use every core too.
// It is also the reference every other backend is tested against.
type CPU struct {
	workers int
}

// NewCPU returns a CPU backend using up to GOMAXPROCS goroutines per op.
func NewCPU() *CPU { return &CPU{workers: runtime.GOMAXPROCS(0)} }

func (c *CPU) Name() string { return "cpu" }

func (c *CPU) Alloc(shape ...int) *Tensor {
	return &Tensor{shape: append([]int(nil), shape...), data: make([]float32, numel(shape))}
}

func (c *CPU) FromHost(data []float32, shape ...int) *Tensor {
	if numel(shape) != len(data) {
		panic("kernels: FromHost shape does not match data") // programming error, not input
	}
	return &Tensor{shape: append([]int(nil), shape...), data: data}
}

func (c *CPU) Weight(data []float32, shape ...int) *Tensor { return c.FromHost(data, shape...) }

// AllocLinearInput is Alloc: the CPU's GEMMs take x in float32, so a
// forward pass gives the same bits with it as with float32 scratch.
func (c *CPU) AllocLinearInput(rows, cols int) *Tensor { return c.Alloc(rows, cols) }

func (c *CPU) AllocGateUp(rows, cols int) *Tensor { return c.Alloc(rows, cols) }

func (c *CPU) ToHost(dst []float32, t *Tensor) { copy(dst, t.data) }

// Free drops t's storage for the garbage collector.
func (c *CPU) Free(t *Tensor) { t.data = nil }

func (c *CPU) Err() error { return nil }

// parallel runs fn over [0,n) split into at most c.workers chunks of at
// least minChunk items.
func (c *CPU) parallel(n, minChunk int, fn func(lo, hi int)) {
	chunks := c.workers
	if minChunk < 1 {
		minChunk = 1
	}
	if m := n / minChunk; m < chunks {
		chunks = m
	}
	if chunks <= 1 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	step := (n + chunks - 1) / chunks
	for lo := 0; lo < n; lo += step {
		hi := min(lo+step, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

func (c *CPU) Embedding(out, table *Tensor, ids []int32) {
	d := table.Cols()
	for t, id := range ids {
		copy(out.data[t*d:(t+1)*d], table.data[int(id)*d:int(id+1)*d])
	}
}

func (c *CPU) RMSNorm(out, x, w *Tensor, eps float32) {
	d := w.Len()
	c.parallel(x.Rows(), 8, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			row := x.data[t*d : (t+1)*d]
			var ss float64
			for _, v := range row {
				ss += float64(v) * float64(v)
			}
			inv := float32(1 / math.Sqrt(ss/float64(d)+float64(eps)))
			o := out.data[t*d : (t+1)*d]
			for i, v := range row {
				o[i] = v * inv * w.data[i]
			}
		}
	})
}

func (c *CPU) Linear(out, x, w *Tensor) {
	if hasFMA {
		c.linearFMA(out, x, w)
		return
	}
	t, k := x.Rows(), x.Cols()
	n := w.Rows()
	// Each worker owns a band of output features: a contiguous band of w's
	// rows and a column band of out.
	c.parallel(n, 16, func(lo, hi int) {
		a := blas32.General{Rows: t, Cols: k, Stride: k, Data: x.data}
		b := blas32.General{Rows: hi - lo, Cols: k, Stride: k, Data: w.data[lo*k : hi*k]}
		o := blas32.General{Rows: t, Cols: hi - lo, Stride: n, Data: out.data[lo:]}
		blas32.Gemm(blas.NoTrans, blas.Trans, 1, a, b, 0, o)
	})
}

func (c *CPU) RoPE(x *Tensor, heads int, positions []int32, invFreq []float32) {
	hd := x.Cols() / heads
	half := hd / 2
	c.parallel(len(positions), 4, func(lo, hi int) {
		cos := make([]float32, half)
		sin := make([]float32, half)
		for t := lo; t < hi; t++ {
			for i := range half {
				// Angles in float64: HF computes them in float32, and
				// the difference is far below the tolerance we test.
				s, c := math.Sincos(float64(positions[t]) * float64(invFreq[i]))
				cos[i], sin[i] = float32(c), float32(s)
			}
			row := x.data[t*heads*hd : (t+1)*heads*hd]
			for h := range heads {
				v := row[h*hd : (h+1)*hd]
				for i := range half {
					a, b := v[i], v[i+half]
					v[i] = a*cos[i] - b*sin[i]
					v[i+half] = b*cos[i] + a*sin[i]
				}
			}
		}
	})
}

func (c *CPU) SplitRoPE(q, k, v, qkv *Tensor, positions []int32, invFreq []float32) {
	hd := 2 * len(invFreq)
	c.Columns(q, qkv, 0)
	c.Columns(k, qkv, q.Cols())
	c.Columns(v, qkv, q.Cols()+k.Cols())
	c.RoPE(q, q.Cols()/hd, positions, invFreq)
	c.RoPE(k, k.Cols()/hd, positions, invFreq)
}

func (c *CPU) AddRMSNorm(out, x, delta, w *Tensor, eps float32) {
	c.Add(x, delta)
	c.RMSNorm(out, x, w, eps)
}

func (c *CPU) SiLUMul(out, gateUp *Tensor) {
	f := out.Cols()
	c.parallel(out.Rows(), 4, func(lo, hi int) {
		for t := lo; t < hi; t++ {
			g := gateUp.data[t*2*f : t*2*f+f]
			u := gateUp.data[t*2*f+f : (t+1)*2*f]
			o := out.data[t*f : (t+1)*f]
			for i := range o {
				o[i] = g[i] / (1 + float32(math.Exp(float64(-g[i])))) * u[i]
			}
		}
	})
}

// LinearAdd is Linear into a scratch tensor, then Add.
func (c *CPU) LinearAdd(out, x, w *Tensor) {
	tmp := c.Alloc(out.Rows(), out.Cols())
	c.Linear(tmp, x, w)
	c.Add(out, tmp)
}

func (c *CPU) Add(dst, x *Tensor) {
	for i, v := range x.data {
		dst.data[i] += v
	}
}

func (c *CPU) Gather(out, x *Tensor, rows []int32) {
	d := x.Cols()
	for i, r := range rows {
		copy(out.data[i*d:(i+1)*d], x.data[int(r)*d:int(r+1)*d])
	}
}

func (c *CPU) Columns(out, x *Tensor, start int) {
	w, xc := out.Cols(), x.Cols()
	for t := range out.Rows() {
		copy(out.data[t*w:(t+1)*w], x.data[t*xc+start:])
	}
}

func (c *CPU) WriteKV(pool *Tensor, l shm.Layout, k, v *Tensor, slots []int32) {
	hd := l.HeadDim
	for t, s := range slots {
		if s < 0 {
			continue
		}
		blk, off := int(s)/l.BlockSize, int(s)%l.BlockSize
		for h := range l.KVHeads {
			src := (t*l.KVHeads + h) * hd
			putRow(pool.data[l.K(blk, h, off):], k.data[src:src+hd], l.DType)
			putRow(pool.data[l.V(blk, h, off):], v.data[src:src+hd], l.DType)
			pool.data[l.Score(blk, h, off)] = 0 // a new token has no score yet
		}
	}
}

// attnJob is one (sequence, KV head) pair's query rows r0..r1: the query
// heads of that KV head's group share the keys they read. A long prompt's
// rows are split over several jobs so all cores work on it; the rows that
// accumulate scores stay in one job, so score accumulation needs no locks.
type attnJob struct {
	seq, kvHead, r0, r1 int
}

// attnRows is how many query rows one attention job takes at most.
const attnRows = 64

func (c *CPU) Attention(out, q, pool *Tensor, l shm.Layout, b *AttnBatch, scale float32) {
	hd := l.HeadDim
	heads := q.Cols() / hd
	group := heads / l.KVHeads
	jobs := make([]attnJob, 0, len(b.KVLen)*l.KVHeads)
	for s := range b.KVLen {
		q0, q1 := int(b.QIndptr[s]), int(b.QIndptr[s+1])
		if q1 == q0 || (b.Skip != nil && b.Skip[s]) {
			continue
		}
		scoreFrom := q1
		if b.ScoreFrom != nil {
			scoreFrom = q0 + int(b.ScoreFrom[s])
		}
		for h := range l.KVHeads {
			r := q0
			for ; r < scoreFrom; r += attnRows {
				jobs = append(jobs, attnJob{seq: s, kvHead: h, r0: r, r1: min(r+attnRows, scoreFrom)})
			}
			if scoreFrom < q1 {
				jobs = append(jobs, attnJob{seq: s, kvHead: h, r0: scoreFrom, r1: q1})
			}
		}
	}
	fma := hasFMA && hd%nr == 0
	c.parallel(len(jobs), 1, func(lo, hi int) {
		var kb, vb, pb, pad []float32
		var kv kvPanels
		kr, vr := make([]float32, hd), make([]float32, hd) // a bfloat16 pool's rows, as float32
		for _, j := range jobs[lo:hi] {
			blocks := b.Blocks[b.BlockIndptr[j.seq]:b.BlockIndptr[j.seq+1]]
			q0, q1 := int(b.QIndptr[j.seq]), int(b.QIndptr[j.seq+1])
			past := int(b.KVLen[j.seq]) - (q1 - q0)
			scoreFrom := q1
			if b.ScoreFrom != nil {
				scoreFrom = q0 + int(b.ScoreFrom[j.seq])
			}
			n := past + j.r1 - q0 // keys the job's last row sees
			if (j.r1-j.r0)*n*hd < smallAttn {
				attnScalar(out, q, pool, l, blocks, j, past+j.r0-q0+1, heads, group, scoreFrom, scale)
				continue
			}
			rows := j.r1 - j.r0
			pb = grow(pb, rows*n)
			first := past + j.r0 - q0 + 1 // keys the job's first row sees
			score := func(h int) {
				for r := max(j.r0, scoreFrom); r < j.r1; r++ {
					i := r - j.r0
					for t, w := range pb[i*n : i*n+first+i] {
						pool.data[l.Score(int(blocks[t/l.BlockSize]), j.kvHead, t%l.BlockSize)] += w
					}
				}
			}
			if fma {
				kv.reset(n, hd)
				for i := range n {
					blk, off := int(blocks[i/l.BlockSize]), i%l.BlockSize
					kv.set(i, row(kr, pool.data, l.K(blk, j.kvHead, off), l.DType), row(vr, pool.data, l.V(blk, j.kvHead, off), l.DType))
				}
				pad = grow(pad, mr*max(hd, n))
				for g := range group {
					h := j.kvHead*group + g
					attnTileFMA(q.data[(j.r0*heads+h)*hd:], heads*hd, rows, &kv, n, first, scale, pb, out.data[(j.r0*heads+h)*hd:], heads*hd, pad)
					score(h)
				}
				continue
			}
			// Gather the keys and values into contiguous [n, hd]
			// matrices: each block holds a head's tokens back to back.
			kb, vb = grow(kb, n*hd), grow(vb, n*hd)
			for i := 0; i < n; i += l.BlockSize {
				blk, cnt := int(blocks[i/l.BlockSize]), min(l.BlockSize, n-i)
				if l.DType == shm.Float32 {
					copy(kb[i*hd:(i+cnt)*hd], pool.data[l.K(blk, j.kvHead, 0):])
					copy(vb[i*hd:(i+cnt)*hd], pool.data[l.V(blk, j.kvHead, 0):])
					continue
				}
				for o := range cnt {
					getRow(kb[(i+o)*hd:(i+o+1)*hd], pool.data[l.K(blk, j.kvHead, o):], l.DType)
					getRow(vb[(i+o)*hd:(i+o+1)*hd], pool.data[l.V(blk, j.kvHead, o):], l.DType)
				}
			}
			km := blas32.General{Rows: n, Cols: hd, Stride: hd, Data: kb}
			vm := blas32.General{Rows: n, Cols: hd, Stride: hd, Data: vb}
			for g := range group {
				h := j.kvHead*group + g
				qm := blas32.General{Rows: rows, Cols: hd, Stride: heads * hd, Data: q.data[(j.r0*heads+h)*hd:]}
				om := blas32.General{Rows: rows, Cols: hd, Stride: heads * hd, Data: out.data[(j.r0*heads+h)*hd:]}
				attnTile(qm, km, vm, first, scale, pb, om)
				score(h)
			}
		}
	})
}

// smallAttn is the work (rows × keys × head dim) under which an attention
// job runs as plain loops: for a short decode step, gathering the keys and
// calling BLAS costs more than it saves.
const smallAttn = 1 << 15

// attnScalar is job j's attention as plain loops; its first row sees the
// first first keys.
func attnScalar(out, q, pool *Tensor, l shm.Layout, blocks []int32, j attnJob, first, heads, group, scoreFrom int, scale float32) {
	hd := l.HeadDim
	p := make([]float32, first+j.r1-j.r0-1)
	kr, vr := make([]float32, hd), make([]float32, hd)
	for r := j.r0; r < j.r1; r++ {
		p := p[:first+r-j.r0]
		for g := range group {
			h := j.kvHead*group + g
			qv := q.data[(r*heads+h)*hd:][:hd]
			mx := float32(math.Inf(-1))
			for i := range p {
				p[i] = dot(qv, row(kr, pool.data, l.K(int(blocks[i/l.BlockSize]), j.kvHead, i%l.BlockSize), l.DType)) * scale
				mx = max(mx, p[i])
			}
			var sum float32
			for i := range p {
				p[i] = expf(p[i] - mx)
				sum += p[i]
			}
			o := out.data[(r*heads+h)*hd:][:hd]
			clear(o)
			for i := range p {
				blk, off := int(blocks[i/l.BlockSize]), i%l.BlockSize
				vv := row(vr, pool.data, l.V(blk, j.kvHead, off), l.DType)
				w := p[i] / sum
				for d := range o {
					o[d] += w * vv[d]
				}
				if r >= scoreFrom {
					pool.data[l.Score(blk, j.kvHead, off)] += w
				}
			}
		}
	}
}

// attnTile computes causal attention for a tile of one query head's rows:
// row i of q [R, hd] sees the first first+i keys of k and v [n, hd] (n ≥
// first+R-1), and out [R, hd] = softmax(scale·q·kᵀ)·v. Both products go
// through BLAS; p (at least R·n) is left holding each row's probabilities,
// zero past the row's last key, with row stride n.
func attnTile(q, k, v blas32.General, first int, scale float32, p []float32, out blas32.General) {
	rows, n := q.Rows, k.Rows
	pm := blas32.General{Rows: rows, Cols: n, Stride: n, Data: p[:rows*n]}
	blas32.Gemm(blas.NoTrans, blas.Trans, 1, q, k, 0, pm)
	causalSoftmax(p, rows, n, first, scale)
	blas32.Gemm(blas.NoTrans, blas.NoTrans, 1, pm, v, 0, out)
}

// causalSoftmax turns rows of raw logits q·k (row stride n) into
// probabilities of scale·q·k: row i over its first first+i entries, the
// rest zeroed.
func causalSoftmax(p []float32, rows, n, first int, scale float32) {
	for i := range rows {
		row := p[i*n : (i+1)*n]
		seen := row[:first+i]
		mx := float32(math.Inf(-1))
		for _, x := range seen {
			mx = max(mx, x)
		}
		var sum float32
		for t, x := range seen {
			e := expf((x - mx) * scale)
			seen[t] = e
			sum += e
		}
		inv := 1 / sum
		for t := range seen {
			seen[t] *= inv
		}
		clear(row[first+i:])
	}
}

// grow returns buf with at least n elements, reusing its storage.
func grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}

func dot(a, b []float32) float32 {
	return blas32.Dot(blas32.Vector{N: len(a), Inc: 1, Data: a}, blas32.Vector{N: len(a), Inc: 1, Data: b})
}
