// Package machine describes the machine a benchmark runs on, for the
// results it writes. It must not import the rest of the module.
package machine

import (
	"os"
	"strings"
)

// CPUName is the processor's model name from /proc/cpuinfo.
func CPUName() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
		}
	}
	return "unknown CPU"
}
