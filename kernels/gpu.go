//go:build cgo

package kernels

import (
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/shm"
)

// The kernels as `make kernels` builds them: one fat binary per .cu file,
// with machine code for sm_80 and sm_90 and PTX the driver compiles for
// anything newer.
//
//go:embed cudabin/*.fatbin cudabin/*.ptx
var cudaBins embed.FS

// CUDA is the GPU backend: activations in float32 (but GEMM inputs from
// AllocLinearInput in bf16), weight matrices in bf16 (GEMMs through
// cuBLAS, bf16 in, float32 accumulate), the pool's K and V
// in float32, bfloat16 or fp8 (E4M3) as shm.Layout lays them out (kernels
// that write or read them as numbers have a _bf16 variant for a bfloat16
// pool and an _fp8 one for an fp8 pool; those that move rows take a row's
// length in words and serve all three), all work
// in order on the context's legacy default stream. Device memory for a
// step's scratch comes from a cache of power-of-two size classes that Free
// returns to, as PyTorch's allocator.
type CUDA struct {
	drv  *cuda.Driver
	ctx  *cuda.Context
	dev  cuda.Device
	blas *cuda.BLAS
	fns  map[string]*cuda.Function

	mu    sync.Mutex
	cache map[int][]cuda.Ptr // free device buffers by size class (bytes)
	err   error              // the first failure since Err
	// stage is pinned host memory that a step's small inputs (token
	// positions, slots, attention tables) are copied through, so their
	// uploads queue behind the kernels instead of waiting for them (a
	// copy from pageable memory first drains the stream). It is reused
	// from the start after each point where the stream is known drained.
	stage    *cuda.Pinned
	stageOff int
	// up is the non-blocking stream staged uploads run on, each followed
	// by a wait of the default stream on upDone: the copy engine moves a
	// step's tables while the kernels before their readers run, instead of
	// the SMs idling for each copy in turn (~50 µs a layer of the 8B on
	// an H200, before five kernels: run 15's KVD_KERNEL_PROFILE). Its destinations
	// come from upFree and wait in upHeld from their release until the
	// device drains, so that a copy, which may run before kernels queued
	// earlier, never overwrites a buffer one of them reads (the default
	// stream's own cache relies on its order). Zero with
	// KVD_UPLOAD_STREAM=0: uploads queue on the default stream.
	up      cuda.Stream
	upDone  cuda.Event
	upOn    bool
	upFree  map[int][]cuda.Ptr // idle upload buffers by size class
	upHeld  []heldBuf          // released since the device last drained
	upBytes int                // bytes in upHeld
	// hostSelect makes SparsePrefill choose SnapKV's tokens on the host
	// (KVD_HOST_SELECT=1): a copy back and a wait per sparse layer, which
	// made sparse prefill twice as slow as full on an H200.
	hostSelect bool
	// gpuEvict makes Evict choose and compact on the device (evict_many:
	// no scores copied back, one wait instead of two), the default;
	// KVD_HOST_EVICT=1 chooses on the host, as before. On an H200 the
	// device's choice took kvd's eviction from 3.4 to 0.4 ms a step and
	// 26 layers / window 1024 from 831.9 to 924.5 tokens/s
	// (bench/results/gpu-g.md).
	gpuEvict bool
	// attnV2 sends decode and other pool rows at head dim 128 to
	// split_paged_v2, which keeps more of K and V in flight than
	// split_paged: the default; KVD_ATTN_V1=1 gives split_paged. On an
	// H200 it took a 32-sequence decode step of the 8B model from 35.2 to
	// 19.9 ms and full KV from 607 to 836 tokens/s (bench/results/gpu-g.md).
	attnV2 bool
	// flashMMA runs prompts' tensor-core attention on the bf16 m16n8k16
	// kernels of flash_mma.cuh, the default; KVD_FLASH_TF32=1 gives the
	// TF32 ones. Q, K, V and P are rounded to bf16 (as vLLM's and HF's bf16
	// attention do), half the mma instructions for the work, P kept in
	// registers. On an H200, a 5000-token prompt's attention went from 54
	// to 104 TFLOP/s over a float32 pool (167 over bfloat16), and full KV
	// at the 8B workload from 840 to 918 tokens/s (bench/results/gpu-g.md).
	flashMMA bool
	// evictTiming, with KVD_STEP_TIMING=N, logs where Evict's time went
	// every N calls (for developers).
	evictTiming phases
	// fusedScore (the default; KVD_SCORE_PAGED=1 turns it off) has
	// split_paged_v2 over a bfloat16 or fp8 pool leave a scoring row's logits for
	// H2O's scoring pass (split_paged_v2_score, score_logits) instead of
	// score_paged reading the layer's K a second time: on an H200 that
	// second read was 1.4 ms of a 14.8 ms decode step at 26 sparse layers
	// (run 7), and the fused pass took the 26-layer / 1024 preset's decode
	// step from 11.7 to 10.7 ms, 1270 to 1331 tokens/s (run 8,
	// bench/results/gpu-g.md).
	fusedScore bool
	// promptBF16 (the default with flashMMA; KVD_PROMPT_F32=1 turns it
	// off) rounds a sparse layer's prompt K and V to bf16 once and runs
	// its tensor-core attention on bf16 tiles (flash_prompt_mma_bf16), as
	// over a bfloat16 pool, instead of rounding float32 tiles fragment by
	// fragment: the same values, and on an H200 the float32 tiles took
	// 1632 µs a layer at 5000 tokens against 1304 over bf16 (run 7); the
	// 26-layer / 1024 preset's TTFT p50 went from 3.19 to 2.95 s and its
	// rate from 1331 to 1377 tokens/s (run 8). The bf16 copies are in the
	// gateway's activation budget (gateway/cli activationBytes).
	promptBF16 bool
	// obsTiles (the default; KVD_OBS_SPLIT=1 turns it off) has a sparse
	// layer's tensor-core prompt kernel attend the observation window's
	// rows too, and obsVote take their votes over tiles of K in shared
	// memory, K read twice in all; the split kernels read K and V once a
	// row (and K again to vote): on an H200, 0.73 s of a 6.4 s prefill of
	// 32 prompts of 5000 tokens at 26 sparse layers (run 7).
	obsTiles bool
	// ownCombine (the default; KVD_ATTN_COMBINE=1 turns it off) has
	// split_paged_v2 merge each row's partials in the CTA that finishes
	// the row's last item, instead of in attn_combine's launch after it
	// (14 µs a layer at 32 rows on an H200, 0.45 ms of a decode step, run
	// 8). counts is the zeroed [rows, kvh] the CTAs count their items in;
	// each row's last CTA zeroes its count again.
	ownCombine bool
	// decodeMMA (the default; KVD_DECODE_MMA=0 turns it off) runs
	// split_paged_v2's rows over a bfloat16 or fp8 pool on the tensor
	// cores instead (split_paged_mma, decode_mma.cuh): the same items,
	// partials and merge, each warp's chunk of 32 keys as mma.sync tiles
	// with the queries and probabilities in registers. split_paged_v2 was
	// bound by L1 and issue, not DRAM (run 10's ncu), so fp8 K and V, half
	// the bytes, ran only 10% faster than bfloat16. It takes
	// split_paged_v2's rows, so KVD_ATTN_V1=1 turns it off too.
	decodeMMA bool
	// flashLightFirst (KVD_FLASH_ROW_ORDER=1; for A/B runs) launches
	// flash_paged's tiles in row order instead of heaviestFirst's.
	flashLightFirst bool
	// widenFP8 (the default; KVD_FP8_WIDEN=0 turns it off) runs a chunk's
	// prompt attention over an fp8 pool on the bfloat16 kernel, over the
	// chunk's sequences' blocks widened once into a scratch pool
	// (widen_fp8), instead of on the fp8 kernel, which widens every tile
	// once for each query tile and head that reads it: see widenTiles.
	widenFP8 bool
	widened  int // widenTiles' launches, for tests
	// streamV2 (the default; KVD_DECODE_STREAM=0 turns it off) gives
	// split_paged_v2's and split_paged_mma's launches whose rows do not
	// score as many CTAs as the card holds at once (one wave), each with
	// the same share of the launch's keys (rowWork.stream), instead of
	// items of a row each (splitPerSMV2): with rows of equal length (a
	// batch of decodes) those ran in whole waves, the last one partly
	// empty. On an H200 (run 14) decode at 128 × 5000 over fp8 went from
	// 409.7 to 397.0 µs, at 32 × 5000 from 129.0 to 124.0.
	streamV2 bool
	// gateUpBF16 makes AllocGateUp bf16 (the gate and up projections'
	// GEMM writes bf16, silu_mul reads it, as HF's bf16 MLP rounds them),
	// and fusedResidual makes FusedResidual true (the o and down
	// projections add to the residual in cuBLAS's epilogue, LinearAdd):
	// both the default, KVD_GATEUP_BF16=0 and KVD_FUSED_RESIDUAL=0 turn
	// them off. Run 14 measured them together: ~3% of a served step's
	// device time on an H200. Run 15 tried each alone: the fused residual
	// left every agreement as it was and served full KV 1.0% faster
	// (2310.1 against 2286.2 tokens/s, both profiled); with the bf16 gate
	// and up, concurrent requests agreed with sequential ones on 0.927 of
	// greedy tokens over bfloat16, where they had on all, and
	// TestGPUSidecar now checks that each such divergence is a near-tie
	// (bench/results/gpu-g.md, run 15).
	gateUpBF16, fusedResidual bool
	occ                       map[string]int // CTAs of 128 threads an SM holds, by kernel (occupancy)
	// flashWGMMA (the default on sm_90, an H100 or H200; KVD_FLASH_WGMMA=0
	// turns it off) runs the prefill kernels over bf16 and fp8 tiles on
	// Hopper's warpgroup tensor cores (flash_wgmma.cuh, the PTX of
	// attention_sm90a.cu that the driver compiles when the kernels load)
	// instead of flash_mma's mma.sync.
	flashWGMMA bool
	wgmmaErr   error // why an sm_90 card runs without them
	counts     cuda.Ptr
	countsN    int
	// prof, while StartProfile has it on (profOn), times every kernel
	// (profile.go).
	prof   *kernelProfile
	profOn atomic.Bool
}

// phases sums the time of an operation's phases over calls and logs the
// means every every calls. A call gives a name per phase and the times
// that bound them (one more than the names).
type phases struct {
	every, calls int
	what         string
	sum          []time.Duration
}

func (p *phases) add(what string, names []string, t ...time.Time) {
	if p.every <= 0 {
		return
	}
	if p.what != what { // another way of doing the operation: start over
		*p = phases{every: p.every, what: what, sum: make([]time.Duration, len(names))}
	}
	p.calls++
	for i := range p.sum {
		p.sum[i] += t[i+1].Sub(t[i])
	}
	if p.calls < p.every {
		return
	}
	args := []any{"calls", p.calls}
	for i, n := range names {
		args = append(args, n, fmt.Sprintf("%.3f ms", float64(p.sum[i])/float64(p.calls)/1e6))
	}
	slog.Info(what, args...)
	p.calls = 0
	clear(p.sum)
}

// stageBytes is the pinned staging area's size; a larger upload goes
// synchronously, and a step whose uploads fill it waits for the device
// once to start it over. A step's uploads are mostly its block tables,
// twice a layer (the prompt kernel's and the decode kernel's): at 5000
// tokens of context in 16-token blocks, 128 sequences upload ~11 MB a
// step over the 8B's 32 layers, 256 about twice that.
const stageBytes = 64 << 20

