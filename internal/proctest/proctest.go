// Package proctest holds helpers for tests that run the project's real
// binaries as child processes.
package proctest

import (
	"strings"
	"sync"
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
