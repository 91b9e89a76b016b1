package kernels

import (
	"cmp"
	"math"
	"slices"

	"gonum.org/v1/gonum/blas/blas32"

	"github.com/kvd-project/kvd/shm"
)

// Selection says which of a prompt's tokens a sparse layer keeps: the
// first Sinks and, for a window, the last Keep-Sinks; for SnapKV, the last
// ObsWindow and the Keep-Sinks-ObsWindow tokens between that the
// observation window's queries attend to most, after pooling the votes
// along the sequence with a Kernel-wide max (or average) filter. A KV
// head's vote for a token is its query heads' window attention, averaged
// (or the largest with GQAMax). Heads keep the same number of tokens but
// choose them independently.
type Selection struct {
	SnapKV    bool // false: window
	Keep      int
	Sinks     int
	ObsWindow int
	Kernel    int
	PoolAvg   bool // pool by average instead of max
	GQAMax    bool // a KV head's vote is the max over its queries, not the mean
}

// SparsePrefill handles one sequence's prompt in a sparse layer: rows
// [row0, row0+n) of q [T, H*Hd], k and v [T, KVHeads*Hd] are its n tokens,
// the whole prompt with nothing cached before it. The prompt's own
// attention is exact (out gets every row); then only the tokens sel keeps
// are written, per head, in position order, to slots (len sel.Keep), each
// with its score: the attention the observation window (the last ObsWindow
// queries) paid it, summed over the queries of its KV head's group.
func (c *CPU) SparsePrefill(out, q, k, v *Tensor, row0, n int, pool *Tensor, l shm.Layout, slots []int32, sel Selection, scale float32) {
	hd, kvh := l.HeadDim, l.KVHeads
	heads := q.Cols() / hd
	group := heads / kvh
	obsFrom := max(0, n-sel.ObsWindow)
	// raw[h][j]: observation-window attention to token j, summed over the
	// group; vote[h][j]: the same aggregated by mean or max for selection.
	raw := make([][]float64, kvh)
	vote := make([][]float64, kvh)
	for h := range kvh {
		raw[h], vote[h] = make([]float64, n), make([]float64, n)
	}
	// tile computes query head h's attention for prompt rows [r0, r1) into
	// out and leaves their probabilities in p (row stride r1).
	fma := hasFMA && hd%nr == 0
	var kvs []kvPanels
	if fma {
		kvs = make([]kvPanels, kvh)
		for kh := range kvs {
			kvs[kh].reset(n, hd)
			for i := range n {
				kvs[kh].set(i, k.data[((row0+i)*kvh+kh)*hd:], v.data[((row0+i)*kvh+kh)*hd:])
			}
		}
	}
	tile := func(h, r0, r1 int, p []float32) {
		kh := h / group
		if fma {
			o := ((row0+r0)*heads + h) * hd
			attnTileFMA(q.data[o:], heads*hd, r1-r0, &kvs[kh], r1, r0+1, scale, p, out.data[o:], heads*hd, p[len(p)-mr*max(hd, n):])
			return
		}
		qm := blas32.General{Rows: r1 - r0, Cols: hd, Stride: heads * hd, Data: q.data[((row0+r0)*heads+h)*hd:]}
		om := blas32.General{Rows: r1 - r0, Cols: hd, Stride: heads * hd, Data: out.data[((row0+r0)*heads+h)*hd:]}
		km := blas32.General{Rows: r1, Cols: hd, Stride: kvh * hd, Data: k.data[(row0*kvh+kh)*hd:]}
		vm := blas32.General{Rows: r1, Cols: hd, Stride: kvh * hd, Data: v.data[(row0*kvh+kh)*hd:]}
		attnTile(qm, km, vm, r0+1, scale, p, om)
	}
	// Rows before the observation window only produce outputs: split them
	// over every core, by head and row block.
	type job struct{ h, r0, r1 int }
	var jobs []job
	for h := range heads {
		for r := 0; r < obsFrom; r += attnRows {
			jobs = append(jobs, job{h, r, min(r+attnRows, obsFrom)})
		}
	}
	c.parallel(len(jobs), 1, func(lo, hi int) {
		p := make([]float32, attnRows*n+mr*max(hd, n)) // probabilities, then scratch
		for _, jb := range jobs[lo:hi] {
			tile(jb.h, jb.r0, jb.r1, p)
		}
	})
	// The window's rows also vote: one job per KV head owns its sums.
	c.parallel(kvh, 1, func(lo, hi int) {
		p := make([]float32, attnRows*n+mr*max(hd, n))
		headSum := make([]float64, n) // one query head's window attention per token
		for kh := lo; kh < hi; kh++ {
			for g := range group {
				clear(headSum)
				for r0 := obsFrom; r0 < n; r0 += attnRows {
					r1 := min(r0+attnRows, n)
					tile(kh*group+g, r0, r1, p)
					for i := range r1 - r0 {
						for j, w := range p[i*r1 : i*r1+r0+i+1] {
							headSum[j] += float64(w)
						}
					}
				}
				addVote(raw[kh], vote[kh], headSum, group, sel.GQAMax)
			}
		}
	})
	for kh := range kvh {
		keep := selectTokens(vote[kh], n, sel)
		for i, j := range keep {
			s := slots[i]
			blk, off := int(s)/l.BlockSize, int(s)%l.BlockSize
			putRow(pool.data[l.K(blk, kh, off):], k.data[((row0+j)*kvh+kh)*hd:][:hd], l.DType)
			putRow(pool.data[l.V(blk, kh, off):], v.data[((row0+j)*kvh+kh)*hd:][:hd], l.DType)
			pool.data[l.Score(blk, kh, off)] = float32(raw[kh][j])
		}
	}
}

