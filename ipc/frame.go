package ipc

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// Frame layout (little-endian):
//
//	u32 length of everything after this field
//	u16 version
//	u16 type
//	u64 request id (a reply echoes it)
//	u16 traceparent length, then its bytes
//	payload
const headerLen = 4 + 2 + 2 + 8 + 2

// Frame is one message.
type Frame struct {
	Version     uint16
	Type        uint16
	ID          uint64
	TraceParent string
	Payload     []byte
}

// AppendFrame encodes f onto buf.
func AppendFrame(buf []byte, f *Frame) []byte {
	n := headerLen - 4 + len(f.TraceParent) + len(f.Payload)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(n))
	buf = binary.LittleEndian.AppendUint16(buf, f.Version)
	buf = binary.LittleEndian.AppendUint16(buf, f.Type)
	buf = binary.LittleEndian.AppendUint64(buf, f.ID)
	buf = binary.LittleEndian.AppendUint16(buf, uint16(len(f.TraceParent)))
	buf = append(buf, f.TraceParent...)
	return append(buf, f.Payload...)
}

// ErrFrameTooLarge is returned for a length over MaxFrame; the stream cannot
// be resynchronised after it.
var ErrFrameTooLarge = fmt.Errorf("%w: frame larger than %d bytes", ErrBadRequest, MaxFrame)

// ReadFrame reads one frame into buf's storage (growing it as needed) and
// returns it; the frame aliases the returned buffer.
func ReadFrame(r io.Reader, buf []byte) (*Frame, []byte, error) {
	var lenb [4]byte
	if _, err := io.ReadFull(r, lenb[:]); err != nil {
		return nil, buf, err
	}
	n := binary.LittleEndian.Uint32(lenb[:])
	if n > MaxFrame {
		return nil, buf, ErrFrameTooLarge
	}
	if n < headerLen-4 {
		return nil, buf, fmt.Errorf("%w: frame of %d bytes is shorter than its header", ErrBadRequest, n)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, buf, err
	}
	f := &Frame{
		Version: binary.LittleEndian.Uint16(buf[0:]),
		Type:    binary.LittleEndian.Uint16(buf[2:]),
		ID:      binary.LittleEndian.Uint64(buf[4:]),
	}
	tl := int(binary.LittleEndian.Uint16(buf[12:]))
	if 14+tl > len(buf) {
		return nil, buf, fmt.Errorf("%w: traceparent of %d bytes overruns a frame of %d", ErrBadRequest, tl, n)
	}
	f.TraceParent = string(buf[14 : 14+tl])
	f.Payload = buf[14+tl:]
	return f, buf, nil
}

// enc builds a binary payload.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }

// dec reads a binary payload; the first short read sets err and every later
// read returns zero, so decoders check err once at the end.
type dec struct {
	b   []byte
	err error
}

func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if len(d.b) < n {
		d.err = badRequest("payload truncated")
		return false
	}
	return true
}

func (d *dec) u8() uint8 {
	if !d.need(1) {
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// count reads a length prefix and checks that count items of size bytes
// each can still follow, so a lying count cannot make us allocate.
func (d *dec) count(size int) int {
	n := d.u32()
	if d.err == nil && uint64(n)*uint64(size) > uint64(len(d.b)) {
		d.err = badRequest("count %d of %d-byte items overruns the payload", n, size)
		return 0
	}
	return int(min(n, math.MaxInt32))
}

func (d *dec) end() error {
	if d.err == nil && len(d.b) != 0 {
		d.err = badRequest("%d bytes after the payload", len(d.b))
	}
	return d.err
}
