// Command gateway serves a Llama-family model. This version runs the model
// from the command line (`gateway generate`); the OpenAI-compatible HTTP
// server arrives on top of the same runner.
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
