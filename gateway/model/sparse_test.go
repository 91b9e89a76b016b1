package model

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"

	"github.com/kvd-project/kvd/gateway/model/tinymodel"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/blocks"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/shm"
)

// headCache is the plain reference's view of one layer's cache for one KV
// head: which positions it holds, in order, and their scores.
type headCache struct {
	pos   []int
	score map[int]float64
}

// sparseReference runs tokens through m with dense attention, masking each
// layer and KV head to what the policy keeps, written from the policy
// definitions independently of the kernels: the first n tokens are a prompt
// (exact attention among themselves), the rest are decoded one at a time.
// It returns the logits after every token from n-1 on.
func sparseReference(m *Model, tokens []int32, n int, spec policy.Spec, blockSize int) [][]float32 {
	c, b := m.Config, m.b
	T, hd := len(tokens), c.HeadDim
	H, KH := c.NumHeads, c.NumKVHeads
	group := H / KH
	pos := make([]int32, T)
	for i := range pos {
		pos[i] = int32(i)
	}
	x, sc := b.Alloc(T, c.HiddenSize), m.newScratch(T)
	b.Embedding(x, m.w.embed, tokens)
	qh, kh, vh := make([]float32, T*H*hd), make([]float32, T*KH*hd), make([]float32, T*KH*hd)
	for li := range m.w.layers {
		l, p := &m.w.layers[li], spec[li]
		m.attnInput(sc, x, l, pos)
		b.ToHost(qh, sc.q)
		b.ToHost(kh, sc.k)
		b.ToHost(vh, sc.v)
		oh := make([]float32, T*H*hd)
		// probs returns query t's attention (per query head of the group)
		// over the given positions, and writes its output.
		attend := func(t, head int, over []int) []float64 {
			kvh := head / group
			q := qh[(t*H+head)*hd:][:hd]
			s := make([]float64, len(over))
			mx := math.Inf(-1)
			for i, j := range over {
				var d float64
				for e := range hd {
					d += float64(q[e]) * float64(kh[(j*KH+kvh)*hd+e])
				}
				s[i] = d / math.Sqrt(float64(hd))
				mx = math.Max(mx, s[i])
			}
			var sum float64
			for i := range s {
				s[i] = math.Exp(s[i] - mx)
				sum += s[i]
			}
			for i := range s {
				s[i] /= sum
			}
			for e := range hd {
				var acc float64
				for i, j := range over {
					acc += s[i] * float64(vh[(j*KH+kvh)*hd+e])
				}
				oh[(t*H+head)*hd+e] = float32(acc)
			}
			return s
		}
		obs := p.ObsWindow
		if obs == 0 {
			obs = policy.DefaultObsWindow
		}
		caches := make([]headCache, KH)
		for kvh := range KH {
			// The prompt: exact causal attention. Each query head sums
			// what the observation window's queries pay each token; the
			// KV head's raw score is the sum over its heads, its vote the
			// mean (or the max) of the heads' sums.
			perHead := make([][]float64, group)
			for g := range perHead {
				perHead[g] = make([]float64, n)
			}
			for t := range n {
				prefix := make([]int, t+1)
				for j := range prefix {
					prefix[j] = j
				}
				for g := range group {
					pr := attend(t, kvh*group+g, prefix)
					if t >= n-obs {
						for j, w := range pr {
							perHead[g][j] += w
						}
					}
				}
			}
			vote, raw := make([]float64, n), make([]float64, n)
			for j := range n {
				for g := range group {
					raw[j] += perHead[g][j]
				}
				if p.GQA == "max" {
					vote[j] = slices.Max(func() []float64 {
						col := make([]float64, group)
						for g := range group {
							col[g] = perHead[g][j]
						}
						return col
					}())
				} else {
					vote[j] = raw[j] / float64(group)
				}
			}
			hc := headCache{score: map[int]float64{}}
			keep := p.PrefillKeep(0, n)
			switch {
			case keep == n:
				for j := range n {
					hc.pos = append(hc.pos, j)
				}
			case p.Prefill == policy.Window:
				for j := range p.Sinks {
					hc.pos = append(hc.pos, j)
				}
				for j := n - (keep - p.Sinks); j < n; j++ {
					hc.pos = append(hc.pos, j)
				}
			default: // snapkv, pyramid
				hc.pos = snapKVKeep(vote, n, keep, obs, p.Sinks, p.Kernel, p.Pool == "avg")
			}
			if p.Decode == policy.H2O || keep < n {
				for _, j := range hc.pos {
					hc.score[j] = raw[j]
				}
			}
			// kvd cuts back between steps, the prompt's step included.
			if p.Evicts(len(hc.pos), blockSize) {
				hc.pos = h2oKeep(hc, p)
			}
			// Decode: each new token sees what the head holds and itself,
			// adds its attention to the scores, and the head is cut back
			// once it exceeds its decode budget by a block.
			for t := n; t < T; t++ {
				over := append(slices.Clone(hc.pos), t)
				for g := range group {
					pr := attend(t, kvh*group+g, over)
					if p.Decode == policy.H2O {
						for i, j := range over {
							hc.score[j] += pr[i]
						}
					}
				}
				hc.pos = over
				if p.Evicts(len(hc.pos), blockSize) {
					hc.pos = h2oKeep(hc, p)
				}
			}
			caches[kvh] = hc
		}
		m.attnOutputAndMLP(sc, x, b.FromHost(oh, T, H*hd), l)
	}
	rows := make([]int32, 0, T-n+1)
	for t := n - 1; t < T; t++ {
		rows = append(rows, int32(t))
	}
	lg, _, _ := m.logits(x, rows, nil, nil, nil)
	v := c.VocabSize
	out := make([][]float32, len(rows))
	for i := range out {
		out[i] = lg[i*v : (i+1)*v]
	}
	return out
}

