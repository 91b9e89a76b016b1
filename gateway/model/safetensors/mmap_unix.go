//go:build unix

package safetensors

import (
	"fmt"
	"math"
	"os"

	"golang.org/x/sys/unix"
)

// mmapFile maps the whole file read-only. MAP_SHARED so that the pages are
// the page cache's, shared with every other reader of the file.
func mmapFile(f *os.File, size int64) ([]byte, error) {
	if size > math.MaxInt {
		return nil, fmt.Errorf("%d bytes do not fit the address space", size)
	}
	return unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
}

func munmap(m []byte) error { return unix.Munmap(m) }