// NewCUDA opens the driver and cuBLAS and loads the kernels on GPU index.
// It fails with an error wrapping cuda.ErrNoDriver when there is no usable
// driver or no such GPU.
func NewCUDA(index int) (*CUDA, error) {
	drv, err := cuda.Open()
	if err != nil {
		return nil, err
	}
	devs, err := drv.Devices()
	if err != nil {
		drv.Close()
		return nil, err
	}
	if index < 0 || index >= len(devs) {
		drv.Close()
		return nil, fmt.Errorf("%w: GPU %d asked for, driver %s sees %d", cuda.ErrNoDriver, index, drv.Version(), len(devs))
	}
	c := &CUDA{drv: drv, dev: devs[index], fns: map[string]*cuda.Function{}, cache: map[int][]cuda.Ptr{}, hostSelect: os.Getenv("KVD_HOST_SELECT") == "1"}
	c.evictTiming.every, _ = strconv.Atoi(os.Getenv("KVD_STEP_TIMING"))
	c.gpuEvict = os.Getenv("KVD_HOST_EVICT") != "1"
	c.attnV2 = os.Getenv("KVD_ATTN_V1") != "1"
	c.flashMMA = os.Getenv("KVD_FLASH_TF32") != "1"
	c.fusedScore = os.Getenv("KVD_SCORE_PAGED") != "1"
	c.promptBF16 = os.Getenv("KVD_PROMPT_F32") != "1"
	c.obsTiles = os.Getenv("KVD_OBS_SPLIT") != "1"
	c.ownCombine = os.Getenv("KVD_ATTN_COMBINE") != "1"
	c.decodeMMA = os.Getenv("KVD_DECODE_MMA") != "0"
	c.flashLightFirst = os.Getenv("KVD_FLASH_ROW_ORDER") == "1"
	c.widenFP8 = os.Getenv("KVD_FP8_WIDEN") != "0"
	c.streamV2 = os.Getenv("KVD_DECODE_STREAM") != "0"
	c.gateUpBF16 = os.Getenv("KVD_GATEUP_BF16") != "0"
	c.fusedResidual = os.Getenv("KVD_FUSED_RESIDUAL") != "0"
	c.occ = map[string]int{}
	if c.ctx, err = drv.Context(c.dev); err != nil {
		drv.Close()
		return nil, err
	}
	if c.blas, err = c.ctx.BLAS(); err != nil {
		c.Close()
		return nil, err
	}
	if c.stage, err = c.ctx.HostAlloc(stageBytes); err != nil {
		c.Close()
		return nil, err
	}
	if os.Getenv("KVD_UPLOAD_STREAM") != "0" {
		if c.up, err = c.ctx.NewStream(); err == nil {
			c.upDone, err = c.ctx.NewEvent()
		}
		if err != nil {
			c.Close()
			return nil, err
		}
		c.upOn, c.upFree = true, map[int][]cuda.Ptr{}
	}
	entries, err := cudaBins.ReadDir("cudabin")
	if err != nil {
		c.Close()
		return nil, err
	}
	// KVD_CUDABIN_DIR (for developers on a GPU machine with nvcc) loads
	// the fat binaries found there instead of the embedded ones: kernel
	// variants built there can be tested and timed without rebuilding
	// the Go binaries.
	override := os.Getenv("KVD_CUDABIN_DIR")
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".fatbin") {
			continue
		}
		img, err := kernelImage(e.Name(), override)
		if err != nil {
			c.Close()
			return nil, err
		}
		m, err := c.ctx.LoadModule(img)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("loading kernels %s on %s: %w", e.Name(), c.dev, err)
		}
		for _, name := range kernelNames[strings.TrimSuffix(e.Name(), ".fatbin")] {
			if c.fns[name], err = m.Function(name); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	if c.dev.Major == 9 && c.dev.Minor == 0 && os.Getenv("KVD_FLASH_WGMMA") != "0" {
		// A driver too old for PTX ISA 8.0 (before 525) cannot compile
		// them: the mma.sync kernels serve instead.
		if c.wgmmaErr = c.loadSM90a(override); c.wgmmaErr != nil {
			slog.Warn("prefill attention without wgmma", "err", c.wgmmaErr)
		}
		c.flashWGMMA = c.wgmmaErr == nil
	}
	for _, hd := range []int{64, 128} {
		for _, k := range []struct {
			base string
			dt   shm.DType
		}{{"flash_paged", shm.Float32}, {"flash_paged", shm.BFloat16}, {"flash_paged", shm.FP8E4M3}, {"flash_prompt", shm.Float32}, {"flash_prompt", shm.BFloat16}} {
			for _, mma := range []bool{false, true} {
				if !flashExists(k.base, k.dt, mma) {
					continue
				}
				name, smem := flashKernel(k.base, hd, k.dt, mma)
				if err := c.fns[name].SetMaxDynamicShared(smem); err != nil {
					c.Close()
					return nil, err
				}
			}
			if c.flashWGMMA && wgmmaExists(k.base, k.dt) {
				name, smem := wgmmaKernel(k.base, hd, k.dt)
				if err := c.fns[name].SetMaxDynamicShared(smem); err != nil {
					c.Close()
					return nil, err
				}
			}
		}
	}
	return c, nil
}

// kernelImage is the embedded cudabin/file, or override's file of that
// name where override (KVD_CUDABIN_DIR) is set and has one.
func kernelImage(file, override string) ([]byte, error) {
	if override != "" {
		if b, err := os.ReadFile(filepath.Join(override, file)); err == nil {
			slog.Info("kernels from KVD_CUDABIN_DIR", "file", filepath.Join(override, file))
			return b, nil
		}
	}
	return cudaBins.ReadFile("cudabin/" + file)
}

// loadSM90a loads attention_sm90a.ptx's wgmma kernels (from dir instead
// when it has the file: KVD_CUDABIN_DIR), which the driver compiles for
// the card here.
func (c *CUDA) loadSM90a(dir string) error {
	const file = "attention_sm90a.ptx"
	img, err := kernelImage(file, dir)
	if err != nil {
		return err
	}
	start := time.Now()
	m, err := c.ctx.LoadModule(img)
	if err != nil {
		return fmt.Errorf("compiling the wgmma kernels (%s) on %s: %w", file, c.dev, err)
	}
	slog.Debug("wgmma kernels compiled by the driver", "file", file, "took", time.Since(start))
	for _, name := range sm90aKernels() {
		if c.fns[name], err = m.Function(name); err != nil {
			m.Unload()
			return err
		}
	}
	return nil
}

// wgmmaBufs is flash_wgmma.cuh's FLASH_WGMMA_BUFS, the K and V buffers in
// flight; KVD_WGMMA_BUFS sizes the shared memory for a variant built with
// another (for developers, with KVD_CUDABIN_DIR: the two must agree, or
// such a variant reads past its shared memory).
var wgmmaBufs = 2

func init() {
	if n, err := strconv.Atoi(os.Getenv("KVD_WGMMA_BUFS")); err == nil && n >= 2 && n <= 4 {
		wgmmaBufs = n
	}
}

// sm90aKernels are attention_sm90a.cu's entry points: a wgmma kernel for
// every base and dtype wgmmaExists names, at head dims 64 and 128.
func sm90aKernels() []string {
	var names []string
	for _, base := range []string{"flash_paged", "flash_prompt"} {
		for _, dt := range []shm.DType{shm.BFloat16, shm.FP8E4M3} {
			for _, hd := range []int{64, 128} {
				if wgmmaExists(base, dt) {
					name, _ := wgmmaKernel(base, hd, dt)
					names = append(names, name)
				}
			}
		}
	}
	return names
}

// wgmmaExists reports whether base has a wgmma kernel over K and V stored
// as dt: the pool's bf16 and fp8, a prompt's bf16 copies.
func wgmmaExists(base string, dt shm.DType) bool {
	switch dt {
	case shm.BFloat16:
		return true
	case shm.FP8E4M3:
		return base == "flash_paged"
	}
	return false
}

// wgmmaKernel is base's wgmma kernel for K and V stored as dt at head dim
// hd and its dynamic shared memory, as flash_wgmma.cuh's
// flash_wgmma_smem_bytes computes it: 64-key tiles of bf16 K and V
// (wgmmaBufs buffers each, or one beside wgmmaBufs of raw fp8 rows) and 1
// KiB to align them on 1024 bytes.
func wgmmaKernel(base string, hd int, dt shm.DType) (string, int) {
	tile := 64 * hd * 2
	smem := wgmmaBufs*2*tile + 1024
	if dt == shm.FP8E4M3 {
		smem = 2*tile + wgmmaBufs*2*64*hd + 1024
	}
	return fmt.Sprintf("%s_wgmma%s_hd%d", base, kvSuffix(dt), hd), smem
}

// prefillKernel is the kernel and dynamic shared memory that c runs base
// with over K and V stored as dt: wgmma's where it has them and a
// tensor-core kernel would run (mma, or an fp8 pool, which has no other),
// else flashKernel's.
func (c *CUDA) prefillKernel(base string, hd int, dt shm.DType, mma bool) (string, int) {
	if c.flashWGMMA && (mma || dt == shm.FP8E4M3) && wgmmaExists(base, dt) {
		return wgmmaKernel(base, hd, dt)
	}
	return flashKernel(base, hd, dt, mma)
}

// flashSmem is the dynamic shared memory of the tensor-core kernel for head
// dim hd over K and V stored as dt, as attention.cu's flash_smem_bytes
// computes it: K and V tiles, two buffers each, of 32 padded rows (float32:
// hd+4 words; bfloat16: hd+8 values, half a word each), and four warps' P.
func flashSmem(hd int, dt shm.DType) int {
	const bn = 32
	tiles := 2 * 2 * bn * (hd + 4)
	if dt == shm.BFloat16 {
		tiles = 2 * 2 * bn * (hd + 8) / 2
	}
	return (tiles + 4*16*(bn+4)) * 4
}

// flashMMASmem is the dynamic shared memory of flash_mma.cuh's kernels, as
// its flash_mma_smem_bytes computes it: K and V tiles, two buffers each,
// of 64 bfloat16 keys in rows of hd+8 values, or of 32 float32 keys in
// rows of hd+16 (K) and hd+4 (V) words; over fp8, one buffer each of 64
// bf16 keys (the widened tile) and two of 64 raw rows of hd bytes.
func flashMMASmem(hd int, dt shm.DType) int {
	switch dt {
	case shm.BFloat16:
		return 2 * 2 * 64 * (hd + 8) * 2
	case shm.FP8E4M3:
		return 2*64*(hd+8)*2 + 2*2*64*hd
	}
	return 2 * 32 * ((hd + 16) + (hd + 4)) * 4
}

// flashKernel is the tensor-core prefill kernel that base ("flash_paged"
// or "flash_prompt") names for K and V stored as dt at head dim hd, the
// bf16 one of flash_mma.cuh (mma) or the TF32 one, and its dynamic shared
// memory. An fp8 pool has the bf16 one only, whatever mma says.
func flashKernel(base string, hd int, dt shm.DType, mma bool) (string, int) {
	suffix := kvSuffix(dt)
	if mma || dt == shm.FP8E4M3 {
		return fmt.Sprintf("%s_mma%s_hd%d", base, suffix, hd), flashMMASmem(hd, dt)
	}
	return fmt.Sprintf("%s%s_hd%d", base, suffix, hd), flashSmem(hd, dt)
}

// flashExists reports whether base has a tensor-core kernel over K and V
// stored as dt: a prompt's own bf16 K and V (promptBF16) and an fp8 pool
// have only the mma one; a prompt's K and V are never fp8.
func flashExists(base string, dt shm.DType, mma bool) bool {
	switch dt {
	case shm.FP8E4M3:
		return base == "flash_paged" && mma
	case shm.BFloat16:
		return base != "flash_prompt" || mma
	}
	return true
}

// kvSuffix is what a kernel that reads or writes K and V as numbers adds
// to its name for K and V stored as dt: "_bf16" for bfloat16, "_fp8" for
// fp8 (E4M3).
func kvSuffix(dt shm.DType) string {
	switch dt {
	case shm.BFloat16:
		return "_bf16"
	case shm.FP8E4M3:
		return "_fp8"
	}
	return ""
}

// The row kernels, a group size each, named as splitRows launches them:
// those over the pool for each pool dtype (kvSuffix), the fused scoring
// pass's for the packed ones, those over a prompt's float32 K and V once.
func init() {
	var bases []string
	for _, dt := range []shm.DType{shm.Float32, shm.BFloat16, shm.FP8E4M3} {
		sfx := kvSuffix(dt)
		bases = append(bases, "split_paged"+sfx, "split_paged_v2"+sfx, "score_paged"+sfx)
		if dt != shm.Float32 {
			bases = append(bases, "split_paged_v2_score"+sfx, "score_logits"+sfx, "split_paged_mma"+sfx, "split_paged_mma_score"+sfx)
		}
	}
	bases = append(bases, "split_prompt", "score_prompt")
	for g := 1; g <= maxGroup; g++ {
		for _, k := range bases {
			kernelNames["attention"] = append(kernelNames["attention"], fmt.Sprintf("%s_g%d", k, g))
		}
	}
}