// snapKVKeep is SnapKV's choice for one head: the first sinks positions,
// the last obs, and the keep-obs-sinks between with the highest votes after
// pooling (over the whole prefix before the window, sinks included).
func snapKVKeep(vote []float64, n, keep, obs, sinks, kernel int, avg bool) []int {
	prefix := n - obs
	pooled := make([]float64, prefix)
	for i := range prefix {
		var acc float64
		if !avg {
			acc = math.Inf(-1)
		}
		for j := i - kernel/2; j <= i+kernel/2; j++ {
			inside := j >= 0 && j < prefix
			switch {
			case avg && inside:
				acc += vote[j]
			case !avg && inside:
				acc = math.Max(acc, vote[j])
			}
		}
		if avg {
			acc /= float64(kernel)
		}
		pooled[i] = acc
	}
	var idx []int
	for i := sinks; i < prefix; i++ {
		idx = append(idx, i)
	}
	sort.SliceStable(idx, func(a, b int) bool { return pooled[idx[a]] > pooled[idx[b]] })
	out := slices.Clone(idx[:keep-obs-sinks])
	for i := range sinks {
		out = append(out, i)
	}
	slices.Sort(out)
	for j := prefix; j < n; j++ {
		out = append(out, j)
	}
	return out
}

// h2oKeep cuts a head back to its decode budget: sinks and the recent
// tokens stay, and of the rest the highest scores (earlier on a tie).
func h2oKeep(hc headCache, p policy.Layer) []int {
	held := hc.pos
	mid := slices.Clone(held[p.Sinks : len(held)-p.Recent])
	sort.SliceStable(mid, func(a, b int) bool { return hc.score[mid[a]] > hc.score[mid[b]] })
	heavy := mid[:p.DecodeBudget-p.Sinks-p.Recent]
	keep := map[int]bool{}
	for _, j := range heavy {
		keep[j] = true
	}
	var out []int
	for i, j := range held {
		if i < p.Sinks || i >= len(held)-p.Recent || keep[j] {
			out = append(out, j)
		}
	}
	return out
}

