package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kernels/cuda"
	"github.com/kvd-project/kvd/kvd/api"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/observability"
	"github.com/kvd-project/kvd/shm"
)

// geometry is the model shape the pool is laid out for.
type geometry struct {
	layers, kvHeads, headDim int
	model                    string
}

func serve(args []string, out io.Writer) error {
	fs := flag("kvd serve", out)
	socket := fs.String("socket", ipc.DefaultSocket(), "unix socket to listen on")
	mem := fs.String("kv-memory", "0.1", "pool size: bytes with an optional KiB/MiB/GiB suffix, or a fraction (0,1] of available memory (on a GPU: of its free memory when kvd starts, so leave room for the gateway's weights)")
	bs := fs.Int("block-size", 16, "tokens per layer-block")
	dir := fs.String("model", "", "model directory whose config.json gives the geometry")
	layers := fs.Int("layers", 0, "decoder layers (instead of --model)")
	kvHeads := fs.Int("kv-heads", 0, "KV heads (instead of --model)")
	headDim := fs.Int("head-dim", 0, "head dimension (instead of --model)")
	dtype := fs.String("kv-cache-dtype", "auto", "how the pool holds K and V: float32, bfloat16 (half the bytes a token; rounded to nearest even), fp8 (fp8_e4m3: a quarter of float32's bytes, rounded to nearest even and saturated at ±448) or auto (bfloat16 on a GPU, as the model's weights; float32 on the CPU)")
	kvPolicy := fs.String("kv-policy", "", "per-layer sparsity, e.g. \"0-1=full;2-31=snapkv:budget=1024/h2o:recent=32\" (default: every layer full)")
	sparseLayers := fs.Int("sparse-layers", 0, "the seed's preset: the last N layers keep a SnapKV window of --window tokens, held by H2O while decoding")
	window := fs.Int("window", 1024, "tokens the --sparse-layers keep")
	ipcMode := fs.String("cuda-ipc", "fd", "how a GPU pool is shared: fd (a file descriptor of memory from CUDA's virtual memory management, passed over the socket) or handle (a legacy CUDA IPC handle; on an H200 the gateway's decode read it at 0.65x the speed)")
	grace := fs.Duration("grace", 10*time.Second, "how long a dropped client's sequences are kept for it to reconnect")
	level := fs.String("log-level", observability.LogLevelFromEnv(), "debug, info, warn or error")
	device := fs.String("device", kernels.DeviceAuto, "auto, cpu or cuda: where the pool lives and eviction runs (cuda: GPU memory the gateway opens over CUDA IPC; auto: the GPU when there is one)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	log, err := observability.NewLogger(os.Stderr, *level, "text")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	slog.SetDefault(log) // the engine logs what it skips through the default
	switch *device {
	case kernels.DeviceAuto, kernels.DeviceCPU, kernels.DeviceCUDA:
	default:
		return fmt.Errorf("%w: --device %q: want auto, cpu or cuda", ErrUsage, *device)
	}
	if *ipcMode != "fd" && *ipcMode != "handle" {
		return fmt.Errorf("%w: --cuda-ipc %q: want fd or handle", ErrUsage, *ipcMode)
	}
	if _, err := shm.ParseDType(*dtype); err != nil {
		return fmt.Errorf("%w: --kv-cache-dtype: %v", ErrUsage, err)
	}
	if *bs < 1 || *grace < 0 {
		return fmt.Errorf("%w: --block-size must be positive and --grace not negative", ErrUsage)
	}
	g, err := readGeometry(*dir, *layers, *kvHeads, *headDim)
	if err != nil {
		return err
	}
	spec, err := policy.FromFlags(*kvPolicy, *sparseLayers, *window, g.layers)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	b, why, err := kernels.Select(*device)
	if err != nil {
		return err
	}
	avail := pool.AvailableMemory
	if g, ok := b.(*kernels.CUDA); ok {
		defer g.Close()
		avail = func() (int64, error) { free, _, err := g.MemInfo(); return int64(free), err }
		why += "; the pool is GPU memory the gateway opens over CUDA IPC"
	} else {
		why += "; the pool is shared host memory (memfd)"
	}
	log.Info("backend chosen", "backend", b.Name(), "why", why)
	kvType, err := shm.ResolveDType(*dtype, b.Name() == kernels.DeviceCUDA, g.headDim)
	if err != nil {
		return fmt.Errorf("%w: --kv-cache-dtype: %v", ErrUsage, err)
	}
	l, err := layoutFor(*mem, avail, *bs, g, kvType)
	if err != nil {
		return err
	}
	if err := l.Validate(); err != nil {
		return fmt.Errorf("%w: --kv-cache-dtype: %v", ErrUsage, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile, err := observability.CPUProfile("kvd") // KVD_CPUPROFILE, for developers
	if err != nil {
		return err
	}
	defer stopProfile()
	shutdown, err := observability.Setup(ctx, "kvd")
	if err != nil {
		return err
	}
	defer shutdown(context.Background())
	var p pool.Pool
	cfg := engine.Config{Spec: spec, Model: g.model, Grace: *grace}
	if n, err := strconv.Atoi(os.Getenv("KVD_STEP_TIMING")); err == nil && n > 0 {
		cfg.EvictTiming = n // for developers: where eviction's time goes
	}
	if gpu, ok := b.(*kernels.CUDA); ok {
		p, err = pool.NewShared(gpu, l, *ipcMode == "fd")
		var ce *cuda.Error
		if err != nil && *ipcMode == "fd" && !(errors.As(err, &ce) && ce.Name == "CUDA_ERROR_OUT_OF_MEMORY") {
			// A driver or platform without CUDA's POSIX-fd memory export.
			log.Warn("cannot share the GPU pool as a file descriptor; falling back to a CUDA IPC handle (--cuda-ipc handle)", "err", err)
			p, err = pool.NewShared(gpu, l, false)
		}
		if err != nil {
			return err
		}
		closeNVML := gpuStatus(gpu, &cfg, log)
		defer closeNVML()
	} else if p, err = pool.NewHost(l); err != nil {
		return err
	}
	defer p.Close()
	e, err := engine.New(p, cfg)
	if err != nil {
		return err
	}
	ln, err := api.Listen(*socket)
	if err != nil {
		return err
	}
	log.Info("kvd serving", "socket", *socket, "pool", p.Kind(), "bytes", p.Bytes(), "blocks", l.NumBlocks-1,
		"block_size", l.BlockSize, "layers", g.layers, "kv_heads", g.kvHeads, "head_dim", g.headDim, "kv_cache_dtype", l.DType, "pid", os.Getpid())
	err = api.New(e, log, *grace).Serve(ctx, ln)
	log.Info("kvd stopped")
	return err
}

func readGeometry(dir string, layers, kvHeads, headDim int) (geometry, error) {
	if dir != "" {
		if layers != 0 || kvHeads != 0 || headDim != 0 {
			return geometry{}, fmt.Errorf("%w: give --model or --layers/--kv-heads/--head-dim, not both", ErrUsage)
		}
		c, err := model.LoadConfig(dir)
		if err != nil {
			return geometry{}, err
		}
		return geometry{c.NumLayers, c.NumKVHeads, c.HeadDim, dir}, nil
	}
	if layers < 1 || kvHeads < 1 || headDim < 1 {
		return geometry{}, fmt.Errorf("%w: the pool's geometry is needed: --model DIR, or --layers, --kv-heads and --head-dim", ErrUsage)
	}
	return geometry{layers, kvHeads, headDim, ""}, nil
}

// gpuStatus has status read the pool's GPU through NVML; without NVML the
// status says why.
func gpuStatus(g *kernels.CUDA, cfg *engine.Config, log *slog.Logger) (close func()) {
	name := g.Device().String()
	nv, err := cuda.OpenNVML(g.Device().Index)
	if err != nil {
		log.Warn("no GPU readings in status", "err", err)
		cfg.GPU = func() *ipc.GPUStatus { return &ipc.GPUStatus{Name: name, Error: err.Error()} }
		return func() {}
	}
	cfg.GPU = func() *ipc.GPUStatus {
		st, err := nv.Stats()
		if err != nil {
			return &ipc.GPUStatus{Name: name, Error: err.Error()}
		}
		return &ipc.GPUStatus{Name: name, MemoryUsedBytes: st.MemoryUsed, MemoryTotalBytes: st.MemoryTotal,
			Utilization: float64(st.Utilization) / 100, TemperatureC: st.Temperature}
	}
	return nv.Close
}

// layoutFor sizes the pool: mem is bytes (with a unit) or a fraction of
// what avail reports.
func layoutFor(mem string, avail func() (int64, error), bs int, g geometry, dt shm.DType) (shm.Layout, error) {
	bytes, err := pool.ParseSizeOf(mem, avail)
	if err != nil {
		return shm.Layout{}, fmt.Errorf("%w: --kv-memory: %v", ErrUsage, err)
	}
	l, err := pool.LayoutFor(bytes, bs, g.kvHeads, g.headDim, dt)
	if err != nil {
		return l, fmt.Errorf("--kv-memory %s: %w", mem, err)
	}
	return l, nil
}