// kernelNames lists each module's entry points.
var kernelNames = map[string][]string{
	"elementwise": {
		"embedding_bf16", "rmsnorm", "to_bf16", "rope", "silu_mul", "add", "gather_rows", "columns", "split_rope", "add_rmsnorm", "gemv_bf16",
		"rmsnorm_bf16out", "add_rmsnorm_bf16out", "silu_mul_bf16out", "gemv_bf16_bf16in", "silu_mul_bf16in_bf16out",
	},
	"sampling": {"sample_rows", "suppress_ids"},
	"cache":    {"write_kv", "write_kv_bf16", "write_kv_fp8", "scatter_kept", "scatter_kept_bf16", "scatter_kept_fp8", "table_scores_many", "evict_gather_many", "evict_scatter_many", "snapkv_select", "evict_many", "widen_fp8"},
	"attention": {
		"attn_combine", "flash_paged_hd64", "flash_paged_hd128", "flash_paged_bf16_hd64", "flash_paged_bf16_hd128", "flash_prompt_hd64", "flash_prompt_hd128",
		"flash_paged_mma_hd64", "flash_paged_mma_hd128", "flash_paged_mma_bf16_hd64", "flash_paged_mma_bf16_hd128", "flash_paged_mma_fp8_hd64", "flash_paged_mma_fp8_hd128", "flash_prompt_mma_hd64", "flash_prompt_mma_hd128",
		"flash_prompt_mma_bf16_hd64", "flash_prompt_mma_bf16_hd128", "obs_stats", "obs_fin", "obs_votes",
	},
}

// maxGroup is the most query heads per KV head the attention kernels take.
const maxGroup = 8

// A sequence's run of at least flashMinRows query rows that do not score
// goes to the tensor-core prefill kernel, in tiles of flashRows; the rest
// (decode, H2O's scoring rows) to the row kernels. A sparse layer's prompt
// (SparsePrefill) runs on the tensor-core kernel whole, its observation
// window too, which obsVote then has vote.
const (
	flashMinRows = 16
	flashRows    = 64
)

// flashOK says whether the tensor-core kernels take this geometry: head
// dims they are built for, and 16-byte aligned keys in the pool (cp.async).
// Rows start at multiples of RowElems words (64 or 128 float32s, 32 or 64
// words of bfloat16s: multiples of 4 either way) within blocks, so the
// blocks must start on 16 bytes: BlockElems, 2·KVHeads·BlockSize·RowElems
// + KVHeads·BlockSize, a multiple of 4 words.
func flashOK(l shm.Layout) bool {
	return (l.HeadDim == 64 || l.HeadDim == 128) && l.KVHeads*l.BlockSize%4 == 0
}

// Close releases cuBLAS, the upload stream, the context and the driver.
func (c *CUDA) Close() {
	if c.blas != nil {
		c.blas.Close()
	}
	if c.upOn {
		c.ctx.Sync(cuda.Stream{})
		for _, b := range c.upHeld {
			c.ctx.Free(b.p)
		}
		for _, f := range c.upFree {
			for _, p := range f {
				c.ctx.Free(p)
			}
		}
		c.ctx.DestroyEvent(c.upDone)
		c.ctx.DestroyStream(c.up)
	}
	if c.stage != nil {
		c.ctx.FreeHost(c.stage)
	}
	if c.ctx != nil {
		c.ctx.Release()
	}
	c.drv.Close()
}

func (c *CUDA) Name() string { return "cuda" }

// Device is the GPU in use.
func (c *CUDA) Device() cuda.Device { return c.dev }

func (c *CUDA) fail(err error) {
	if err == nil {
		return
	}
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
}

// failed reports whether an error is pending, without clearing it.
func (c *CUDA) failed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

func (c *CUDA) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.err
	c.err = nil
	return err
}

// alloc returns a device buffer of at least n bytes from the cache.
func (c *CUDA) alloc(n int) (cuda.Ptr, int) { return c.allocIn(c.cache, n) }

// allocIn is alloc from the free lists cache (the step's scratch cache, or
// the upload buffers' upFree).
func (c *CUDA) allocIn(cache map[int][]cuda.Ptr, n int) (cuda.Ptr, int) {
	class := 1 << bits.Len(uint(max(n, 256)-1))
	c.mu.Lock()
	if free := cache[class]; len(free) > 0 {
		p := free[len(free)-1]
		cache[class] = free[:len(free)-1]
		c.mu.Unlock()
		return p, class
	}
	c.mu.Unlock()
	p, err := c.ctx.Alloc(class)
	if err != nil {
		c.fail(err)
		return 0, 0
	}
	return p, class
}

func (c *CUDA) release(p cuda.Ptr, class int) {
	if p == 0 || class == 0 {
		return
	}
	c.mu.Lock()
	if class&upClass != 0 {
		class &^= upClass
		c.upHeld = append(c.upHeld, heldBuf{p, class})
		c.upBytes += class
	} else {
		c.cache[class] = append(c.cache[class], p)
	}
	c.mu.Unlock()
}

// exactBytes is the size from which a tensor gets an allocation of its
// own rather than a power-of-two size class: a pool of 40 GiB must not
// take 64. Below it, a step's scratch (up to a few tens of thousands of
// tokens' MLP activations) stays in the cache, since a cuMemFree waits
// for the device.
const exactBytes = ExactAllocBytes

func (c *CUDA) tensor(shape []int, bf16 bool) *Tensor {
	size := 4
	if bf16 {
		size = 2
	}
	n := numel(shape) * size
	if n >= exactBytes {
		p, err := c.ctx.Alloc((n + 3) &^ 3) // whole words: Memset32 zeroes an odd bf16 tensor's last half word
		c.fail(err)
		return &Tensor{shape: append([]int(nil), shape...), dev: uint64(p), bf16: bf16}
	}
	p, class := c.alloc(n)
	return &Tensor{shape: append([]int(nil), shape...), dev: uint64(p), bf16: bf16, class: class}
}

// AllocExact is Alloc with an allocation of exactly the tensor's size, not
// a size class's: for long-lived large tensors such as the KV pool.
func (c *CUDA) AllocExact(shape ...int) *Tensor {
	p, err := c.ctx.Alloc(max(4*numel(shape), 4))
	if err != nil {
		c.fail(err)
		return &Tensor{shape: append([]int(nil), shape...)}
	}
	c.fail(c.ctx.Memset32(p, 0, numel(shape)))
	return &Tensor{shape: append([]int(nil), shape...), dev: uint64(p)}
}

func (c *CUDA) Alloc(shape ...int) *Tensor {
	t := c.tensor(shape, false)
	if t.dev != 0 {
		c.fail(c.ctx.Memset32(cuda.Ptr(t.dev), 0, (t.Len()*4+3)/4))
	}
	return t
}

// AllocLinearInput is a zeroed bf16 tensor: cuBLAS's operand type, which
// Linear would round a float32 x to. RMSNorm, AddRMSNorm and SiLUMul write
// it with their _bf16out kernels, rounding as to_bf16 does, and Linear
// hands it to cuBLAS (or gemv_bf16_bf16in) as it is.
func (c *CUDA) AllocLinearInput(rows, cols int) *Tensor {
	t := c.tensor([]int{rows, cols}, true)
	if t.dev != 0 {
		c.fail(c.ctx.Memset32(cuda.Ptr(t.dev), 0, (t.Len()*2+3)/4))
	}
	return t
}

// AllocGateUp is a bf16 tensor that Linear writes (cuBLAS's output rounded
// to bf16) and SiLUMul reads (silu_mul_bf16in_bf16out), or with
// KVD_GATEUP_BF16=0 (gateUpBF16 off) a zeroed float32 one.
func (c *CUDA) AllocGateUp(rows, cols int) *Tensor {
	if !c.gateUpBF16 {
		return c.Alloc(rows, cols)
	}
	return c.AllocLinearInput(rows, cols)
}

// FusedResidual reports whether the forward pass should add the o and
// down projections to the residual with LinearAdd (fusedResidual, the
// default; KVD_FUSED_RESIDUAL=0 turns it off) rather than with Linear and
// AddRMSNorm or Add.
func (c *CUDA) FusedResidual() bool { return c.fusedResidual }

// bf16Out is what a kernel that may write a GEMM's operand adds to its
// name for out: "_bf16out" for a bf16 out (AllocLinearInput).
func bf16Out(out *Tensor) string {
	if out.bf16 {
		return "_bf16out"
	}
	return ""
}

// float32s fails, naming op, when one of ts is bf16 where op reads or
// writes float32: a bf16 activation (AllocLinearInput) is only ever
// Linear's x and the output of the norms and SiLUMul, and a kernel given
// it as float32 would read half of it as garbage.
func (c *CUDA) float32s(op string, ts ...*Tensor) bool {
	for _, t := range ts {
		if t.bf16 {
			c.fail(fmt.Errorf("kernels: %s of a bf16 tensor %v where it takes float32", op, t.shape))
			return false
		}
	}
	return true
}

func (c *CUDA) FromHost(data []float32, shape ...int) *Tensor {
	if numel(shape) != len(data) {
		panic("kernels: FromHost shape does not match data") // programming error, not input
	}
	t := c.tensor(shape, false)
	if t.dev != 0 {
		c.fail(c.ctx.CopyToDevice(cuda.Ptr(t.dev), f32Bytes(data)))
	}
	return t
}

// Weight keeps matrices as bf16 (rounded to nearest even) and vectors
// (norm weights) as float32; weights stay allocated for the process.
func (c *CUDA) Weight(data []float32, shape ...int) *Tensor {
	if len(shape) < 2 {
		return c.FromHost(data, shape...)
	}
	if numel(shape) != len(data) {
		panic("kernels: Weight shape does not match data")
	}
	p, err := c.ctx.Alloc(len(data) * 2)
	if err != nil {
		c.fail(err)
		return &Tensor{shape: append([]int(nil), shape...), bf16: true}
	}
	// Convert and copy in chunks, converting on every core, so a large
	// checkpoint needs little extra host memory and little time.
	const chunk = 1 << 24
	buf := make([]uint16, min(chunk, len(data)))
	for off := 0; off < len(data); off += chunk {
		part := data[off:min(off+chunk, len(data))]
		var wg sync.WaitGroup
		const piece = 1 << 18
		for lo := 0; lo < len(part); lo += piece {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i, v := range part[lo:min(lo+piece, len(part))] {
					buf[lo+i] = toBF16(v)
				}
			}()
		}
		wg.Wait()
		c.fail(c.ctx.CopyToDevice(p+cuda.Ptr(2*off), unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), 2*len(part))))
	}
	return &Tensor{shape: append([]int(nil), shape...), dev: uint64(p), bf16: true}
}

func (c *CUDA) ToHost(dst []float32, t *Tensor) {
	if t.dev == 0 {
		c.fail(errors.New("kernels: ToHost of a tensor with no device memory"))
		return
	}
	if len(dst) == 0 {
		return
	}
	// A copy to pageable memory returns when done: everything queued
	// before it has run, so the staging area is free again (not so after
	// a failed copy).
	if !t.bf16 {
		if err := c.ctx.CopyToHost(f32Bytes(dst), cuda.Ptr(t.dev)); err != nil {
			c.fail(err)
			return
		}
		c.drained()
		return
	}
	buf := make([]uint16, len(dst))
	if err := c.ctx.CopyToHost(unsafe.Slice((*byte)(unsafe.Pointer(&buf[0])), 2*len(buf)), cuda.Ptr(t.dev)); err != nil {
		c.fail(err)
		return
	}
	c.drained()
	for i, b := range buf {
		dst[i] = math.Float32frombits(uint32(b) << 16)
	}
}

func (c *CUDA) Free(t *Tensor) {
	switch {
	case t.class != 0:
		c.release(cuda.Ptr(t.dev), t.class)
	case t.opened:
		c.fail(c.ctx.CloseIPCMem(cuda.Ptr(t.dev)))
	case t.vmm != nil:
		c.fail(c.ctx.VMMFree(t.vmm))
		t.vmm = nil
	case t.dev != 0:
		c.fail(c.ctx.Free(cuda.Ptr(t.dev)))
	}
	t.dev, t.class, t.opened = 0, 0, false
}