// pagedSparse runs the same tokens through kvd's engine (in process) and
// the paged forward pass: the prompt in one step, then one token a step.
func pagedSparse(t *testing.T, m *Model, tokens []int32, n int, spec policy.Spec, blockSize int) ([][]float32, *engine.Local) {
	return pagedSparseDType(t, m, tokens, n, spec, blockSize, shm.Float32)
}

func pagedSparseDType(t *testing.T, m *Model, tokens []int32, n int, spec policy.Spec, blockSize int, dt shm.DType) ([][]float32, *engine.Local) {
	t.Helper()
	c := m.Config
	kv, err := engine.NewLocal(shm.Layout{NumBlocks: 512, BlockSize: blockSize, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim, DType: dt}, spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := kv.Open(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var out [][]float32
	for start, end := 0, n; start < len(tokens); start, end = end, end+1 {
		id, plan, err := kv.Reserve(ctx, []blocks.Append{{Seq: 1, N: end - start}})
		if err != nil {
			t.Fatal(err)
		}
		bt := &Batch{Seqs: []Seq{{Tokens: tokens[start:end], Pos: start}}, LogitRows: []int32{int32(end - start - 1)}}
		for l := range plan.Layers() {
			p := plan.Layer(l)
			bt.Layers = append(bt.Layers, LayerKV{Policy: spec[l], Kept: p.Kept, Slots: p.Slots,
				Attn: kernels.AttnBatch{KVLen: p.KVLen, BlockIndptr: p.BlockIndptr, Blocks: p.Blocks}})
		}
		lg, err := m.Forward(ctx, bt, &Cache{Pool: kv.PoolTensor(m.b), Layout: kv.Layout()})
		if err != nil {
			t.Fatal(err)
		}
		kv.Done(id, false)
		out = append(out, lg)
	}
	return out, kv
}

func tinyModel(t *testing.T, seed uint64) *Model {
	t.Helper()
	dir := t.TempDir()
	if err := tinymodel.Write(dir, tinymodel.Options{Seed: seed}); err != nil {
		t.Fatal(err)
	}
	m, err := Load(context.Background(), dir, kernels.NewCPU(), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSparseMatchesMaskedReference checks every policy: the paged sparse
// path's logits after the prompt and after every decoded token equal the
// plain masked reference's.
func TestSparseMatchesMaskedReference(t *testing.T) {
	cases := []struct {
		name      string
		spec      string
		prompt    int
		decode    int
		blockSize int
	}{
		{"window", "all=window:sinks=4,window=20", 57, 30, 4},
		{"snapkv on layers 1-3", "1-3=snapkv:budget=24,obs_window=8,kernel=5", 61, 12, 16},
		{"snapkv avg pool, max over the group", "0-3=snapkv:budget=30,obs_window=6,kernel=3,pool=avg,gqa=max", 47, 9, 4},
		{"pyramid", "1-3=pyramid:budget=24,obs_window=8,beta=4", 73, 6, 4},
		{"snapkv then h2o", "1-3=snapkv:budget=24,obs_window=8/h2o:recent=8", 59, 41, 4},
		{"snapkv with sinks, then h2o", "0-3=snapkv:budget=26,obs_window=6,gqa=max/h2o:recent=5,sinks=3", 67, 30, 4},
		{"full then h2o with sinks", "all=full/h2o:heavy=12,recent=6,sinks=2", 29, 37, 4},
		{"seed preset", "", 83, 25, 16},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			seed := uint64(tc.prompt*1000 + tc.decode)
			m, spec, tokens := sparseCase(t, tc.spec, tc.prompt+tc.decode, seed, 1)
			t.Logf("seed %d, policies %v", seed, spec)
			want := sparseReference(m, tokens, tc.prompt, spec, tc.blockSize)
			got, kv := pagedSparse(t, m, tokens, tc.prompt, spec, tc.blockSize)
			for i := range want {
				if e := relErr(got[i], want[i]); e > 1e-4 {
					t.Fatalf("token %d: relative error %.2e against the masked reference", tc.prompt-1+i, e)
				}
			}
			// The masks must matter: sparse logits differ from full ones.
			full, err := m.Reference(context.Background(), tokens)
			if err != nil {
				t.Fatal(err)
			}
			v, differs := m.Config.VocabSize, 0.0
			for i := range want {
				r := tc.prompt - 1 + i
				differs = math.Max(differs, relErr(want[i], full[r*v:(r+1)*v]))
			}
			if differs < 1e-3 {
				t.Errorf("the sparse logits equal the full ones (%.1e): the policy kept everything", differs)
			}
			// The layers hold what their policies allow, and no more.
			st := kv.Engine().Status(context.Background())
			if spec[len(spec)-1].Decode == policy.H2O && st.TokensEvicted == 0 {
				t.Error("no decode-time eviction happened")
			}
			for l, p := range spec {
				held := st.Layers[l].TokensRetained
				limit := len(tokens)
				if p.Selects() {
					limit = min(limit, p.Budget+tc.decode)
				}
				if p.Decode != "" {
					limit = min(limit, p.DecodeBudget+tc.blockSize-1)
				}
				if held > limit || held < 1 {
					t.Errorf("layer %d (%s) holds %d tokens, at most %d allowed", l, p, held, limit)
				}
			}
		})
	}
}

// sparseCase is the tiny model, the policies spec names ("": the seed's
// preset on its last 3 layers, window 40) and n random tokens drawn from
// the PCG stream (seed, stream).
func sparseCase(t *testing.T, spec string, n int, seed, stream uint64) (*Model, policy.Spec, []int32) {
	t.Helper()
	m := tinyModel(t, 3)
	s, err := policy.Parse(spec, m.Config.NumLayers)
	if spec == "" {
		s, err = policy.Seed(m.Config.NumLayers, 3, 40)
	}
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, stream))
	tokens := make([]int32, n)
	for i := range tokens {
		tokens[i] = int32(rng.IntN(m.Config.VocabSize))
	}
	return m, s, tokens
}

