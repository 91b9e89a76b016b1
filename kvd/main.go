// Command kvd is the KV memory daemon: `kvd serve` owns the KV pool (GPU
// memory shared over CUDA IPC, or shared host memory), its block tables
// and the sparsity policy; `kvd status` reports on a running one; `kvd
// layout` prints the pool geometry it would serve for a model and a memory
// budget.
package main

import (
	"fmt"
	"os"

	"github.com/kvd-project/kvd/kvd/cli"
)

func main() {
	if err := cli.Run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kvd:", err)
		os.Exit(cli.ExitCode(err))
	}
}
