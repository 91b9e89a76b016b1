// Package cli implements kvd's command line; main only calls Run.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/kvd-project/kvd/gateway/model"
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
  layout   show the pool geometry for a model and a memory budget
`

// Run executes one kvd command.
func Run(args []string, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: no command\n%s", ErrUsage, usage)
	}
	switch args[0] {
	case "layout":
		return layout(args[1:], out)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	return fmt.Errorf("%w: unknown command %q\n%s", ErrUsage, args[0], usage)
}

func layout(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kvd layout", flag.ContinueOnError)
	fs.SetOutput(out)
	dir := fs.String("model", "", "model directory whose config.json gives the geometry (required)")
	mem := fs.String("kv-memory", "1GiB", "pool size in bytes, with an optional KiB/MiB/GiB suffix")
	bs := fs.Int("block-size", 16, "tokens per layer-block")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if *dir == "" {
		return fmt.Errorf("%w: --model is required", ErrUsage)
	}
	bytes, err := ParseSize(*mem)
	if err != nil {
		return fmt.Errorf("%w: --kv-memory: %v", ErrUsage, err)
	}
	c, err := model.LoadConfig(*dir)
	if err != nil {
		return err
	}
	l := shm.Layout{BlockSize: *bs, KVHeads: c.NumKVHeads, HeadDim: c.HeadDim}
	per := int64(l.BlockElems()) * 4
	l.NumBlocks = int(bytes / per)
	if err := l.Validate(); err != nil {
		return fmt.Errorf("--kv-memory %s holds %d blocks of %d bytes: %w", *mem, l.NumBlocks, per, err)
	}
	tokens := int64(l.NumBlocks-1) * int64(l.BlockSize) / int64(c.NumLayers)
	fmt.Fprintf(out, "layers          %d\nkv heads        %d\nhead dim        %d\nblock size      %d tokens\nbytes per block %d (float32 K, V and scores)\nblocks          %d (block 0 reserved)\nfull-KV tokens  %d (every layer full)\n",
		c.NumLayers, c.NumKVHeads, c.HeadDim, l.BlockSize, per, l.NumBlocks, tokens)
	return nil
}

// ParseSize reads "1073741824", "512MiB", "1GiB", "64KiB" (also KB/MB/GB as
// powers of 1000).
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size", s)
	}
	return int64(n * float64(mult)), nil
}
