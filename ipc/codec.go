package ipc

import (
	"github.com/kvd-project/kvd/kvd/blocks"
)

// StepRequest reserves slots for one scheduler step. Done, when non-zero,
// reports an earlier step as finished in the same round trip (Failed rolls
// its tokens back).
type StepRequest struct {
	Done    uint64
	Failed  bool
	Appends []blocks.Append
}

// StepReply names the step, says what it changed, and how many blocks are
// left free (for the scheduler's admission).
type StepReply struct {
	StepID uint64
	Free   uint32
	Delta  blocks.Delta
}

// StepDone reports a step as finished.
type StepDone struct {
	ID     uint64
	Failed bool
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// EncodeSeqs encodes a list of sequence ids (open, close).
func EncodeSeqs(buf []byte, ids []uint64) []byte {
	e := enc{buf}
	e.u32(uint32(len(ids)))
	for _, id := range ids {
		e.u64(id)
	}
	return e.b
}

// DecodeSeqs is EncodeSeqs' inverse.
func DecodeSeqs(p []byte) ([]uint64, error) {
	d := dec{b: p}
	ids := make([]uint64, d.count(8))
	for i := range ids {
		ids[i] = d.u64()
	}
	return ids, d.end()
}

func (r *StepRequest) Encode(buf []byte) []byte {
	e := enc{buf}
	e.u64(r.Done)
	e.u8(boolByte(r.Failed))
	e.u32(uint32(len(r.Appends)))
	for _, a := range r.Appends {
		e.u64(uint64(a.Seq))
		e.u32(uint32(a.N))
	}
	return e.b
}

func (r *StepRequest) Decode(p []byte) error {
	d := dec{b: p}
	r.Done = d.u64()
	r.Failed = d.u8() != 0
	r.Appends = make([]blocks.Append, d.count(12))
	for i := range r.Appends {
		r.Appends[i] = blocks.Append{Seq: blocks.SeqID(d.u64()), N: int(d.u32())}
		if r.Appends[i].N > 1<<24 && d.err == nil {
			d.err = badRequest("append of %d tokens", r.Appends[i].N)
		}
	}
	return d.end()
}

func (r *StepReply) Encode(buf []byte) []byte {
	e := enc{buf}
	e.u64(r.StepID)
	e.u32(r.Free)
	e.u32(uint32(len(r.Delta.Added)))
	for _, a := range r.Delta.Added {
		e.u32(a.Pos)
		e.u32(uint32(a.Block))
	}
	e.u32(uint32(len(r.Delta.Shrunk)))
	for _, s := range r.Delta.Shrunk {
		e.u64(uint64(s.Seq))
		e.u32(s.Layer)
		e.u32(s.Tokens)
	}
	return e.b
}

func (r *StepReply) Decode(p []byte) error {
	d := dec{b: p}
	r.StepID = d.u64()
	r.Free = d.u32()
	r.Delta.Added = make([]blocks.Added, d.count(8))
	for i := range r.Delta.Added {
		r.Delta.Added[i] = blocks.Added{Pos: d.u32(), Block: int32(d.u32())}
	}
	if n := d.count(16); n > 0 {
		r.Delta.Shrunk = make([]blocks.Shrink, n)
		for i := range r.Delta.Shrunk {
			r.Delta.Shrunk[i] = blocks.Shrink{Seq: blocks.SeqID(d.u64()), Layer: d.u32(), Tokens: d.u32()}
		}
	}
	return d.end()
}

func (s *StepDone) Encode(buf []byte) []byte {
	e := enc{buf}
	e.u64(s.ID)
	e.u8(boolByte(s.Failed))
	return e.b
}

func (s *StepDone) Decode(p []byte) error {
	d := dec{b: p}
	s.ID = d.u64()
	s.Failed = d.u8() != 0
	return d.end()
}

// EncodeError is the payload of an error reply.
func EncodeError(buf []byte, err error) []byte {
	e := enc{buf}
	e.u32(uint32(CodeOf(err)))
	return append(e.b, err.Error()...)
}

// DecodeError turns an error reply back into an error.
func DecodeError(p []byte) error {
	d := dec{b: p}
	code := d.u32()
	if d.err != nil {
		return d.err
	}
	return &RemoteError{Code: uint16(code), Message: string(d.b)}
}