// AllocShared allocates a zeroed float32 tensor of its own and exports it.
func (c *CUDA) AllocShared(shape ...int) (*Tensor, cuda.IPCHandle, error) {
	p, err := c.ctx.Alloc(max(4*numel(shape), 4))
	if err != nil {
		return nil, cuda.IPCHandle{}, err
	}
	t := &Tensor{shape: append([]int(nil), shape...), dev: uint64(p)}
	if err := c.ctx.Memset32(p, 0, numel(shape)); err != nil {
		c.Free(t)
		return nil, cuda.IPCHandle{}, err
	}
	h, err := c.ctx.IPCMemHandle(p)
	if err != nil {
		c.Free(t)
		return nil, h, err
	}
	return t, h, nil
}

// OpenShared maps a float32 tensor another process exported.
func (c *CUDA) OpenShared(h cuda.IPCHandle, shape ...int) (*Tensor, error) {
	p, err := c.ctx.OpenIPCMem(h)
	if err != nil {
		return nil, err
	}
	return &Tensor{shape: append([]int(nil), shape...), dev: uint64(p), opened: true}, nil
}

// AllocSharedFD allocates a zeroed float32 tensor with cuMemCreate and
// exports it as a file descriptor.
func (c *CUDA) AllocSharedFD(shape ...int) (*Tensor, int, error) {
	v, err := c.ctx.VMMAlloc(max(4*numel(shape), 4))
	if err != nil {
		return nil, -1, err
	}
	t := &Tensor{shape: append([]int(nil), shape...), dev: uint64(v.Ptr), vmm: v}
	if err := c.ctx.Memset32(v.Ptr, 0, numel(shape)); err != nil {
		c.Free(t)
		return nil, -1, err
	}
	fd, err := c.ctx.VMMExport(v)
	if err != nil {
		c.Free(t)
		return nil, -1, err
	}
	return t, fd, nil
}

// OpenSharedFD maps a float32 tensor another process exported with
// AllocSharedFD.
func (c *CUDA) OpenSharedFD(fd int, shape ...int) (*Tensor, error) {
	v, err := c.ctx.VMMImport(fd, max(4*numel(shape), 4))
	if err != nil {
		return nil, err
	}
	return &Tensor{shape: append([]int(nil), shape...), dev: uint64(v.Ptr), vmm: v}, nil
}

// NewEvent creates an interprocess event and exports it.
func (c *CUDA) NewEvent() (cuda.Event, cuda.IPCHandle, error) {
	e, err := c.ctx.NewIPCEvent()
	if err != nil {
		return e, cuda.IPCHandle{}, err
	}
	h, err := c.ctx.IPCEventHandle(e)
	if err != nil {
		c.ctx.DestroyEvent(e)
	}
	return e, h, err
}

// OpenEvent opens an event another process exported.
func (c *CUDA) OpenEvent(h cuda.IPCHandle) (cuda.Event, error) { return c.ctx.OpenIPCEvent(h) }

// Synchronize waits for the work queued so far.
func (c *CUDA) Synchronize() error {
	if err := c.ctx.Sync(cuda.Stream{}); err != nil {
		return err
	}
	c.drained()
	return nil
}

// Record marks e after the work queued so far.
func (c *CUDA) Record(e cuda.Event) { c.fail(c.ctx.Record(e, cuda.Stream{})) }

// WaitEvent makes later work wait for e.
func (c *CUDA) WaitEvent(e cuda.Event) { c.fail(c.ctx.Wait(cuda.Stream{}, e)) }

// EventDone reports whether e has happened.
func (c *CUDA) EventDone(e cuda.Event) (bool, error) { return c.ctx.Done(e) }

// CloseEvent destroys e.
func (c *CUDA) CloseEvent(e cuda.Event) { c.fail(c.ctx.DestroyEvent(e)) }

func f32Bytes(x []float32) []byte {
	if len(x) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
}

// upload queues a copy of src to dst through the staging area: on the
// upload stream (the default stream waits for it) when there is one.
func (c *CUDA) upload(dst cuda.Ptr, src []byte) {
	n := (len(src) + 255) &^ 255
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > len(c.stage.Bytes) {
		c.fail1(c.ctx.CopyToDevice(dst, src))
		return
	}
	if c.stageOff+n > len(c.stage.Bytes) {
		// Full: wait for the queued copies to have read it. The default
		// stream waits for every upload queued, so its end is theirs.
		c.fail1(c.ctx.Sync(cuda.Stream{}))
		c.drained1()
	}
	buf := c.stage.Bytes[c.stageOff : c.stageOff+len(src)]
	copy(buf, src)
	c.stageOff += n
	if c.upOn {
		c.fail1(c.ctx.CopyToDeviceThenWait(dst, buf, c.up, c.upDone, cuda.Stream{}))
		return
	}
	c.fail1(c.ctx.CopyToDeviceAsync(dst, buf, cuda.Stream{}))
}

// heldBuf is an upload buffer that a queued kernel may still read.
type heldBuf struct {
	p     cuda.Ptr
	class int
}

// upClass marks the size class ints and floats return for a buffer of the
// upload stream's, so that release holds it until the device drains.
const upClass = 1 << 62

// upHeldMax bounds the upload buffers held between drains: past it, the
// next upload waits for the device and reuses them (a step holds a few to
// a few tens of MB: its block tables).
const upHeldMax = 256 << 20

// allocUp returns an idle device buffer of at least n bytes for an
// upload, its class marked with upClass, or alloc's when there is no
// upload stream.
func (c *CUDA) allocUp(n int) (cuda.Ptr, int) {
	if !c.upOn {
		return c.alloc(n)
	}
	c.mu.Lock()
	if c.upBytes > upHeldMax {
		c.fail1(c.ctx.Sync(cuda.Stream{}))
		c.drained1()
	}
	c.mu.Unlock()
	p, class := c.allocIn(c.upFree, n)
	if p == 0 {
		return 0, 0
	}
	return p, class | upClass
}

// fail1 is fail with c.mu held.
func (c *CUDA) fail1(err error) {
	if err != nil && c.err == nil {
		c.err = err
	}
}

// drained marks the stream idle: the staging area and the upload buffers
// held are free.
func (c *CUDA) drained() {
	c.mu.Lock()
	c.drained1()
	c.mu.Unlock()
}

// drained1 is drained with c.mu held.
func (c *CUDA) drained1() {
	c.stageOff = 0
	used := map[int]bool{}
	for _, b := range c.upHeld {
		c.upFree[b.class] = append(c.upFree[b.class], b.p)
		used[b.class] = true
	}
	c.upHeld, c.upBytes = c.upHeld[:0], 0
	// The idle buffers keep each size class's peak; as contexts grow the
	// classes move up, so past upFreeMax those of classes this stretch did
	// not use go back to the device (idle now: nothing waits).
	total := 0
	for class, f := range c.upFree {
		total += class * len(f)
	}
	if total <= upFreeMax {
		return
	}
	for class, f := range c.upFree {
		if used[class] {
			continue
		}
		for _, p := range f {
			c.fail1(c.ctx.Free(p))
		}
		delete(c.upFree, class)
	}
}

// upFreeMax bounds the idle upload buffers kept between drains (with
// upHeldMax, what the gateway's activation budget counts for uploads).
const upFreeMax = 128 << 20

// UploadMaxBytes is the most device memory the upload buffers hold: those
// held until the device drains and the idle ones kept.
const UploadMaxBytes = upHeldMax + upFreeMax

// ints copies host integers to a device buffer for a launch; the caller
// releases it after queueing the launch that reads it (with the upload
// stream, upHeld keeps it until the device drains; without, the stream
// orders the reuse).
func (c *CUDA) ints(x []int32) (cuda.Ptr, int) {
	if len(x) == 0 {
		return 0, 0
	}
	p, class := c.allocUp(4 * len(x))
	if p != 0 {
		c.upload(p, unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x)))
	}
	return p, class
}

func (c *CUDA) floats(x []float32) (cuda.Ptr, int) {
	if len(x) == 0 {
		return 0, 0
	}
	p, class := c.allocUp(4 * len(x))
	if p != 0 {
		c.upload(p, f32Bytes(x))
	}
	return p, class
}

// launch queues kernel name on the default stream.
func (c *CUDA) launch(name string, grid, block cuda.Dim3, args ...any) {
	c.launchShared(name, grid, block, 0, args...)
}

// launchShared is launch with dynamic shared memory.
func (c *CUDA) launchShared(name string, grid, block cuda.Dim3, shared int, args ...any) {
	f := c.fns[name]
	if f == nil {
		c.fail(fmt.Errorf("kernels: no CUDA kernel %q", name))
		return
	}
	if grid.X == 0 {
		return // no work (the driver would run one block of it)
	}
	if c.failed() {
		// Nothing more runs until the caller has seen the error (Err): a
		// kernel given a failed allocation's null pointer would fault,
		// and a fault ends the context.
		return
	}
	i := c.profBegin(name)
	c.fail(f.Launch(cuda.Stream{}, grid, block, uint32(shared), args...))
	c.profEnd(i)
}

// ptr is t's device address, 0 for a tensor whose allocation failed (the
// error is pending). A kernel must not be launched on it: a fault on the
// device ends the context. Callers check the allocations they launch on.
func ptr(t *Tensor) cuda.Ptr { return cuda.Ptr(t.dev) }

// gridFor is a grid-stride launch's block count for n elements.
func gridFor(n int) uint32 { return uint32(min((n+255)/256, 65535)) }

func (c *CUDA) Embedding(out, table *Tensor, ids []int32) {
	p, class := c.ints(ids)
	defer c.release(p, class)
	if table.bf16 {
		c.launch("embedding_bf16", cuda.Dim3{X: uint32(len(ids))}, cuda.Dim3{X: 256}, ptr(out), ptr(table), p, int32(table.Cols()))
	} else {
		c.launch("gather_rows", cuda.Dim3{X: uint32(len(ids))}, cuda.Dim3{X: 256}, ptr(out), ptr(table), p, int32(table.Cols()))
	}
}

// RMSNorm writes a bf16 out (AllocLinearInput) rounded, with
// rmsnorm_bf16out.
func (c *CUDA) RMSNorm(out, x, w *Tensor, eps float32) {
	if !c.float32s("RMSNorm", x, w) {
		return
	}
	c.launch("rmsnorm"+bf16Out(out), cuda.Dim3{X: uint32(x.Rows())}, cuda.Dim3{X: 256}, ptr(out), ptr(x), ptr(w), int32(w.Len()), eps)
}

// gemvRows is the most rows of x the matrix-vector kernel takes; more go
// to cuBLAS. Measured on an H200 (BenchmarkGPU, 4096x14336 bf16): one row
// streams the weight at 2.6 TB/s (71% of a copy) against cuBLAS's 2.1 TB/s
// at 32 rows, but two rows already take 1.6x as long as one and eight (four
// weight rows per warp) 3x, where cuBLAS at 32 rows is faster still: x's
// staging through shared memory grows with the rows.
const gemvRows = 1

// Linear runs out = x·wᵀ. With a bf16 weight, a single row (batch-1
// decode, the LM head of one sequence) takes our matrix-vector kernel,
// which keeps a float32 x in float32 (gemv_bf16) and reads a bf16 one
// (gemv_bf16_bf16in); more rows go through cuBLAS with x in bf16: as it
// is when it is (AllocLinearInput), else rounded into a cached staging
// buffer (to_bf16). Float32 weights multiply in float32 on cuBLAS, and
// take no bf16 x. A bf16 out (AllocGateUp) takes cuBLAS's sums rounded
// to bf16, a bf16 weight's GEMM only.
func (c *CUDA) Linear(out, x, w *Tensor) { c.linear(out, x, w, 0) }

// LinearAdd runs out += x·wᵀ: Linear's GEMM with beta = 1 into a float32
// out (cuBLAS adds the float32 sums to out in its epilogue, no separate
// add kernel and no float32 product written and read back). A row that
// takes the matrix-vector kernel, which only writes, goes through a
// scratch tensor and Add.
func (c *CUDA) LinearAdd(out, x, w *Tensor) {
	if !c.float32s("LinearAdd's out", out) {
		return
	}
	if w.bf16 && x.Rows() <= gemvRows && x.Cols()%8 == 0 {
		tmp := c.tensor([]int{out.Rows(), out.Cols()}, false)
		c.linear(tmp, x, w, 0)
		c.Add(out, tmp)
		c.Free(tmp)
		return
	}
	c.linear(out, x, w, 1)
}

