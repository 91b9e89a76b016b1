package kernels

// The FMA Linear: w [N, K] is packed once, on first use, into panels of 16
// output features (panel p holds w[16p+j][k] at [k][j], zero past N), so
// the kernel reads 16 contiguous floats per k. x is read in place, six rows
// at a time; each 6 × 16 tile of out is computed whole over K (no K
// blocking: the model sizes this serves keep a panel in L1/L2) into a
// scratch tile and copied out.

const (
	mr = 6  // rows of x per kernel call
	nr = 16 // output features per panel
)

// packed is a weight in panel layout.
type packed struct {
	panels []float32 // [ceil(N/16)][K][16]
	n, k   int
}

func packPanels(w *Tensor) *packed {
	n, k := w.Rows(), w.Cols()
	np := (n + nr - 1) / nr
	p := &packed{panels: make([]float32, np*k*nr), n: n, k: k}
	for j := range n {
		panel, col := j/nr, j%nr
		dst := p.panels[panel*k*nr:]
		row := w.data[j*k : (j+1)*k]
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
				panel := p.panels[pi*k*nr : (pi+1)*k*nr]
				cols := min(nr, n-pi*nr)
				for r := r0; r < r1; r += mr {
					rows := min(mr, r1-r)
					a := x.data[r*k:]
					if rows < mr {
						a = pad
					}
					sgemm6x16(&a[0], k, &panel[0], k, &tile[0])
					for i := range rows {
						copy(out.data[(r+i)*n+pi*nr:][:cols], tile[i*nr:i*nr+cols])
					}
				}
			}
		}
	})
}