// addVote adds one query head's observation-window sums to its KV head's
// raw score (the sum over the group) and vote (mean or max over it).
func addVote(raw, vote, headSum []float64, group int, gqaMax bool) {
	for j, w := range headSum {
		raw[j] += w
		if gqaMax {
			vote[j] = math.Max(vote[j], w)
		} else {
			vote[j] += w / float64(group)
		}
	}
}

// selectTokens returns, ascending, the sel.Keep tokens of n that one head
// keeps, given its observation-window votes.
func selectTokens(vote []float64, n int, sel Selection) []int {
	keep := make([]int, 0, sel.Keep)
	if !sel.SnapKV {
		for j := range min(sel.Sinks, n) {
			keep = append(keep, j)
		}
		for j := max(n-(sel.Keep-len(keep)), len(keep)); j < n; j++ {
			keep = append(keep, j)
		}
		return keep
	}
	obsFrom := max(0, n-sel.ObsWindow)
	sinks := min(sel.Sinks, obsFrom)
	for j := range sinks {
		keep = append(keep, j)
	}
	pooled := pool1D(vote[:obsFrom], sel.Kernel, sel.PoolAvg)
	cand := make([]int, 0, obsFrom-sinks)
	for j := sinks; j < obsFrom; j++ {
		cand = append(cand, j)
	}
	// Highest pooled vote first; the earlier token wins a tie (a total
	// order, so an unstable sort gives the stable one's answer; a NaN
	// vote ranks lowest).
	slices.SortFunc(cand, func(a, b int) int {
		if c := cmp.Compare(pooled[b], pooled[a]); c != 0 {
			return c
		}
		return cmp.Compare(a, b)
	})
	top := cand[:min(len(cand), sel.Keep-(n-obsFrom)-sinks)]
	keep = append(keep, top...)
	slices.Sort(keep)
	for j := obsFrom; j < n; j++ {
		keep = append(keep, j)
	}
	return keep
}

// pool1D filters x with a width-k window centred on each element (zero
// padding outside, as SnapKV's F.max_pool1d/avg_pool1d with padding k/2).
func pool1D(x []float64, k int, avg bool) []float64 {
	out := make([]float64, len(x))
	r := k / 2
	for i := range x {
		var acc float64
		if !avg {
			acc = math.Inf(-1)
		}
		for j := i - r; j <= i+r; j++ {
			v := 0.0
			if j >= 0 && j < len(x) {
				v = x[j]
			} else if !avg {
				continue
			}
			if avg {
				acc += v
			} else {
				acc = math.Max(acc, v)
			}
		}
		if avg {
			acc /= float64(k)
		}
		out[i] = acc
	}
	return out
}