// linear is Linear with cuBLAS's beta: 0 writes out, 1 adds to it (never
// the matrix-vector kernel).
func (c *CUDA) linear(out, x, w *Tensor, beta float32) {
	t, k, n := x.Rows(), x.Cols(), w.Rows()
	if (x.bf16 || out.bf16) && !w.bf16 {
		c.fail(fmt.Errorf("kernels: Linear of a bf16 x %v or into a bf16 out %v by a float32 weight %v", x.shape, out.shape, w.shape))
		return
	}
	if w.bf16 && t <= gemvRows && k%8 == 0 && !out.bf16 && beta == 0 {
		name := "gemv_bf16"
		if x.bf16 {
			name = "gemv_bf16_bf16in"
		}
		c.launch(name, cuda.Dim3{X: uint32((n + 7) / 8)}, cuda.Dim3{X: 256}, ptr(out), ptr(x), ptr(w), int32(t), int32(n), int32(k))
		return
	}
	a := cuda.Matrix{Ptr: ptr(w), Type: cuda.Float32, LD: k}
	b := cuda.Matrix{Ptr: ptr(x), Type: cuda.Float32, LD: k}
	switch {
	case x.bf16:
		a.Type, b.Type = cuda.BFloat16, cuda.BFloat16
	case w.bf16:
		xb, class := c.alloc(2 * t * k)
		defer c.release(xb, class)
		c.roundBF16(xb, ptr(x), t*k)
		a.Type, b.Ptr, b.Type = cuda.BFloat16, xb, cuda.BFloat16
	}
	i := -1
	if c.profiling() {
		i = c.profBegin(fmt.Sprintf("gemm %dx%dx%d", t, n, k))
	}
	o := cuda.Matrix{Ptr: ptr(out), Type: cuda.Float32, LD: n}
	if out.bf16 {
		o.Type = cuda.BFloat16
	}
	c.fail(c.blas.Gemm(cuda.Trans, cuda.NoTrans, n, t, k, 1, a, b, beta, o))
	c.profEnd(i)
}

func (c *CUDA) RoPE(x *Tensor, heads int, positions []int32, invFreq []float32) {
	pp, pc := c.ints(positions)
	defer c.release(pp, pc)
	fp, fc := c.floats(invFreq)
	defer c.release(fp, fc)
	c.launch("rope", cuda.Dim3{X: uint32(len(positions))}, cuda.Dim3{X: 128}, ptr(x), pp, fp, int32(heads), int32(x.Cols()/heads))
}

func (c *CUDA) SplitRoPE(q, k, v, qkv *Tensor, positions []int32, invFreq []float32) {
	hd := 2 * len(invFreq)
	pp, pc := c.ints(positions)
	defer c.release(pp, pc)
	fp, fc := c.floats(invFreq)
	defer c.release(fp, fc)
	c.launch("split_rope", cuda.Dim3{X: uint32(len(positions))}, cuda.Dim3{X: 256}, ptr(q), ptr(k), ptr(v), ptr(qkv), pp, fp,
		int32(q.Cols()/hd), int32(k.Cols()/hd), int32(hd))
}

// AddRMSNorm writes a bf16 out (AllocLinearInput) rounded, with
// add_rmsnorm_bf16out; x stays float32 either way. Such an out is never
// delta, which is float32.
func (c *CUDA) AddRMSNorm(out, x, delta, w *Tensor, eps float32) {
	if !c.float32s("AddRMSNorm", x, delta, w) {
		return
	}
	c.launch("add_rmsnorm"+bf16Out(out), cuda.Dim3{X: uint32(x.Rows())}, cuda.Dim3{X: 256}, ptr(out), ptr(x), ptr(delta), ptr(w), int32(w.Len()), eps)
}

// SiLUMul writes a bf16 out (AllocLinearInput) rounded, with
// silu_mul_bf16out, and reads a bf16 gateUp (AllocGateUp) into a bf16 out
// only (silu_mul_bf16in_bf16out). The kernel takes four elements a thread
// where it can, hence a thread per four (it strides over the rest).
func (c *CUDA) SiLUMul(out, gateUp *Tensor) {
	in := ""
	if gateUp.bf16 {
		if !out.bf16 {
			c.fail(fmt.Errorf("kernels: SiLUMul of a bf16 gate_up %v into a float32 out %v", gateUp.shape, out.shape))
			return
		}
		in = "_bf16in"
	}
	n := out.Len()
	c.launch("silu_mul"+in+bf16Out(out), cuda.Dim3{X: gridFor((n + 3) / 4)}, cuda.Dim3{X: 256}, ptr(out), ptr(gateUp), int32(out.Cols()), int64(n))
}

// roundBF16 rounds n float32s at src to bf16 at dst (to_bf16: a thread per
// four elements where both are aligned for it).
func (c *CUDA) roundBF16(dst, src cuda.Ptr, n int) {
	c.launch("to_bf16", cuda.Dim3{X: gridFor((n + 3) / 4)}, cuda.Dim3{X: 256}, dst, src, int64(n))
}

// Add launches a thread per four elements, as SiLUMul.
func (c *CUDA) Add(dst, x *Tensor) {
	n := x.Len()
	c.launch("add", cuda.Dim3{X: gridFor((n + 3) / 4)}, cuda.Dim3{X: 256}, ptr(dst), ptr(x), int64(n))
}

func (c *CUDA) Sample(dst []int32, logits *Tensor, params []SampleParams) {
	R, v := len(dst), logits.Cols()
	if R == 0 {
		return
	}
	var rows, ids []int32
	words := make([]int32, 0, 8*R)
	for r, p := range params[:R] {
		for _, id := range p.Suppress {
			if id >= 0 && int(id) < v {
				rows, ids = append(rows, int32(r)), append(ids, id)
			}
		}
		words = append(words, int32(math.Float32bits(p.Temperature)), int32(p.TopK), int32(math.Float32bits(p.TopP)),
			int32(uint32(p.Seed)), int32(uint32(p.Seed>>32)), int32(uint32(p.Step)), int32(uint32(p.Step>>32)), 0)
	}
	if len(ids) > 0 {
		sp, sc := c.ints(append(rows, ids...))
		defer c.release(sp, sc)
		c.launch("suppress_ids", cuda.Dim3{X: uint32(len(ids))}, cuda.Dim3{X: 1}, ptr(logits), int32(v), sp, sp+cuda.Ptr(4*len(ids)))
	}
	pp, pc := c.ints(words)
	defer c.release(pp, pc)
	out, oc := c.alloc(4 * R)
	defer c.release(out, oc)
	c.launch("sample_rows", cuda.Dim3{X: uint32(R)}, cuda.Dim3{X: 1024}, out, ptr(logits), int32(v), pp)
	if err := c.ctx.CopyToHost(unsafe.Slice((*byte)(unsafe.Pointer(&dst[0])), 4*R), out); err != nil {
		c.fail(err) // the device may not have drained: the held buffers stay held
		return
	}
	c.drained()
}

func (c *CUDA) Gather(out, x *Tensor, rows []int32) {
	p, class := c.ints(rows)
	defer c.release(p, class)
	c.launch("gather_rows", cuda.Dim3{X: uint32(len(rows))}, cuda.Dim3{X: 256}, ptr(out), ptr(x), p, int32(x.Cols()))
}

func (c *CUDA) Columns(out, x *Tensor, start int) {
	c.launch("columns", cuda.Dim3{X: uint32(out.Rows())}, cuda.Dim3{X: 256}, ptr(out), ptr(x), int32(out.Cols()), int32(x.Cols()), int32(start))
}

// layoutArgs are the three pool-geometry parameters of a kernel that moves
// rows or reads scores (table_scores_many, evict_*): block size, KV heads
// and a row's length in words, which is all such a kernel needs to know of
// the dtype.
func layoutArgs(l shm.Layout) []any {
	return []any{int32(l.BlockSize), int32(l.KVHeads), int32(l.RowElems())}
}

// headArgs are those of a kernel that writes or reads K and V as numbers:
// the head dim in place of the row's words (its _bf16 and _fp8 variants
// halve and quarter it).
func headArgs(l shm.Layout) []any {
	return []any{int32(l.BlockSize), int32(l.KVHeads), int32(l.HeadDim)}
}

func args(a ...any) []any { return a }

func (c *CUDA) WriteKV(pool *Tensor, l shm.Layout, k, v *Tensor, slots []int32) {
	if len(slots) == 0 {
		return
	}
	p, class := c.ints(slots)
	defer c.release(p, class)
	// A thread a word of the row: a dim, a bfloat16 pool's pair or an fp8
	// pool's four.
	a := append(args(ptr(pool)), headArgs(l)...)
	c.launch("write_kv"+kvSuffix(l.DType), cuda.Dim3{X: uint32(len(slots)), Y: uint32(l.KVHeads)}, cuda.Dim3{X: uint32(l.RowElems())}, append(a, ptr(k), ptr(v), p)...)
}

// checkGroup records an error for a head layout the kernels do not take:
// the row kernels read a key four dims at a time, so a head dim must be a
// multiple of 4 (one of 2 mod 4 would read past its row).
func (c *CUDA) checkGroup(heads int, l shm.Layout) (int, bool) {
	group := heads / l.KVHeads
	if group < 1 || group > maxGroup || l.HeadDim > 256 || l.HeadDim%4 != 0 {
		c.fail(fmt.Errorf("kernels: CUDA attention takes 1 to %d query heads per KV head and head dims up to 256 that are multiples of 4; got %d heads, %d KV heads of dim %d",
			maxGroup, heads, l.KVHeads, l.HeadDim))
		return 0, false
	}
	return group, true
}

func (c *CUDA) Attention(out, q, pool *Tensor, l shm.Layout, b *AttnBatch, scale float32) {
	group, ok := c.checkGroup(q.Cols()/l.HeadDim, l)
	if !ok {
		return
	}
	var w rowWork
	var tiles []int32
	for s := range b.KVLen {
		q0, q1 := int(b.QIndptr[s]), int(b.QIndptr[s+1])
		if q1 == q0 || (b.Skip != nil && b.Skip[s]) {
			continue
		}
		past := int(b.KVLen[s]) - (q1 - q0)
		scoreFrom := q1
		if b.ScoreFrom != nil {
			scoreFrom = q0 + int(b.ScoreFrom[s])
		}
		r := q0
		if scoreFrom-q0 >= flashMinRows && flashOK(l) {
			for ; r < scoreFrom; r += flashRows {
				tiles = append(tiles, int32(r), int32(min(flashRows, scoreFrom-r)), int32(past+r-q0), b.BlockIndptr[s])
			}
			r = scoreFrom
		}
		for ; r < q1; r++ {
			w.row(r, past+r-q0+1, int(b.BlockIndptr[s]), r >= scoreFrom)
		}
	}
	heads := q.Cols() / l.HeadDim
	if len(tiles) > 0 {
		if !c.flashLightFirst {
			heaviestFirst(tiles)
		}
		// An fp8 pool always takes a tensor-core kernel, whatever flashMMA
		// says (it has no other): so do its widened blocks.
		src, lt, blocks, mma := ptr(pool), l, b.Blocks, c.flashMMA || l.DType == shm.FP8E4M3
		if l.DType == shm.FP8E4M3 && c.widenFP8 {
			if wp, wc, wb, ok := c.widenTiles(ptr(pool), tiles, b, l); ok {
				defer c.release(wp, wc)
				src, lt.DType, blocks = wp, shm.BFloat16, wb
			}
		}
		meta := append(append([]int32(nil), blocks...), tiles...)
		p, class := c.ints(meta)
		defer c.release(p, class)
		name, smem := c.prefillKernel("flash_paged", lt.HeadDim, lt.DType, mma)
		c.launchShared(name, cuda.Dim3{X: uint32(len(tiles) / 4), Y: uint32(heads)}, cuda.Dim3{X: 128}, smem,
			ptr(out), ptr(q), src, int32(lt.BlockSize), int32(lt.KVHeads), int32(heads), p+cuda.Ptr(4*len(blocks)), p, scale)
	}
	if len(w.info) == 0 {
		return
	}
	c.splitRows(&w, out, q, heads, l, group, b.Blocks, splitSrc{pool: ptr(pool)}, scale)
}

