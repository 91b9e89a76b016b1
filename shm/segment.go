package shm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Segment is a shared-memory region backed by a memfd, mapped read-write
// into this process. The creator (kvd) and every client that received the
// fd over the socket map the same pages.
type Segment struct {
	fd   int
	data []byte
}

// Create makes an anonymous memfd of size bytes and maps it.
func Create(name string, size int64) (*Segment, error) {
	if size <= 0 {
		return nil, fmt.Errorf("shm: segment %q of %d bytes", name, size)
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create %q: %w", name, err)
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: sizing %q to %d bytes: %w", name, size, err)
	}
	// The size is fixed from here on: a client cannot shrink the segment
	// under kvd (which would turn reads into SIGBUS).
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: sealing %q: %w", name, err)
	}
	return Map(fd, size)
}

// Map maps an fd received from kvd. The Segment takes ownership of fd.
// The fd's actual size must be at least size: a short fd is refused rather
// than faulting later.
func Map(fd int, size int64) (*Segment, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: stat fd %d: %w", fd, err)
	}
	if st.Size < size {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: fd %d holds %d bytes, layout needs %d", fd, st.Size, size)
	}
	data, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: mmap %d bytes: %w", size, err)
	}
	return &Segment{fd: fd, data: data}, nil
}

// FD is the segment's file descriptor, to pass to another process.
func (s *Segment) FD() int { return s.fd }

// Bytes is the mapped memory.
func (s *Segment) Bytes() []byte { return s.data }

// Float32s views the mapping as float32s (mmap is page aligned).
func (s *Segment) Float32s() []float32 {
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(s.data))), len(s.data)/4)
}

// Close unmaps the memory and closes the fd. Slices from Bytes or Float32s
// must not be used afterwards.
func (s *Segment) Close() error {
	err := unix.Munmap(s.data)
	if cerr := unix.Close(s.fd); err == nil {
		err = cerr
	}
	s.data = nil
	return err
}
