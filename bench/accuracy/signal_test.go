package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvd-project/kvd/internal/proctest"
)

// TestSignalStopsGateways runs the harness binary with two gateways at
// once, interrupts the harness alone mid-run (as timeout -s INT does, the
// gateways not told), and checks that the gateways it started are gone
// when it has exited.
func TestSignalStopsGateways(t *testing.T) {
	gw := proctest.Build(t, "github.com/kvd-project/kvd/gateway")
	harness := proctest.Build(t, "github.com/kvd-project/kvd/bench/accuracy")
	dir := t.TempDir()
	modelDir, tok, files := tinyHeldout(t)
	samples, err := makeSamples(tok, files, []int{192, 320}, 50, 7) // more than the run gets through before the signal
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(SampleSet{Model: modelDir, Seed: 7, Lengths: []int{192, 320}, Samples: samples})
	set := filepath.Join(dir, "samples.json")
	if err := os.WriteFile(set, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr proctest.Buffer // read while the harness still writes it
	cmd := exec.Command(harness, "-samples", set, "-gateway", gw, "-model", modelDir, "-kv-memory", "64MiB",
		"-parallel", "2", "-configs", "0-1", "-raw-out", filepath.Join(dir, "raw.json"))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var kids []int
	t.Cleanup(func() {
		cmd.Process.Kill()
		for _, pid := range kids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	// Wait for both gateways to be up and scoring: the raw file is written
	// once a sample is done.
	deadline := time.Now().Add(60 * time.Second)
	for len(kids) < 2 || !exists(filepath.Join(dir, "raw.json")) {
		if time.Now().After(deadline) {
			t.Fatalf("gateways %v, no sample scored after 60 s; harness: %s", kids, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
		kids = children(cmd.Process.Pid, gw)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if err == nil || !strings.Contains(stderr.String(), "stopped by interrupt") {
		t.Fatalf("the harness ended with %v before the signal stopped it: %s", err, stderr.String())
	}
	for _, pid := range kids {
		// The harness waited for its gateways, so they are gone, not
		// zombies: kill(pid, 0) fails.
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("gateway %d still running after the harness was stopped", pid)
		}
	}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// children lists the processes whose parent is ppid and whose executable
// is bin.
func children(ppid int, bin string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == bin {
			pids = append(pids, pid)
		}
	}
	return pids
}
