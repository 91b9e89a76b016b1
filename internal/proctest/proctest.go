// Package proctest holds helpers for tests that run the project's real
// binaries as child processes.
package proctest

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Buffer collects a child's output while the test reads it: an io.Writer
// safe to read from another goroutine.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartServer runs bin with args plus --listen on a free loopback port,
// waits until its /health answers 200, and stops it (SIGINT) when the test
// ends. It returns the base URL; the child's output goes to logs.
func StartServer(t testing.TB, bin string, logs io.Writer, args ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, append(args, "--listen", addr)...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	})
	base := "http://" + addr
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(base + "/health"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
	}
	t.Fatalf("%s did not come up on %s", bin, addr)
	return ""
}

// Build compiles the main package pkg (an import path) into a temporary
// directory and returns the binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	if dir := os.Getenv("KVD_TEST_BIN_DIR"); dir != "" {
		// Prebuilt binaries: the GPU machine runs test binaries built
		// elsewhere and has no Go toolchain.
		bin := filepath.Join(dir, path.Base(pkg))
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("KVD_TEST_BIN_DIR: %v", err)
		}
		return bin
	}
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
