// Package cli implements kvd's command line; main only calls Run.
package cli

import (
	"errors"
	goflag "flag"
	"fmt"
	"io"

	"github.com/kvd-project/kvd/kvd/pool"
	"github.com/kvd-project/kvd/shm"
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

const usage = `usage: kvd <command> [flags]

commands:
  serve    run the daemon: own the KV pool and answer on the unix socket
  status   show the running daemon's pool, clients and layers (--json for machines)
  layout   show the pool geometry for a model and a memory budget
`

// Run executes one kvd command.
func Run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command\n%s", ErrUsage, usage)
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], out)
	case "status":
		return status(args[1:], out)
	case "layout":
		return layout(args[1:], out)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q\n%s", ErrUsage, args[0], usage)
}

func layout(args []string, out io.Writer) error {
	fs := flag("kvd layout", out)
	dir := fs.String("model", "", "model directory whose config.json gives the geometry (required)")
	mem := fs.String("kv-memory", "1GiB", "pool size in bytes, with an optional KiB/MiB/GiB suffix")
	bs := fs.Int("block-size", 16, "tokens per layer-block")
	dtype := fs.String("kv-cache-dtype", "auto", "float32, bfloat16, fp8 or auto (float32 here; kvd serve's auto is bfloat16 on a GPU)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if *dir == "" {
		return fmt.Errorf("%w: --model is required", ErrUsage)
	}
	dt, err := shm.ParseDType(*dtype)
	if err != nil {
		return fmt.Errorf("%w: --kv-cache-dtype: %v", ErrUsage, err)
	}
	g, err := readGeometry(*dir, 0, 0, 0)
	if err != nil {
		return err
	}
	l, err := layoutFor(*mem, pool.AvailableMemory, *bs, g, dt)
	if err != nil {
		return err
	}
	per := int64(l.BlockElems()) * 4
	tokens := int64(l.NumBlocks-1) * int64(l.BlockSize) / int64(g.layers)
	fmt.Fprintf(out, "layers          %d\nkv heads        %d\nhead dim        %d\nblock size      %d tokens\nbytes per block %d (%v K and V, float32 scores)\nblocks          %d (block 0 reserved)\nfull-KV tokens  %d (every layer full)\n",
		g.layers, g.kvHeads, g.headDim, l.BlockSize, per, l.DType, l.NumBlocks, tokens)
	return nil
}

// flag returns a flag set that reports errors instead of exiting.
func flag(name string, out io.Writer) *goflag.FlagSet {
	fs := goflag.NewFlagSet(name, goflag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}
