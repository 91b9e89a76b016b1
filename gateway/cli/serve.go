package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/valyala/fasthttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/kvd-project/kvd/gateway/api"
	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/gateway/sched"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
	"github.com/kvd-project/kvd/kvd/engine"
	"github.com/kvd-project/kvd/kvd/policy"
	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/observability"
	"github.com/kvd-project/kvd/shm"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("gateway", stderr)
	dir := fs.String("model", "", "Hugging Face model directory (required)")
	name := fs.String("served-model-name", "", "model id clients send (default: the model directory's name)")
	listen := fs.String("listen", "127.0.0.1:8080", "address to serve HTTP on")
	socket := fs.String("kvd-socket", ipc.DefaultSocket(), "kvd's unix socket (sidecar mode)")
	embedded := fs.Bool("embedded", false, "run kvd's engine in this process instead of talking to a kvd daemon")
	kvMem := fs.String("kv-memory", "0.1", "embedded mode: KV pool size in bytes (512MiB, 4GiB) or a fraction of available memory (on a GPU: of what the weights and the largest step's activations leave, a --max-model-len prompt included)")
	blockSize := fs.Int("block-size", 16, "embedded mode: tokens per KV layer-block")
	kvType := fs.String("kv-cache-dtype", "auto", "embedded mode: how the pool holds K and V: float32, bfloat16 (half the bytes; rounded to nearest even), fp8 (fp8_e4m3: a quarter of float32's bytes, rounded to nearest even and saturated at ±448) or auto (bfloat16 on a GPU, as the model's weights; float32 on the CPU); a sidecar's pool is kvd's (kvd serve --kv-cache-dtype)")
	kvPolicy := fs.String("kv-policy", "", "embedded mode: per-layer sparsity (see kvd serve -h)")
	sparseLayers := fs.Int("sparse-layers", 0, "embedded mode: the seed's preset, the last N layers sparse")
	window := fs.Int("window", 1024, "embedded mode: tokens the --sparse-layers keep")
	format := fs.String("load-format", model.LoadAuto, "weights: auto (safetensors) or dummy (random, for benchmarks)")
	skipTok := fs.Bool("skip-tokenizer-init", false, "serve without the tokenizer files: prompts must be token ids, outputs have no text (as vLLM's flag)")
	maxLen := fs.Int("max-model-len", 0, "context length (default: the model's max_position_embeddings)")
	maxSeqs := fs.Int("max-num-seqs", 0, "sequences running at once; 0: 1024 on a GPU of 70 GiB or more but an A100, 256 otherwise (vLLM's defaults for its server)")
	maxBatched := fs.Int("max-num-batched-tokens", 0, "tokens per scheduler step (a prompt that cannot be chunked may exceed it, as a step's first prompt); 0: 8192 on a GPU of 70 GiB or more but an A100, 2048 otherwise (vLLM's defaults for its server)")
	maxQueue := fs.Int("max-queue-len", 1024, "waiting requests before new ones get 503")
	async := fs.Bool("async-scheduling", true, "schedule and reserve each step while the one before runs, so the host's work between steps (kvd's reserve, scheduling) overlaps the device's; off by itself for models whose layers evict between steps; a request that stops on a token runs one extra row, dropped (--async-scheduling=false: each step scheduled after the one before returns)")
	chunked := fs.Bool("enable-chunked-prefill", true, "split long prompts over steps of --max-num-batched-tokens, next to running decodes (models whose layers all keep their whole context; sparse layers prefill a prompt at once)")
	apiKey := fs.String("api-key", os.Getenv("KVD_API_KEY"), "require Authorization: Bearer <key> on /v1 (also KVD_API_KEY)")
	device := fs.String("device", kernels.DeviceAuto, "auto, cpu or cuda: where the model runs (auto: the GPU when there is one and --embedded is set)")
	level := fs.String("log-level", observability.LogLevelFromEnv(), "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	log, err := observability.NewLogger(stderr, *level, "text")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	switch {
	case *dir == "":
		return fmt.Errorf("%w: --model is required", ErrUsage)
	case *maxQueue < 1 || *blockSize < 1:
		return fmt.Errorf("%w: --max-queue-len and --block-size must be positive", ErrUsage)
	case *maxBatched < 0:
		return fmt.Errorf("%w: --max-num-batched-tokens %d: give a positive number of tokens a step, or 0 for the default", ErrUsage, *maxBatched)
	case *maxSeqs < 0:
		return fmt.Errorf("%w: --max-num-seqs %d: give a positive number of sequences, or 0 for the default", ErrUsage, *maxSeqs)
	case *maxLen < 0:
		return fmt.Errorf("%w: --max-model-len must not be negative", ErrUsage)
	}
	if *name == "" {
		*name = filepath.Base(filepath.Clean(*dir))
	}
	stopProfile, err := observability.CPUProfile("gateway") // KVD_CPUPROFILE, for developers
	if err != nil {
		return err
	}
	defer stopProfile()
	shutdown, err := observability.Setup(ctx, "gateway")
	if err != nil {
		return err
	}
	defer shutdown(context.Background())

	var tok *tokenizer.Tokenizer
	if !*skipTok {
		if tok, err = tokenizer.Load(*dir); err != nil {
			return fmt.Errorf("%w (serving a model without its tokenizer files? --skip-tokenizer-init takes token-id prompts only)", err)
		}
	}
	var b kernels.Backend
	var cl *ipc.Client
	if *embedded {
		b, err = selectDevice(*device, log)
	} else {
		cl, b, err = dialKVD(ctx, *socket, ipc.Options{Name: "gateway " + *listen, Wait: 10 * time.Second}, *device, log)
	}
	if err != nil {
		return err
	}
	m, err := model.Load(ctx, *dir, b, model.LoadOptions{Format: *format, Progress: stderr, Logger: log})
	if err != nil {
		return err
	}
	c := m.Config
	if *skipTok {
		bos := -1
		if c.BOSTokenID != nil {
			bos = *c.BOSTokenID
		}
		tok = tokenizer.IDsOnly(c.VocabSize, bos, c.EOSTokenID)
		log.Info("no tokenizer (--skip-tokenizer-init): prompts must be token ids, outputs have ids and no text")
	}
	if *maxLen == 0 {
		*maxLen = c.MaxPositionEmbeddings
	}
	if tokens, seqs := stepDefaults(b); *maxBatched == 0 || *maxSeqs == 0 {
		if *maxBatched == 0 {
			*maxBatched = tokens
		}
		if *maxSeqs == 0 {
			*maxSeqs = seqs
		}
		log.Info("step limits", "max_num_batched_tokens", *maxBatched, "max_num_seqs", *maxSeqs)
	}
	var r *runner.Runner
	var status func(context.Context) (*ipc.Status, error)
	var ready func(context.Context) error
	if *embedded {
		bytes, err := pool.ParseSizeOf(*kvMem, freeMemory(b, c, largestStep(*maxBatched, *maxLen, *maxSeqs)))
		if err != nil {
			return fmt.Errorf("%w: --kv-memory: %v", ErrUsage, err)
		}
		dt, err := shm.ResolveDType(*kvType, b.Name() == kernels.DeviceCUDA, c.HeadDim)
		if err != nil {
			return fmt.Errorf("%w: --kv-cache-dtype: %v", ErrUsage, err)
		}
		l, err := pool.LayoutFor(bytes, *blockSize, c.NumKVHeads, c.HeadDim, dt)
		if err != nil {
			return fmt.Errorf("--kv-memory %s: %w", *kvMem, err)
		}
		spec, err := policy.FromFlags(*kvPolicy, *sparseLayers, *window, c.NumLayers)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUsage, err)
		}
		local, err := engine.NewLocalOn(b, l, spec)
		if err != nil {
			return err
		}
		defer local.Shutdown()
		if r, err = runner.New(m, local); err != nil {
			return err
		}
		status = func(ctx context.Context) (*ipc.Status, error) { return local.Engine().Status(ctx), nil }
		log.Info("kv cache in process", "blocks", l.NumBlocks-1, "block_size", l.BlockSize, "memory", b.Name())
	} else {
		if err := checkActivations(b, c, largestStep(*maxBatched, *maxLen, *maxSeqs)); err != nil {
			cl.Shutdown()
			return err
		}
		sc, err := runner.NewSidecar(cl, b)
		if err != nil {
			cl.Shutdown()
			return err
		}
		defer sc.Shutdown()
		if r, err = runner.New(m, sc); err != nil {
			return err
		}
		status = func(ctx context.Context) (*ipc.Status, error) { return ipc.QueryStatus(ctx, *socket) }
		ready = func(ctx context.Context) error { _, err := status(ctx); return err }
		log.Info("kv cache in kvd", "socket", *socket, "blocks", cl.Hello().NumBlocks-1, "block_size", cl.Hello().BlockSize)
	}
	if err := kvGauges(status); err != nil {
		return err
	}
	closeNVML, err := gpuGauges(b, log)
	if err != nil {
		return err
	}
	defer closeNVML()
	s, err := sched.New(r, sched.Config{MaxNumSeqs: *maxSeqs, MaxBatchTokens: *maxBatched, MaxModelLen: *maxLen, MaxQueue: *maxQueue, ChunkedPrefill: *chunked,
		AsyncScheduling: *async, AsyncDefault: !flagSet(fs, "async-scheduling"), Logger: log})
	if err != nil {
		return err
	}
	schedDone := make(chan struct{})
	schedCtx, stopSched := context.WithCancel(context.Background())
	go func() { s.Run(schedCtx); close(schedDone) }()
	defer func() { stopSched(); <-schedDone }()

	srv := api.New(ctx, api.Config{
		Tokenizer: tok, Scheduler: s, ModelName: *name, MaxModelLen: *maxLen, VocabSize: c.VocabSize,
		APIKey: *apiKey, Logger: log, Ready: ready,
	})
	hs := &fasthttp.Server{
		Handler:            srv.Handler,
		Name:               "kvd-gateway",
		ReadTimeout:        time.Minute, // reading a request; responses (long streams) have no write timeout
		IdleTimeout:        2 * time.Minute,
		MaxRequestBodySize: 64 << 20,
		Logger:             fasthttpLogger{log},
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	log.Info("gateway serving", "listen", ln.Addr().String(), "model", *name, "max_model_len", *maxLen, "backend", m.Backend().Name())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	stopSched() // fails requests still running, so streams end
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.ShutdownWithContext(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// kvGauges exports the pool's block counts, read from kvd at scrape time.
func kvGauges(status func(context.Context) (*ipc.Status, error)) error {
	meter := observability.Meter("gateway")
	used, err := meter.Int64ObservableGauge("kvd_kv_blocks_used", metric.WithDescription("KV layer-blocks in use in kvd's pool."))
	if err != nil {
		return err
	}
	total, err := meter.Int64ObservableGauge("kvd_kv_blocks_total", metric.WithDescription("KV layer-blocks in kvd's pool."))
	if err != nil {
		return err
	}
	evicted, err := meter.Int64ObservableCounter("kvd_kv_evicted_tokens", metric.WithDescription("Tokens evicted from sparse layers by kvd."))
	if err != nil {
		return err
	}
	returned, err := meter.Int64ObservableCounter("kvd_kv_evicted_blocks", metric.WithDescription("Blocks returned to kvd's pool by eviction."))
	if err != nil {
		return err
	}
	retained, err := meter.Int64ObservableGauge("kvd_kv_layer_tokens", metric.WithDescription("Tokens held per layer, over all sequences."))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		st, err := status(ctx)
		if err != nil {
			return nil // kvd is away; the scrape shows no sample
		}
		o.ObserveInt64(used, int64(st.BlocksUsed))
		o.ObserveInt64(total, int64(st.BlocksTotal))
		o.ObserveInt64(evicted, int64(st.TokensEvicted))
		o.ObserveInt64(returned, int64(st.BlocksReturned))
		for _, l := range st.Layers {
			o.ObserveInt64(retained, int64(l.TokensRetained), metric.WithAttributes(attribute.Int("layer", l.Index)))
		}
		return nil
	}, used, total, evicted, returned, retained)
	return err
}

type fasthttpLogger struct{ log *slog.Logger }

func (l fasthttpLogger) Printf(format string, args ...any) { l.log.Warn(fmt.Sprintf(format, args...)) }
