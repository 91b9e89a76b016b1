package observability

import (
	"os"
	"runtime/pprof"
	"strings"
)

// CPUProfile starts, for developers, a CPU profile of the process into the
// file KVD_CPUPROFILE names, where %s stands for service ("gateway",
// "kvd"), so that both started with one environment write apart; stop
// ends it. Without the variable it does nothing.
func CPUProfile(service string) (stop func(), err error) {
	path := os.Getenv("KVD_CPUPROFILE")
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(strings.ReplaceAll(path, "%s", service))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
