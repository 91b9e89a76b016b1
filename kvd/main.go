// Command kvd is the KV memory daemon. This version answers `kvd layout`:
// the pool geometry kvd would serve for a model and a memory budget. The
// daemon itself (`kvd serve`, `kvd status`) arrives with its control API.
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
