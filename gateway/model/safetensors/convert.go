package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// littleEndian is the host's byte order: where it matches the file's, data
// can be read in place as []uint16 or []float32.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// Float32 converts the tensor's elements into dst, whose length must equal
// NumElements (ErrShape otherwise). BF16 and F16 widen exactly; other
// dtypes than F32 are ErrDType. Large tensors are split across GOMAXPROCS
// goroutines.
//
// dst: [NumElements()], row-major as the tensor's shape.
func (t *Tensor) Float32(dst []float32) error {
	var kernel func(dst []float32, src []byte)
	switch t.DType {
	case F32:
		kernel = f32Kernel
	case BF16:
		kernel = bf16Kernel
	case F16:
		kernel = f16Kernel
	default:
		return fmt.Errorf("%s: tensor %q: %w %s (want F32, F16 or BF16)", t.File, t.Name, ErrDType, t.DType)
	}
	n, size := t.NumElements(), t.DType.Bits()/8
	if len(dst) != n || len(t.Data) != n*size {
		return fmt.Errorf("%s: tensor %q: %w: shape %v (%d elements, %d bytes of %s), dst has %d elements",
			t.File, t.Name, ErrShape, t.Shape, n, len(t.Data), t.DType, len(dst))
	}
	parallel(n, func(lo, hi int) { kernel(dst[lo:hi], t.Data[lo*size:hi*size]) })
	return nil
}

// Float32View returns the data as []float32 without copying when the tensor
// is F32, 4-byte aligned and the host little-endian; ok is false otherwise.
// The slice aliases the read-only mapping: do not write to it, and do not
// use it after Checkpoint.Close.
func (t *Tensor) Float32View() (v []float32, ok bool) {
	if t.DType != F32 || !littleEndian || len(t.Data)%4 != 0 {
		return nil, false
	}
	if len(t.Data) == 0 {
		return []float32{}, true
	}
	p := unsafe.Pointer(unsafe.SliceData(t.Data))
	if uintptr(p)%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(p), len(t.Data)/4), true
}

// minChunk is the fewest elements worth a goroutine: below it the spawn
// costs more than the work.
const minChunk = 1 << 16

// parallel calls fn over [0, n) split into at most GOMAXPROCS contiguous
// chunks that are multiples of 1024 elements (so no two goroutines write one
// cache line of dst).
func parallel(n int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), n/minChunk)
	if workers <= 1 {
		fn(0, n)
		return
	}
	chunk := ((n+workers-1)/workers + 1023) &^ 1023
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		wg.Go(func() { fn(lo, min(lo+chunk, n)) })
	}
	wg.Wait()
}

// uint16s reinterprets b as native uint16s when that reads them as
// little-endian and the alignment allows it.
func uint16s(b []byte) ([]uint16, bool) {
	p := unsafe.Pointer(unsafe.SliceData(b))
	if !littleEndian || len(b) == 0 || uintptr(p)%2 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint16)(p), len(b)/2), true
}

// The kernels convert src (len(dst) elements) into dst.

func bf16Kernel(dst []float32, src []byte) {
	if s, ok := uint16s(src); ok {
		dst = dst[:len(s)]
		for i, h := range s {
			dst[i] = math.Float32frombits(uint32(h) << 16)
		}
		return
	}
	src = src[:2*len(dst)]
	for i := range dst {
		dst[i] = BF16ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}

// f16Table maps every half bit pattern to its float32 bits: one load per
// element is several times faster than decoding the fields (256 KiB, built
// on first use; real weights touch a small part of it).
var f16Table = sync.OnceValue(func() *[1 << 16]uint32 {
	var t [1 << 16]uint32
	for i := range t {
		t[i] = math.Float32bits(F16ToFloat32(uint16(i)))
	}
	return &t
})

func f16Kernel(dst []float32, src []byte) {
	tab := f16Table()
	if s, ok := uint16s(src); ok {
		dst = dst[:len(s)]
		for i, h := range s {
			dst[i] = math.Float32frombits(tab[h])
		}
		return
	}
	src = src[:2*len(dst)]
	for i := range dst {
		dst[i] = math.Float32frombits(tab[binary.LittleEndian.Uint16(src[2*i:])])
	}
}

func f32Kernel(dst []float32, src []byte) {
	if littleEndian {
		// copy handles any alignment and is memmove-fast.
		copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(dst))), 4*len(dst)), src)
		return
	}
	src = src[:4*len(dst)]
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}