func relErr(a, b []float32) float64 {
	var d, mx float64
	for i := range b {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
		mx = math.Max(mx, math.Abs(float64(b[i])))
	}
	return d / mx
}

// TestSparseBFloat16Pool runs the paged sparse path over a bfloat16 pool
// (--kv-cache-dtype bfloat16): its logits stay within bfloat16's rounding
// of the float32 pool's, through SnapKV's selection and H2O's evictions,
// and differ from them (the pool does round). A step's logits are
// typically 0.2-1% off; H2O may now and then evict another of two tokens
// whose accumulated scores the rounding reorders, and until the next
// eviction that step's logits are a few percent off, so the median is held
// to bfloat16's scale and the worst step looser.
func TestSparseBFloat16Pool(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		spec                      string
		prompt, decode, blockSize int
	}{
		{"full", "all=full", 41, 12, 4},
		{"snapkv then h2o", "1-3=snapkv:budget=24,obs_window=8/h2o:recent=8", 59, 41, 4},
		{"seed preset", "", 83, 25, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, spec, tokens := sparseCase(t, tc.spec, tc.prompt+tc.decode, uint64(tc.prompt), 2)
			want, _ := pagedSparseDType(t, m, tokens, tc.prompt, spec, tc.blockSize, shm.Float32)
			got, kv := pagedSparseDType(t, m, tokens, tc.prompt, spec, tc.blockSize, shm.BFloat16)
			if kv.Layout().DType != shm.BFloat16 {
				t.Fatalf("the pool is %v", kv.Layout().DType)
			}
			errs := make([]float64, len(want))
			for i := range want {
				errs[i] = relErr(got[i], want[i])
			}
			slices.Sort(errs)
			median, worst := errs[len(errs)/2], errs[len(errs)-1]
			t.Logf("relative difference from the float32 pool: median %.2e, worst %.2e", median, worst)
			if median == 0 || median > 1e-2 || worst > 0.1 {
				t.Errorf("bfloat16 pool's logits differ from float32's by %.2e (median), %.2e (worst): want above 0, at most 1e-2 and 0.1", median, worst)
			}
		})
	}
}