// WidenMaxBytes bounds widenTiles' scratch pool: a step whose chunks'
// sequences need more (prompts past ~60k tokens at the 8B's 8 KV heads of
// 128 dims) runs the fp8 kernel instead. Exported for the gateway's
// activation budget.
const WidenMaxBytes = 256 << 20

// widenMaxBytes is WidenMaxBytes, lowered by tests to reach the fallback.
var widenMaxBytes = WidenMaxBytes

// widenTiles widens, for flash_paged's tiles [n, 4] over an fp8 pool, the
// blocks each tile's sequence has up to the tile's last row into a scratch
// pool of bfloat16 blocks (widen_fp8, one launch for every sequence of the
// step), and points the tiles' tables (their fourth column, rewritten in
// place) at the scratch's blocks: the blocks list it returns numbers them
// 0, 1, ... in the order the tiles' tables list theirs. The bfloat16
// kernel over them computes what the fp8 one does over the pool, the
// widening done once a block instead of once a tile and head that reads
// it. It returns false, the tiles untouched, where the scratch would pass
// WidenMaxBytes (the fp8 kernel runs), or where the scratch's allocation
// failed (the error is pending: the step fails, as on any allocation).
func (c *CUDA) widenTiles(pool cuda.Ptr, tiles []int32, b *AttnBatch, l shm.Layout) (cuda.Ptr, int, []int32, bool) {
	need := map[int32]int{} // a table's offset in b.Blocks: blocks its tiles see
	var order []int32
	for i := 0; i < len(tiles); i += 4 {
		t, n := tiles[i+3], (int(tiles[i+2]+tiles[i+1])+l.BlockSize-1)/l.BlockSize
		if _, ok := need[t]; !ok {
			order = append(order, t)
		}
		need[t] = max(need[t], n)
	}
	at := make(map[int32]int32, len(order)) // a table's first block in the scratch
	var src []int32
	for _, t := range order {
		at[t] = int32(len(src))
		src = append(src, b.Blocks[int(t):int(t)+need[t]]...)
	}
	wl := l
	wl.DType = shm.BFloat16
	bytes := 4 * len(src) * wl.BlockElems()
	if len(src) == 0 || 1<<bits.Len(uint(max(bytes, 256)-1)) > widenMaxBytes {
		return 0, 0, nil, false
	}
	dst, class := c.alloc(bytes)
	if dst == 0 {
		return 0, 0, nil, false
	}
	p, pc := c.ints(src)
	defer c.release(p, pc)
	c.launch("widen_fp8", cuda.Dim3{X: uint32(min(len(src), 65535))}, cuda.Dim3{X: 256}, dst, pool, int32(l.BlockSize), int32(l.KVHeads), int32(l.HeadDim), p, int32(len(src)))
	for i := 0; i < len(tiles); i += 4 {
		tiles[i+3] = at[tiles[i+3]]
	}
	c.widened++
	blocks := make([]int32, len(src))
	for i := range blocks {
		blocks[i] = int32(i)
	}
	return dst, class, blocks, true
}

// heaviestFirst orders flash_paged's tiles [n, 4] (first row, rows,
// position of the first row, table) by the keys their last row sees, most
// first: a tile's work grows with its position, and in row order a long
// prompt's heaviest tiles came last, in a last wave that left SMs idle.
// The order of the launch's CTAs is the only change: each tile's output
// is the same.
func heaviestFirst(tiles []int32) {
	t := make([][4]int32, len(tiles)/4)
	for i := range t {
		copy(t[i][:], tiles[4*i:])
	}
	slices.SortStableFunc(t, func(a, b [4]int32) int { return int(b[2]+b[1]) - int(a[2]+a[1]) })
	for i := range t {
		copy(tiles[4*i:], t[i][:])
	}
}

// v2OK reports whether split_paged_v2 takes a pool of layout l: head dim
// 128 (a thread a dim when the warps merge, a lane four dims) and rows
// that start on 16 bytes (16-byte loads), of any dtype.
func v2OK(l shm.Layout) bool {
	return l.HeadDim == 128 && l.BlockElems()%4 == 0
}

// splitSrc is where the split row kernels find keys: the pool (paged), or
// a prompt's rows of k and v, whose scoring rows vote into hs [H, n].
type splitSrc struct {
	pool     cuda.Ptr
	k, v, hs cuda.Ptr
	row0, n  int
}

// FusedScoreMaxBytes bounds the logits buffer of the fused scoring pass
// (fusedScore); a launch that would need more scores with score_paged.
// Exported for the gateway's activation budget.
const FusedScoreMaxBytes = 64 << 20

// splitPerSM is how many work items per SM a launch of the split row
// kernels aims for, with at least splitMinKeys keys each.
// BenchmarkGPUAttention on an H200, decode at 5000 tokens of context: 8
// sequences take 191 us at 8 per SM (320 keys an item), 254 at 4, 387 at 2;
// one sequence 82 us at 128 keys an item, 97 at 64 (more partials to merge
// than work saved).
var splitPerSM = 8

// splitPerSMV2 is splitPerSM for split_paged_v2, whose CTA reads its keys
// faster and so gains from longer items: BenchmarkGPUAttention on an H200
// at 4 against 8 per SM, decode at 32 × 5000 tokens over bfloat16 230
// against 255 us and over float32 344 against 371 (run 7), at 8 × 5000
// 123 against 153 (run 6), at 32 × 1100 with every row scoring (a sparse
// layer's decode at 26 / 1024) 87 against 100 (run 8); one sequence of
// 5000, 58 against 59 (2 would give 51, but few launches are that small).
// Served (run 9), 4 against 8 took full KV's decode step at 32 × 5000
// from 14.7 to 13.3 ms and the rate from 1195 to 1281 tokens/s.
var splitPerSMV2 = 4

const splitMinKeys = 128

// splitCTAsV2, where not 0, is how many CTAs of each KV head a streamed
// launch of the split row kernels (streamV2) has, in place of as many as
// the card holds at once: tests set it to put many items in each CTA.
var splitCTAsV2 = 0

// rowWork is the rows a launch of the split row kernels takes: rowinfo
// [R, 4] as attention.cu reads it, and each row's keys, split into items
// once the launch's size is known.
type rowWork struct {
	info []int32
}

// scores reports whether any of w's rows scores.
func (w *rowWork) scores() bool {
	for i := 3; i < len(w.info); i += 4 {
		if w.info[i] != 0 {
			return true
		}
	}
	return false
}

func (w *rowWork) row(qrow, nvis, table int, score bool) {
	sc := int32(0)
	if score {
		sc = 1
	}
	w.info = append(w.info, int32(qrow), int32(nvis), int32(table), sc)
}

// items splits every row's keys into work items, enough of them to give
// each SM perSM CTAs, in multiples of round keys: items [n, 4] (row, first
// key, end key, workspace slot), the score rows' items, and where each
// row's items start (rowsplit [R+1]).
func (w *rowWork) items(kvh, sms, round, perSM int) (items, scoring, rowsplit []int32) {
	R := len(w.info) / 4
	maxKeys := 0
	for r := range R {
		maxKeys = max(maxKeys, int(w.info[4*r+1]))
	}
	per := maxKeys // keys per item
	if target := perSM * sms; R*kvh < target {
		splits := (target + R*kvh - 1) / (R * kvh)
		per = max(splitMinKeys, ((maxKeys+splits-1)/splits+round-1)/round*round)
	}
	rowsplit = make([]int32, 0, R+1)
	for r := range R {
		rowsplit = append(rowsplit, int32(len(items)/4))
		nvis := int(w.info[4*r+1])
		for k0 := 0; k0 < nvis; k0 += per {
			it := []int32{int32(r), int32(k0), int32(min(k0+per, nvis)), int32(len(items) / 4)}
			items = append(items, it...)
			if w.info[4*r+3] != 0 {
				scoring = append(scoring, it...)
			}
		}
	}
	return items, scoring, append(rowsplit, int32(len(items)/4))
}

// stream splits the rows' keys into items for nx CTAs (of each KV head):
// CTA x takes items cta[x] to cta[x+1], about the same number of keys
// each (the launch's keys over nx, at least round), a row's keys cut
// where a CTA's share ends, on a multiple of round keys from the row's
// start (its warps' chunks stay even), the CTA's share then a little
// under or over. items and rowsplit are as items returns them; no row may
// score (splitRows streams only launches whose rows do not). There are at
// most nx CTAs: each but the last takes at least its share.
func (w *rowWork) stream(nx, round int) (items, rowsplit, cta []int32) {
	R := len(w.info) / 4
	total := 0
	for r := range R {
		total += int(w.info[4*r+1])
	}
	per := max(round, (total+nx-1)/max(nx, 1))
	cta = append(cta, 0)
	left := per
	rowsplit = make([]int32, 0, R+1)
	for r := range R {
		rowsplit = append(rowsplit, int32(len(items)/4))
		nvis := int(w.info[4*r+1])
		for k0 := 0; k0 < nvis; {
			take := min(nvis-k0, max(left, round))
			if k0+take < nvis {
				take -= take % round
			}
			items = append(items, int32(r), int32(k0), int32(k0+take), int32(len(items)/4))
			k0 += take
			if left -= take; left <= 0 {
				cta = append(cta, int32(len(items)/4))
				left = per
			}
		}
	}
	if int(cta[len(cta)-1]) < len(items)/4 {
		cta = append(cta, int32(len(items)/4))
	}
	return items, append(rowsplit, int32(len(items)/4)), cta
}

// occupancy is how many CTAs of 128 threads of kernel name an SM holds at
// once (1 where the driver cannot say), cached.
func (c *CUDA) occupancy(name string) int {
	if n, ok := c.occ[name]; ok {
		return n
	}
	n := 1
	if f := c.fns[name]; f != nil {
		if k, err := f.Occupancy(128, 0); err == nil && k > 0 {
			n = k
		}
	}
	c.occ[name] = n
	return n
}

