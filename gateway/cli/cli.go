// Package cli implements the gateway's command line; main only calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/kvd-project/kvd/gateway/model"
	"github.com/kvd-project/kvd/gateway/runner"
	"github.com/kvd-project/kvd/gateway/tokenizer"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kernels"
)

// ErrUsage marks a command line that cannot be run; it exits with status 2.
var ErrUsage = errors.New("usage")

// ExitCode maps an error from Run to a process exit status.
func ExitCode(err error) int {
	if errors.Is(err, ErrUsage) {
		return 2
	}
	return 1
}

const usage = `usage: gateway [serve] --model DIR [flags]   serve the OpenAI-compatible API
       gateway generate --model DIR --prompt TEXT   complete one prompt greedily

Run "gateway serve -h" or "gateway generate -h" for the flags.
`

// Run executes one gateway command.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command\n%s", ErrUsage, usage)
	}
	if len(args[0]) > 1 && args[0][0] == '-' && args[0] != "-h" && args[0] != "--help" {
		return serve(ctx, args, stderr)
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "generate":
		return generate(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q\n%s", ErrUsage, args[0], usage)
}

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

// flagSet reports whether the command line set the flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func generate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("gateway generate", stderr)
	dir := fs.String("model", "", "Hugging Face model directory (required)")
	format := fs.String("load-format", model.LoadAuto, "weights: auto (safetensors) or dummy (random, for benchmarks)")
	prompt := fs.String("prompt", "", "prompt text (required)")
	chat := fs.Bool("chat", false, "wrap the prompt as a user message with the model's chat template")
	maxTokens := fs.Int("max-tokens", 32, "tokens to generate")
	ignoreEOS := fs.Bool("ignore-eos", false, "keep generating after an end-of-sequence token")
	maxLen := fs.Int("max-model-len", 0, "context length (0: the model's max_position_embeddings)")
	blockSize := fs.Int("block-size", 16, "tokens per KV layer-block (embedded mode)")
	socket := fs.String("kvd-socket", "", "use the kvd daemon on this socket for the KV cache (default: embedded, in process)")
	device := fs.String("device", kernels.DeviceAuto, "auto, cpu or cuda (auto: the GPU when there is one; with a kvd socket, where kvd's pool is)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	switch {
	case *dir == "":
		return fmt.Errorf("%w: --model is required", ErrUsage)
	case *prompt == "":
		return fmt.Errorf("%w: --prompt is required", ErrUsage)
	case *maxTokens < 1:
		return fmt.Errorf("%w: --max-tokens must be at least 1", ErrUsage)
	case *blockSize < 1:
		return fmt.Errorf("%w: --block-size must be at least 1", ErrUsage)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	tok, err := tokenizer.Load(*dir)
	if err != nil {
		return err
	}
	start := time.Now()
	var b kernels.Backend
	var cl *ipc.Client
	if *socket == "" {
		b, err = selectDevice(*device, log)
	} else {
		cl, b, err = dialKVD(ctx, *socket, ipc.Options{Name: "gateway generate", Wait: 2 * time.Second}, *device, log)
	}
	if err != nil {
		return err
	}
	m, err := model.Load(ctx, *dir, b, model.LoadOptions{Format: *format, Progress: stderr, Logger: log})
	if err != nil {
		return err
	}
	log.Info("model loaded", "dir", *dir, "backend", b.Name(), "layers", m.Config.NumLayers, "seconds", time.Since(start).Seconds())
	text := *prompt
	if *chat {
		if text, err = tok.ApplyChatTemplate([]tokenizer.Message{{Role: "user", Content: *prompt}}, true); err != nil {
			return err
		}
	}
	ids, err := tok.Encode(text, !*chat)
	if err != nil {
		return err
	}
	ctxLen := *maxLen
	if ctxLen == 0 {
		ctxLen = m.Config.MaxPositionEmbeddings
	}
	if len(ids)+*maxTokens > ctxLen {
		return fmt.Errorf("%w: prompt of %d tokens plus %d new tokens exceeds --max-model-len %d", ErrUsage, len(ids), *maxTokens, ctxLen)
	}
	var r *runner.Runner
	if cl != nil {
		sc, err := runner.NewSidecar(cl, b)
		if err != nil {
			cl.Shutdown()
			return err
		}
		defer sc.Shutdown()
		log.Info("using kvd", "socket", *socket, "pool", cl.Hello().PoolKind, "blocks", cl.Hello().NumBlocks-1)
		if r, err = runner.New(m, sc); err != nil {
			return err
		}
	} else if r, err = runner.NewEmbedded(m, runner.BlocksFor(m.Config, len(ids)+*maxTokens, *blockSize), *blockSize, nil); err != nil {
		return err
	}
	var stop []int32
	if !*ignoreEOS {
		for _, id := range tok.EOS() {
			stop = append(stop, int32(id))
		}
	}
	prompt32 := make([]int32, len(ids))
	for i, id := range ids {
		prompt32[i] = int32(id)
	}
	dec := tok.NewStreamDecoder(true)
	var sb strings.Builder
	t0 := time.Now()
	out, err := r.Greedy(ctx, 1, prompt32, *maxTokens, stop, func(t int32) {
		s := dec.Add(int(t))
		sb.WriteString(s)
		fmt.Fprint(stdout, s)
	})
	fmt.Fprintln(stdout, dec.Flush())
	if err != nil {
		return err
	}
	el := time.Since(t0).Seconds()
	log.Info("generated", "prompt_tokens", len(ids), "completion_tokens", len(out), "seconds", el, "tokens_per_second", float64(len(out))/el)
	return nil
}
