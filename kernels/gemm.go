package kernels

import "math"

// The FMA Linear: w [N, K] is packed once, on first use, into panels of 16
// output features (panel p holds w[16p+j][k] at [k][j], zero past N), so
// the kernel reads 16 contiguous values per k. x is read in place, six rows
// at a time; each 6 × 16 tile of out is computed whole over K (no K
// blocking: the model sizes this serves keep a panel in L1/L2) into a
// scratch tile and copied out.

const (
	mr = 6  // rows of x per kernel call
	nr = 16 // output features per panel
)

// packed is a weight in panel layout: as bfloat16 when every value is one
// exactly (a bf16 checkpoint: the panels are then exact and half the size,
// which is what a memory-bound decode step gains from), else float32.
type packed struct {
	panels []float32 // [ceil(N/16)][K][16], or nil
	half   []uint16  // the same as bfloat16 bits, or nil
	n, k   int
}

func packPanels(w *Tensor) *packed {
	n, k := w.Rows(), w.Cols()
	np := (n + nr - 1) / nr
	p := &packed{n: n, k: k}
	exact := true
	for _, v := range w.data {
		if math.Float32bits(v)&0xffff != 0 {
			exact = false
			break
		}
	}
	if exact {
		p.half = make([]uint16, np*k*nr)
	} else {
		p.panels = make([]float32, np*k*nr)
	}
	for j := range n {
		panel, col := j/nr, j%nr
		row := w.data[j*k : (j+1)*k]
		if exact {
			dst := p.half[panel*k*nr:]
			for kk, v := range row {
				dst[kk*nr+col] = uint16(math.Float32bits(v) >> 16)
			}
			continue
		}
		dst := p.panels[panel*k*nr:]
		for kk, v := range row {
			dst[kk*nr+col] = v
		}
	}
	return p
}

// weightPanels returns w's panels, packing them the first time.
func weightPanels(w *Tensor) *packed {
	if p := w.packed.Load(); p != nil {
		return p
	}
	p := packPanels(w)
	w.packed.CompareAndSwap(nil, p)
	return w.packed.Load()
}

// linearFMA is Linear with the AVX2 kernel. Workers split the panels;
// each walks the rows in blocks so a block of x stays in cache while its
// panels stream past.
func (c *CPU) linearFMA(out, x, w *Tensor) {
	t, k := x.Rows(), x.Cols()
	p := weightPanels(w)
	n := p.n
	np := (n + nr - 1) / nr
	const rowBlock = 16 * mr
	c.parallel(np, 1, func(lo, hi int) {
		var tile [mr * nr]float32
		var pad []float32 // a block's last rows, padded to mr
		for r0 := 0; r0 < t; r0 += rowBlock {
			r1 := min(r0+rowBlock, t)
			if tail := (r1 - r0) % mr; tail != 0 {
				if pad == nil {
					pad = make([]float32, mr*k)
				}
				clear(pad)
				copy(pad, x.data[(r1-tail)*k:r1*k])
			}
			for pi := lo; pi < hi; pi++ {
				cols := min(nr, n-pi*nr)
				for r := r0; r < r1; r += mr {
					rows := min(mr, r1-r)
					a := x.data[r*k:]
					if rows < mr {
						a = pad
					}
					if p.half != nil {
						sgemm6x16h(&a[0], k, &p.half[pi*k*nr], k, &tile[0])
					} else {
						sgemm6x16(&a[0], k, &p.panels[pi*k*nr], k, &tile[0])
					}
					for i := range rows {
						copy(out.data[(r+i)*n+pi*nr:][:cols], tile[i*nr:i*nr+cols])
					}
				}
			}
		}
	})
}

// kvPanels is one KV head's keys and values [n, hd] laid out for the FMA
// kernel: keys in panels of 16 tokens ([ceil(n/16)][hd][16]), so that q·kᵀ
// reads them as a Linear reads a weight, and values in panels of 16 dims
// ([hd/16][n][16]) for p·v. hd must be a multiple of 16.
type kvPanels struct {
	k, v  []float32
	n, hd int
}

func (kv *kvPanels) reset(n, hd int) {
	kv.n, kv.hd = n, hd
	kv.k = grow(kv.k, (n+nr-1)/nr*hd*nr)
	kv.v = grow(kv.v, n*hd)
	clear(kv.k[n/nr*hd*nr:]) // the last panel's unused columns
}

// set stores token i's key and value (each at least hd long).
func (kv *kvPanels) set(i int, key, val []float32) {
	hd := kv.hd
	kp := kv.k[i/nr*hd*nr+i%nr:]
	for d, x := range key[:hd] {
		kp[d*nr] = x
	}
	for c := 0; c < hd; c += nr {
		copy(kv.v[c*kv.n+i*nr:][:nr], val[c:c+nr])
	}
}

// attnTileFMA is attnTile on the FMA kernel: rows query rows of q (row
// stride qs) over the first keys keys of kv, row i seeing the first first+i;
// out has row stride os. p (at least rows·keys) is left holding each row's
// probabilities, zero past its last key, with row stride keys; pad is
// scratch of at least 6·max(hd, keys).
func attnTileFMA(q []float32, qs, rows int, kv *kvPanels, keys, first int, scale float32, p, out []float32, os int, pad []float32) {
	hd, n := kv.hd, keys
	var tile [mr * nr]float32
	for r := 0; r < rows; r += mr {
		cnt := min(mr, rows-r)
		a, lda := q[r*qs:], qs
		if cnt < mr {
			a, lda = pad[:mr*hd], hd
			clear(a)
			for i := range cnt {
				copy(a[i*hd:(i+1)*hd], q[(r+i)*qs:][:hd])
			}
		}
		for pi := 0; pi*nr < n; pi++ {
			sgemm6x16(&a[0], lda, &kv.k[pi*hd*nr], hd, &tile[0])
			cols := min(nr, n-pi*nr)
			for i := range cnt {
				copy(p[(r+i)*n+pi*nr:][:cols], tile[i*nr:i*nr+cols])
			}
		}
	}
	causalSoftmax(p, rows, n, first, scale)
	for r := 0; r < rows; r += mr {
		cnt := min(mr, rows-r)
		a := p[r*n:]
		if cnt < mr {
			a = pad[:mr*n]
			clear(a)
			copy(a, p[r*n:(r+cnt)*n])
		}
		for c := 0; c < hd; c += nr {
			sgemm6x16(&a[0], n, &kv.v[c*kv.n], n, &tile[0])
			for i := range cnt {
				copy(out[(r+i)*os+c:][:nr], tile[i*nr:(i+1)*nr])
			}
		}
	}
}