// Evict cuts one (sequence, layer) table of tokens tokens in blocks down to
// keep tokens per head: the first sinks and the last recent stay, and of the
// rest each head keeps those with the highest scores (the earlier on a
// tie). Kept entries move, in order, to the first keep slots (K, V and
// score), so the table's blocks past keep can be freed.
func (c *CPU) Evict(pool *Tensor, l shm.Layout, jobs []EvictJob) {
	for _, j := range jobs {
		c.evict(pool, l, j.Blocks, j.Tokens, j.Keep, j.Sinks, j.Recent)
	}
}

func (c *CPU) evict(pool *Tensor, l shm.Layout, blocks []int32, tokens, keep, sinks, recent int) {
	hd := l.RowElems() // rows move as words, whatever the dtype
	slot := func(i int) (int, int) { return int(blocks[i/l.BlockSize]), i % l.BlockSize }
	c.parallel(l.KVHeads, 1, func(lo, hi int) {
		for h := lo; h < hi; h++ {
			src := evictSources(func(i int) float32 {
				b, o := slot(i)
				return pool.data[l.Score(b, h, o)]
			}, tokens, keep, sinks, recent)
			// dst <= src throughout, so moving front to back never
			// overwrites an entry still to be moved.
			for dst, s := range src {
				if dst == s {
					continue
				}
				db, do := slot(dst)
				sb, so := slot(s)
				copy(pool.data[l.K(db, h, do):][:hd], pool.data[l.K(sb, h, so):][:hd])
				copy(pool.data[l.V(db, h, do):][:hd], pool.data[l.V(sb, h, so):][:hd])
				pool.data[l.Score(db, h, do)] = pool.data[l.Score(sb, h, so)]
			}
		}
	})
}

// evictSources is the ascending list of the table tokens one head keeps
// when cut from tokens to keep: the first sinks, the last recent, and
// between them the keep-sinks-recent with the highest score (the earlier
// on a tie; a NaN score ranks lowest). Eviction runs every block of decode
// in every sparse layer of every sequence, and drops about a block of a
// window of a thousand or more, so it finds the few to drop rather than
// sorting all of them.
func evictSources(score func(i int) float32, tokens, keep, sinks, recent int) []int {
	heavy := keep - sinks - recent
	lo, hi := sinks, tokens-recent // the middle, where heavy tokens compete
	src := make([]int, 0, max(keep, 0))
	for i := range min(sinks, tokens) {
		src = append(src, i)
	}
	if n := hi - lo; n > 0 {
		drop := dropLowest(score, lo, hi, n-min(max(heavy, 0), n))
		for i := lo; i < hi; i++ {
			if len(drop) > 0 && drop[0] == i {
				drop = drop[1:]
				continue
			}
			src = append(src, i)
		}
	}
	for i := max(tokens-recent, sinks); i < tokens; i++ {
		src = append(src, i)
	}
	return src
}

// dropLowest is, ascending, the d tokens of [lo, hi) that rank lowest: by
// score, and on a tie the later one.
func dropLowest(score func(i int) float32, lo, hi, d int) []int {
	if d <= 0 {
		return nil
	}
	type cand struct {
		i int
		s float32
	}
	// worse orders candidates from the first to drop.
	worse := func(a, b cand) int {
		if c := cmp.Compare(a.s, b.s); c != 0 {
			return c
		}
		return cmp.Compare(b.i, a.i)
	}
	var w []cand
	if d <= 64 {
		// Keep the d worst seen so far, sorted worst first.
		w = make([]cand, 0, d+1)
		for i := lo; i < hi; i++ {
			c := cand{i, score(i)}
			if len(w) == d && worse(c, w[d-1]) >= 0 {
				continue
			}
			at, _ := slices.BinarySearchFunc(w, c, worse)
			w = slices.Insert(w, at, c)
			if len(w) > d {
				w = w[:d]
			}
		}
	} else {
		w = make([]cand, 0, hi-lo)
		for i := lo; i < hi; i++ {
			w = append(w, cand{i, score(i)})
		}
		slices.SortFunc(w, worse)
		w = w[:d]
	}
	out := make([]int, len(w))
	for k, c := range w {
		out[k] = c.i
	}
	slices.Sort(out)
	return out
}
