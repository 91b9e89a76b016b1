package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/ipc"
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
	mem := fs.String("kv-memory", "0.1", "pool size: bytes with an optional KiB/MiB/GiB suffix, or a fraction (0,1] of available memory")
	bs := fs.Int("block-size", 16, "tokens per layer-block")
	dir := fs.String("model", "", "model directory whose config.json gives the geometry")
	layers := fs.Int("layers", 0, "decoder layers (instead of --model)")
	kvHeads := fs.Int("kv-heads", 0, "KV heads (instead of --model)")
	headDim := fs.Int("head-dim", 0, "head dimension (instead of --model)")
	dtype := fs.String("dtype", "float32", "KV element type (the CPU pool holds float32)")
	kvPolicy := fs.String("kv-policy", "", "per-layer sparsity, e.g. \"0-1=full;2-31=snapkv:budget=1024/h2o:recent=32\" (default: every layer full)")
	sparseLayers := fs.Int("sparse-layers", 0, "the seed's preset: the last N layers keep a SnapKV window of --window tokens, held by H2O while decoding")
	window := fs.Int("window", 1024, "tokens the --sparse-layers keep")
	grace := fs.Duration("grace", 10*time.Second, "how long a dropped client's sequences are kept for it to reconnect")
	level := fs.String("log-level", observability.LogLevelFromEnv(), "debug, info, warn or error")
	device := fs.String("device", "auto", "auto or cpu: where the pool lives and eviction runs (the GPU pool, shared over CUDA IPC, is not built yet)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	log, err := observability.NewLogger(os.Stderr, *level, "text")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	switch *device {
	case "auto", "cpu":
		log.Info("backend chosen", "backend", "cpu", "why", "--device "+*device+": kvd's pool is shared host memory (memfd)")
	case "cuda":
		return fmt.Errorf("%w: --device cuda: kvd cannot hold its pool on the GPU yet (that needs CUDA IPC); for the GPU run the gateway alone with --embedded --device cuda", ErrUsage)
	default:
		return fmt.Errorf("%w: --device %q: want auto, cpu or cuda", ErrUsage, *device)
	}
	if *dtype != "float32" {
		return fmt.Errorf("%w: --dtype %s: the host pool holds float32 only", ErrUsage, *dtype)
	}
	if *bs < 1 || *grace < 0 {
		return fmt.Errorf("%w: --block-size must be positive and --grace not negative", ErrUsage)
	}
	g, err := readGeometry(*dir, *layers, *kvHeads, *headDim)
	if err != nil {
		return err
	}
	l, err := layoutFor(*mem, *bs, g)
	if err != nil {
		return err
	}
	spec, err := policy.FromFlags(*kvPolicy, *sparseLayers, *window, g.layers)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if path := os.Getenv("KVD_CPUPROFILE"); path != "" { // for developers: where kvd's time goes
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	shutdown, err := observability.Setup(ctx, "kvd")
	if err != nil {
		return err
	}
	defer shutdown(context.Background())
	p, err := pool.NewHost(l)
	if err != nil {
		return err
	}
	defer p.Close()
	e, err := engine.New(p, engine.Config{Spec: spec, Model: g.model, Grace: *grace})
	if err != nil {
		return err
	}
	ln, err := api.Listen(*socket)
	if err != nil {
		return err
	}
	log.Info("kvd serving", "socket", *socket, "pool", p.Kind(), "bytes", p.Bytes(), "blocks", l.NumBlocks-1,
		"block_size", l.BlockSize, "layers", g.layers, "kv_heads", g.kvHeads, "head_dim", g.headDim, "pid", os.Getpid())
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

// layoutFor sizes the pool: mem is bytes (with a unit) or a fraction of the
// host's available memory.
func layoutFor(mem string, bs int, g geometry) (shm.Layout, error) {
	bytes, err := pool.ParseSize(mem)
	if err != nil {
		return shm.Layout{}, fmt.Errorf("%w: --kv-memory: %v", ErrUsage, err)
	}
	l, err := pool.LayoutFor(bytes, bs, g.kvHeads, g.headDim)
	if err != nil {
		return l, fmt.Errorf("--kv-memory %s: %w", mem, err)
	}
	return l, nil
}