// splitRows launches the split row kernels for w: the partials, the
// combine into out, and for rows that score the scoring pass.
func (c *CUDA) splitRows(w *rowWork, out, q *Tensor, heads int, l shm.Layout, group int, blocks []int32, src splitSrc, scale float32) {
	kvh, hd := l.KVHeads, l.HeadDim
	// split_paged_v2 deals an item's chunks of 32 keys to four warps:
	// items of a multiple of 128 keys keep them even.
	v2 := c.attnV2 && src.pool != 0 && src.pool%16 == 0 && v2OK(l)
	// split_paged_mma takes split_paged_v2's parameters (and its _score
	// form split_paged_v2_score's) over the packed pools.
	v2name := "split_paged_v2"
	if c.decodeMMA && l.DType != shm.Float32 {
		v2name = "split_paged_mma"
	}
	var items, scoring, rowsplit, cta []int32
	switch {
	case v2 && c.streamV2 && !w.scores():
		// As many CTAs as the card holds of the kernel. Launches with
		// rows that score (H2O's) keep the split by rows: streamed, decode
		// at 32 × 1100 with every row scoring ran 65.6–68.9 µs against
		// 63.8 on an H200 (run 14, calls A–C).
		nx := max(1, c.occupancy(fmt.Sprintf("%s%s_g%d", v2name, kvSuffix(l.DType), group))*c.dev.SMs/kvh)
		if splitCTAsV2 > 0 {
			nx = splitCTAsV2
		}
		items, rowsplit, cta = w.stream(nx, 128)
	case v2:
		items, scoring, rowsplit = w.items(kvh, c.dev.SMs, 128, splitPerSMV2)
	default:
		items, scoring, rowsplit = w.items(kvh, c.dev.SMs, 64, splitPerSM)
	}
	R, n := len(w.info)/4, len(items)/4
	meta := make([]int32, 0, len(blocks)+len(w.info)+len(items)+len(scoring)+len(rowsplit)+len(cta))
	meta = append(append(append(append(append(append(meta, blocks...), w.info...), items...), scoring...), rowsplit...), cta...)
	p, class := c.ints(meta)
	defer c.release(p, class)
	at := func(i int) cuda.Ptr { return p + cuda.Ptr(4*i) }
	pBlocks, pInfo := at(0), at(len(blocks))
	pItems := at(len(blocks) + len(w.info))
	pScoring := at(len(blocks) + len(w.info) + len(items))
	pSplit := at(len(blocks) + len(w.info) + len(items) + len(scoring))
	var pCTA cuda.Ptr // 0: a CTA an item
	ctas := n
	if cta != nil {
		pCTA, ctas = at(len(blocks)+len(w.info)+len(items)+len(scoring)+len(rowsplit)), len(cta)-1
	}
	stride := 2*group + group*hd
	ws, wc := c.alloc(4 * n * kvh * stride)
	defer c.release(ws, wc)
	fin, fc := c.alloc(4 * R * kvh * 2 * group)
	defer c.release(fin, fc)
	grid := func(x int) cuda.Dim3 { return cuda.Dim3{X: uint32(x), Y: uint32(kvh)} }
	block := cuda.Dim3{X: 128}
	if src.pool != 0 {
		pool := src.pool
		// With fusedScore the split kernel leaves the scoring rows' logits,
		// [items, kvh, lgs, G], for score_logits: a few MB in decode; a
		// long prompt's observation window (32 rows of 128k tokens: ~0.5
		// GB) scores with score_paged instead, with no buffer.
		var lg cuda.Ptr
		lgs := 0
		if v2 && c.fusedScore && l.DType != shm.Float32 && len(scoring) > 0 {
			for i := 0; i < len(scoring); i += 4 {
				lgs = max(lgs, int(scoring[i+2]-scoring[i+1]))
			}
			if lgBytes := 4 * n * kvh * lgs * group; lgBytes <= FusedScoreMaxBytes {
				var lc int
				lg, lc = c.alloc(lgBytes)
				defer c.release(lg, lc)
			}
		}
		// split_paged_v2 merges the rows itself into out and fin given
		// counts; with 0 attn_combine does after it.
		var counts cuda.Ptr
		if v2 && c.ownCombine {
			counts = c.combineCounts(R * kvh)
		}
		combine := []any{ptr(out), fin, pSplit, counts, int32(heads), pCTA}
		switch {
		case lg != 0:
			c.launch(fmt.Sprintf("%s_score%s_g%d", v2name, kvSuffix(l.DType), group), grid(ctas), block, append([]any{ws, lg, int32(lgs), ptr(q), pool, int32(l.BlockSize), int32(kvh), pInfo, pItems, pBlocks, scale}, combine...)...)
		case v2:
			c.launch(fmt.Sprintf("%s%s_g%d", v2name, kvSuffix(l.DType), group), grid(ctas), block, append([]any{ws, ptr(q), pool, int32(l.BlockSize), int32(kvh), int32(hd), pInfo, pItems, pBlocks, scale}, combine...)...)
		default:
			c.launch(fmt.Sprintf("split_paged%s_g%d", kvSuffix(l.DType), group), grid(n), block, ws, ptr(q), pool, int32(l.BlockSize), int32(kvh), int32(hd), pInfo, pItems, pBlocks, scale)
		}
		if counts == 0 {
			c.launch("attn_combine", grid(R), block, ptr(out), fin, ws, pInfo, pSplit, int32(heads), int32(kvh), int32(hd))
		}
		switch {
		case lg != 0:
			c.launch(fmt.Sprintf("score_logits%s_g%d", kvSuffix(l.DType), group), grid(len(scoring)/4), block, pool, fin, lg, int32(lgs), int32(l.BlockSize), int32(kvh), pInfo, pScoring, pBlocks)
		case len(scoring) > 0:
			c.launch(fmt.Sprintf("score_paged%s_g%d", kvSuffix(l.DType), group), grid(len(scoring)/4), block, pool, fin, ptr(q), int32(l.BlockSize), int32(kvh), int32(hd), pInfo, pScoring, pBlocks, scale)
		}
		return
	}
	k, v, row0 := src.k, src.v, int32(src.row0)
	c.launch(fmt.Sprintf("split_prompt_g%d", group), grid(n), block, ws, ptr(q), k, v, int32(kvh), int32(hd), row0, pInfo, pItems, scale)
	c.launch("attn_combine", grid(R), block, ptr(out), fin, ws, pInfo, pSplit, int32(heads), int32(kvh), int32(hd))
	if len(scoring) > 0 {
		c.launch(fmt.Sprintf("score_prompt_g%d", group), grid(len(scoring)/4), block, src.hs, int32(src.n), fin, ptr(q), k, v, int32(kvh), int32(hd), row0, pInfo, pScoring, scale)
	}
}

// combineCounts is a device buffer of at least n zeroed ints for
// split_paged_v2's own combine (ownCombine), grown (after the work queued
// on the old one is done) when a launch has more rows; 0 after a failure,
// which sends the launch to attn_combine. Like every launch it relies on
// the one legacy default stream: cuMemsetD32 is ordered before the
// kernels that count there (not on a non-blocking stream), and only the
// goroutine running the forward pass calls it (no lock).
func (c *CUDA) combineCounts(n int) cuda.Ptr {
	if n <= c.countsN {
		return c.counts
	}
	n = max(n, 2*c.countsN, 4096)
	if c.counts != 0 {
		if err := c.ctx.Sync(cuda.Stream{}); err != nil {
			c.fail(err)
			return 0
		}
		c.drained()
		c.fail(c.ctx.Free(c.counts))
		c.counts, c.countsN = 0, 0
	}
	p, err := c.ctx.Alloc(4 * n)
	if err == nil {
		err = c.ctx.Memset32(p, 0, n)
	}
	if err != nil {
		c.fail(err)
		return 0
	}
	c.counts, c.countsN = p, n
	return p
}

// SparsePrefill computes the prompt's attention and its per-head window
// sums [H, n] on the GPU, chooses the kept tokens on the GPU (the CPU
// backend's choice, ties aside: see selectOnDevice) and scatters them into
// their slots.
func (c *CUDA) SparsePrefill(out, q, k, v *Tensor, row0, n int, pool *Tensor, l shm.Layout, slots []int32, sel Selection, scale float32) {
	heads := q.Cols() / l.HeadDim
	group, ok := c.checkGroup(heads, l)
	if !ok {
		return
	}
	kvh := l.KVHeads
	obsFrom := max(0, n-sel.ObsWindow)
	hs := c.Alloc(heads, n)
	defer c.Free(hs)
	first := 0 // rows before it are done on the tensor cores
	// With obsTiles the tensor-core kernel attends the observation
	// window's rows too and obsVote has them vote; else they take the
	// split kernels, which vote as they attend.
	flashable := l.HeadDim == 64 || l.HeadDim == 128
	tiles := c.obsTiles && flashable && n > obsFrom && n >= flashMinRows && obsStatsBytes(n, heads, n-obsFrom) <= ObsStatsMaxBytes
	flashN := obsFrom
	if tiles {
		flashN = n
	}
	if flashable && flashN >= flashMinRows {
		// The prompt's own K and V, float32 whatever the pool's dtype; with
		// promptBF16 their rows row0..row0+flashN rounded to bf16 first,
		// into buffers the kernel indexes from row0 as it would k and v.
		grid, block := cuda.Dim3{X: uint32((flashN + flashRows - 1) / flashRows), Y: uint32(heads)}, cuda.Dim3{X: 128}
		if c.flashMMA && c.promptBF16 {
			rowElems := kvh * l.HeadDim
			n16 := flashN * rowElems
			kb, kc := c.alloc(2 * n16)
			defer c.release(kb, kc)
			vb, vc := c.alloc(2 * n16)
			defer c.release(vb, vc)
			off := cuda.Ptr(4 * row0 * rowElems)
			c.roundBF16(kb, ptr(k)+off, n16)
			c.roundBF16(vb, ptr(v)+off, n16)
			back := cuda.Ptr(2 * row0 * rowElems) // so that row row0 is the buffers' first
			name, smem := c.prefillKernel("flash_prompt", l.HeadDim, shm.BFloat16, true)
			c.launchShared(name, grid, block, smem, ptr(out), ptr(q), kb-back, vb-back, int32(kvh), int32(heads), int32(row0), int32(flashN), scale)
		} else {
			name, smem := flashKernel("flash_prompt", l.HeadDim, shm.Float32, c.flashMMA)
			c.launchShared(name, grid, block, smem, ptr(out), ptr(q), ptr(k), ptr(v), int32(kvh), int32(heads), int32(row0), int32(flashN), scale)
		}
		first = flashN
		if tiles {
			c.obsVote(hs, q, k, row0, n, obsFrom, kvh, heads, l.HeadDim, scale)
		}
	}
	if first < n {
		var w rowWork
		for i := first; i < n; i++ {
			w.row(row0+i, i+1, 0, i >= obsFrom)
		}
		c.splitRows(&w, out, q, heads, l, group, nil, splitSrc{k: ptr(k), v: ptr(v), hs: ptr(hs), row0: row0, n: n}, scale)
	}
	if c.hostSelect {
		c.selectOnHost(hs, group, k, v, row0, n, pool, l, slots, sel)
		return
	}
	c.selectOnDevice(hs, group, k, v, row0, n, pool, l, slots, sel)
}

// obsKT is obs_stats' and obs_votes' keys per CTA (OBS_KT).
const obsKT = 32

// ObsStatsMaxBytes bounds obsVote's per-tile statistics, 8 bytes a query
// head, window row and tile of 32 keys: 32 MiB at the default 32-row
// window over 131072 tokens and 32 heads. A longer window or prompt votes
// with the split kernels instead. Exported for the gateway's activation
// budget.
const ObsStatsMaxBytes = 64 << 20

// obsStatsBytes is the size of obsVote's statistics for a prompt of n
// tokens, H query heads and a window of w rows.
func obsStatsBytes(n, heads, w int) int {
	return 4 * ((n + obsKT - 1) / obsKT) * heads * w * 2
}

// obsVote leaves in hs [H, n] the votes of the observation window, rows
// obsFrom..n of the prompt at row0 (n > obsFrom): per query head, each
// key's probability summed over the window's rows, from float32 logits
// over the prompt's float32 K. obs_stats takes each row's max and sum over
// a tile of keys, obs_fin merges them in order, obs_votes sums the
// probabilities; no atomics, so two prefills give the same sums. Needs a
// head dim that is a multiple of 4 and at most 128 (obs_load_k's rows of
// 33 float4s), at most 8 query heads a KV head (maxGroup: obs_votes'
// partial sums), and obsStatsBytes within ObsStatsMaxBytes.
func (c *CUDA) obsVote(hs, q, k *Tensor, row0, n, obsFrom, kvh, heads, hd int, scale float32) {
	tiles, w := (n+obsKT-1)/obsKT, n-obsFrom
	st, sc := c.alloc(obsStatsBytes(n, heads, w))
	defer c.release(st, sc)
	fin, fc := c.alloc(4 * heads * w * 2)
	defer c.release(fin, fc)
	grid, block := cuda.Dim3{X: uint32(tiles), Y: uint32(kvh)}, cuda.Dim3{X: 128}
	c.launch("obs_stats", grid, block, st, ptr(q), ptr(k), int32(kvh), int32(heads), int32(hd), int32(row0), int32(n), int32(obsFrom), scale)
	const warps = 128 / 32 // obs_fin takes a row a warp
	c.launch("obs_fin", cuda.Dim3{X: uint32((heads*w + warps - 1) / warps)}, block, fin, st, int32(tiles), int32(heads*w))
	c.launch("obs_votes", grid, block, ptr(hs), fin, ptr(q), ptr(k), int32(kvh), int32(heads), int32(hd), int32(row0), int32(n), int32(obsFrom), scale)
}

