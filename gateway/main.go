// Command gateway serves a Llama-family model over an OpenAI-compatible
// HTTP API (`gateway serve`), with its KV cache in kvd's pool (a sidecar)
// or its own (`--embedded`), and runs it from the command line (`gateway
// generate`).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/kvd-project/kvd/gateway/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(cli.ExitCode(err))
	}
}