// selectOnHost is SparsePrefill's choice made on the host with the CPU
// backend's code (KVD_HOST_SELECT=1): the window sums hs [H, n] come back,
// the host chooses, and the kept tokens are scattered on the GPU. The GPU
// waits for the host at every sparse layer, so it is the reference the
// device's choice is tested against, not the default.
func (c *CUDA) selectOnHost(hs *Tensor, group int, k, v *Tensor, row0, n int, pool *Tensor, l shm.Layout, slots []int32, sel Selection) {
	kvh := l.KVHeads
	heads := kvh * group
	sums := make([]float32, heads*n)
	c.ToHost(sums, hs)
	// The selection runs on the host while the GPU waits for the next
	// layer, so its KV heads run in parallel.
	raw32 := make([]float32, kvh*n)
	perHead := make([][]int, kvh)
	var wg sync.WaitGroup
	for kh := range kvh {
		wg.Go(func() {
			raw, vote, headSum := make([]float64, n), make([]float64, n), make([]float64, n)
			for g := range group {
				for j, w := range sums[(kh*group+g)*n : (kh*group+g+1)*n] {
					headSum[j] = float64(w)
				}
				addVote(raw, vote, headSum, group, sel.GQAMax)
			}
			for j, w := range raw {
				raw32[kh*n+j] = float32(w)
			}
			perHead[kh] = selectTokens(vote, n, sel)
		})
	}
	wg.Wait()
	idx := make([]int32, 0, kvh*sel.Keep)
	for _, kept := range perHead {
		if len(kept) != len(slots) {
			c.fail(fmt.Errorf("kernels: sparse prefill keeps %d tokens for %d slots", len(kept), len(slots)))
			return
		}
		for _, j := range kept {
			idx = append(idx, int32(j))
		}
	}
	keep := len(slots)
	rp, rc := c.floats(raw32)
	defer c.release(rp, rc)
	meta := append(append([]int32(nil), idx...), slots...)
	mp, mc := c.ints(meta)
	defer c.release(mp, mc)
	a := append(args(ptr(pool)), headArgs(l)...)
	a = append(a, ptr(k), ptr(v), rp, mp, mp+cuda.Ptr(4*len(idx)), int32(row0), int32(n), int32(keep))
	c.launch("scatter_kept"+kvSuffix(l.DType), cuda.Dim3{X: uint32(keep), Y: uint32(kvh)}, cuda.Dim3{X: uint32(l.RowElems())}, a...)
}

// selectOnDevice is SparsePrefill's choice and scatter without the host:
// snapkv_select keeps the tokens selectTokens would (votes in double
// precision in its order, the top-k by an order-key bisection with the
// earlier token first on a tie), so the GPU never waits for the host.
// Given the same sums it keeps exactly selectOnHost's tokens and scores
// (TestGPUSelectOnDevice). The sums are the same every run when obsVote
// made them; the split kernels (KVD_OBS_SPLIT=1, or a window too long for
// obsVote) accumulate them with atomics, so two runs of a layer may then
// differ in their last bits.
func (c *CUDA) selectOnDevice(hs *Tensor, group int, k, v *Tensor, row0, n int, pool *Tensor, l shm.Layout, slots []int32, sel Selection) {
	kvh, keep := l.KVHeads, len(slots)
	var count int
	if sel.SnapKV {
		obsFrom := max(0, n-sel.ObsWindow)
		sinks := min(sel.Sinks, obsFrom)
		count = sinks + max(0, min(obsFrom-sinks, sel.Keep-(n-obsFrom)-sinks)) + n - obsFrom
	} else {
		s := min(sel.Sinks, n)
		count = s + n - max(n-(sel.Keep-s), s)
	}
	if count != keep || sel.Keep != keep {
		c.fail(fmt.Errorf("kernels: sparse prefill keeps %d tokens for %d slots", count, keep))
		return
	}
	raw := c.Alloc(kvh, n)
	defer c.Free(raw)
	scratch, scc := c.alloc(2 * 8 * kvh * n)
	defer c.release(scratch, scc)
	idx, ic := c.alloc(4 * kvh * max(keep, 1))
	defer c.release(idx, ic)
	if hs.dev == 0 || raw.dev == 0 || scratch == 0 || idx == 0 {
		return // the allocation's error is pending
	}
	b := func(x bool) int32 {
		if x {
			return 1
		}
		return 0
	}
	c.launch("snapkv_select", cuda.Dim3{X: uint32(kvh)}, cuda.Dim3{X: 1024},
		ptr(hs), int32(group), int32(n), int32(sel.ObsWindow), int32(sel.Sinks), int32(max(sel.Kernel, 1)),
		b(sel.PoolAvg), b(sel.GQAMax), b(sel.SnapKV), int32(keep), scratch, scratch+cuda.Ptr(8*kvh*n), ptr(raw), idx)
	if keep == 0 {
		return
	}
	sp, spc := c.ints(slots)
	defer c.release(sp, spc)
	a := append(args(ptr(pool)), headArgs(l)...)
	a = append(a, ptr(k), ptr(v), ptr(raw), idx, sp, int32(row0), int32(n), int32(keep))
	c.launch("scatter_kept"+kvSuffix(l.DType), cuda.Dim3{X: uint32(keep), Y: uint32(kvh)}, cuda.Dim3{X: uint32(l.RowElems())}, a...)
}

// Evict chooses and compacts on the device (evictOnDevice) unless
// KVD_HOST_EVICT=1 or the rows are too wide for evict_many. Otherwise it
// reads every table's scores back in one copy, chooses the survivors on
// the host with the CPU backend's code, tables in parallel, moves those
// that change slot on the GPU (one gather and one scatter launch for all
// tables, through a staging buffer), and waits for that. Per step that is
// two uploads (the tables, then the moves), three launches and two waits,
// whatever the number of tables. Either way rows move as RowElems words,
// whatever the dtype.
func (c *CUDA) Evict(pool *Tensor, l shm.Layout, jobs []EvictJob) {
	if c.gpuEvict && l.RowElems() <= evictMaxRowElems {
		c.evictOnDevice(pool, l, jobs)
		return
	}
	kvh := l.KVHeads
	// job [tables, 3]: blocks offset, tokens, scores offset; then the
	// blocks of every table.
	meta := make([]int32, 3*len(jobs))
	var blocks []int32
	offs := make([]int, len(jobs))
	total, most := 0, 0
	for i, j := range jobs {
		offs[i] = total
		meta[3*i], meta[3*i+1], meta[3*i+2] = int32(len(blocks)), int32(j.Tokens), int32(total)
		blocks = append(blocks, j.Blocks...)
		total += kvh * j.Tokens
		most = max(most, j.Tokens)
	}
	if total == 0 {
		return
	}
	t0 := time.Now()
	mp, mc := c.ints(append(meta, blocks...))
	defer c.release(mp, mc)
	pJob, pBlocks := mp, mp+cuda.Ptr(4*len(meta))
	sc, scc := c.alloc(4 * total)
	defer c.release(sc, scc)
	if mp == 0 || sc == 0 {
		return // the allocation's error is pending
	}
	const maxZ = 65535 // a grid's z extent
	for from := 0; from < len(jobs); from += maxZ {
		z := min(maxZ, len(jobs)-from)
		c.launch("table_scores_many", cuda.Dim3{X: uint32((most + 255) / 256), Y: uint32(kvh), Z: uint32(z)}, cuda.Dim3{X: 256},
			append(append(args(sc, ptr(pool)), layoutArgs(l)...), pBlocks, pJob+cuda.Ptr(4*3*from))...)
	}
	scores := make([]float32, total)
	c.ToHost(scores, &Tensor{shape: []int{total}, dev: uint64(sc)})
	if c.failed() {
		return
	}
	t1 := time.Now()
	// The survivors, chosen on the host, tables in parallel; a move for
	// each that changes slot (table, head, destination, source).
	moves := make([][]int32, len(jobs))
	bad := make([]bool, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() {
			kept := -1
			for h := range kvh {
				row := scores[offs[i]+h*j.Tokens:][:j.Tokens]
				src := evictSources(func(k int) float32 { return row[k] }, j.Tokens, j.Keep, j.Sinks, j.Recent)
				if kept >= 0 && len(src) != kept {
					bad[i] = true // heads keep different counts
					return
				}
				kept = len(src)
				for dst, from := range src {
					if from != dst {
						moves[i] = append(moves[i], int32(i), int32(h), int32(dst), int32(from))
					}
				}
			}
		})
	}
	wg.Wait()
	var all []int32
	for i := range jobs {
		if bad[i] {
			c.fail(fmt.Errorf("kernels: eviction keeps a different number of tokens in two heads"))
			return
		}
		all = append(all, moves[i]...)
	}
	t2 := time.Now()
	if n := len(all) / 4; n > 0 {
		vp, vc := c.ints(all)
		defer c.release(vp, vc)
		// The staging buffer is as large as the step's moves: one of a
		// few GB (many tables crossing a block at once) gets an exact
		// allocation, freed below, rather than a size class kept cached.
		var tmp cuda.Ptr
		if bytes := 4 * n * (2*l.RowElems() + 1); bytes >= exactBytes {
			p, err := c.ctx.Alloc(bytes)
			c.fail(err)
			if err == nil {
				tmp = p
				defer c.ctx.Free(p) // after the Sync below
			}
		} else {
			p, class := c.alloc(bytes)
			defer c.release(p, class)
			tmp = p
		}
		if vp == 0 || tmp == 0 {
			return // the allocation's error is pending; nothing has moved
		}
		grid, block := cuda.Dim3{X: uint32((n + 7) / 8)}, cuda.Dim3{X: 256}
		c.launch("evict_gather_many", grid, block, append(append(args(tmp, ptr(pool)), layoutArgs(l)...), pBlocks, pJob, vp, int32(n))...)
		c.launch("evict_scatter_many", grid, block, append(append(args(ptr(pool)), layoutArgs(l)...), tmp, pBlocks, pJob, vp, int32(n))...)
	}
	// Return when the compaction has run: the blocks the caller frees next
	// may go to another process (another gateway on kvd's pool), whose
	// work nothing else orders after this stream's.
	if err := c.ctx.Sync(cuda.Stream{}); err != nil {
		c.fail(err)
		return
	}
	c.drained()
	c.evictTiming.add("evict timing", []string{"scores back", "choose", "compact"}, t0, t1, t2, time.Now())
}

// evictMaxRowElems is the longest row, in words, that evict_many stages
// (EVICT_MAX_HD): head dim 128 in float32, 256 in bfloat16.
const evictMaxRowElems = 128

// evictOnDevice is Evict with the survivors chosen on the device
// (evict_many: evictSources' tokens, ties and NaNs alike) and compacted
// in place there, a block per table and head: one upload, one launch per
// 65535 tables, one wait, and nothing copied back.
func (c *CUDA) evictOnDevice(pool *Tensor, l shm.Layout, jobs []EvictJob) {
	kvh := l.KVHeads
	meta := make([]int32, 6*len(jobs))
	var blocks []int32
	src := 0
	for i, j := range jobs {
		meta[6*i], meta[6*i+1], meta[6*i+2] = int32(len(blocks)), int32(j.Tokens), int32(j.Keep)
		meta[6*i+3], meta[6*i+4], meta[6*i+5] = int32(j.Sinks), int32(j.Recent), int32(src)
		blocks = append(blocks, j.Blocks...)
		src += kvh * evictKept(j)
	}
	if len(jobs) == 0 {
		return
	}
	t0 := time.Now()
	mp, mc := c.ints(append(meta, blocks...))
	defer c.release(mp, mc)
	sp, sc := c.alloc(4 * max(src, 1))
	defer c.release(sp, sc)
	if mp == 0 || sp == 0 {
		return // the allocation's error is pending
	}
	pJob, pBlocks := mp, mp+cuda.Ptr(4*len(meta))
	const maxY = 65535 // a grid's y extent
	for from := 0; from < len(jobs); from += maxY {
		y := min(maxY, len(jobs)-from)
		c.launch("evict_many", cuda.Dim3{X: uint32(kvh), Y: uint32(y)}, cuda.Dim3{X: 1024},
			append(append(args(ptr(pool)), layoutArgs(l)...), pBlocks, pJob+cuda.Ptr(4*6*from), sp)...)
	}
	t1 := time.Now()
	// Return when the compaction has run, as Evict does.
	if err := c.ctx.Sync(cuda.Stream{}); err != nil {
		c.fail(err)
		return
	}
	c.drained()
	c.evictTiming.add("evict timing (device)", []string{"queue", "run"}, t0, t1, time.Now())
}

// evictKept is how many tokens each head keeps of j: evictSources' count.
func evictKept(j EvictJob) int {
	n := j.Tokens - j.Recent - j.Sinks
	want := 0
	if n > 0 {
		want = min(max(j.Keep-j.Sinks-j.Recent, 0), n)
	}
	return min(j.Sinks, j.Tokens) + want + max(0, j.Tokens-max(j.Tokens-j.Recent, j.Sinks))
}

// MemInfo is the GPU's free and total memory in bytes.
func (c *CUDA) MemInfo() (free, total uint64, err error) { return c.ctx.MemInfo() }
