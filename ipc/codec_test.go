package ipc

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/kvd-project/kvd/kvd/blocks"
)

func TestRoundTrips(t *testing.T) {
	req := StepRequest{Done: 9, Failed: true, Appends: []blocks.Append{{Seq: 1, N: 5}, {Seq: 1 << 40, N: 1}}}
	var got StepRequest
	if err := got.Decode(req.Encode(nil)); err != nil || !reflect.DeepEqual(got, req) {
		t.Errorf("step request: %+v, %v", got, err)
	}
	rep := StepReply{StepID: 3, Free: 77, Delta: blocks.Delta{Added: []blocks.Added{{Pos: 0, Block: 7}, {Pos: 63, Block: 1 << 30}}, Shrunk: []blocks.Shrink{{Seq: 9, Layer: 3, Tokens: 1024}}}}
	var gr StepReply
	if err := gr.Decode(rep.Encode(nil)); err != nil || !reflect.DeepEqual(gr, rep) {
		t.Errorf("step reply: %+v, %v", gr, err)
	}
	ids := []uint64{1, 2, 1 << 63}
	if g, err := DecodeSeqs(EncodeSeqs(nil, ids)); err != nil || !reflect.DeepEqual(g, ids) {
		t.Errorf("seqs: %v, %v", g, err)
	}
	f := &Frame{Version: Version, Type: TypeStep, ID: 77, TraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", Payload: []byte{1, 2, 3}}
	gf, _, err := ReadFrame(bytes.NewReader(AppendFrame(nil, f)), nil)
	if err != nil || !reflect.DeepEqual(gf, f) {
		t.Errorf("frame: %+v, %v", gf, err)
	}
	remote := DecodeError(EncodeError(nil, blocks.ErrPoolExhausted))
	if !errors.Is(remote, blocks.ErrPoolExhausted) {
		t.Errorf("error code lost: %v", remote)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := []struct {
		name string
		fn   func() error
	}{
		{"step request truncated", func() error { var r StepRequest; return r.Decode([]byte{1, 2, 3}) }},
		{"step request lying count", func() error {
			var r StepRequest
			return r.Decode(append(make([]byte, 9), 0xff, 0xff, 0xff, 0x7f))
		}},
		{"trailing bytes", func() error {
			var r StepDone
			return r.Decode(append((&StepDone{ID: 1}).Encode(nil), 0))
		}},
		{"seqs count past payload", func() error { _, err := DecodeSeqs([]byte{5, 0, 0, 0, 1}); return err }},
		{"huge append", func() error {
			var r StepRequest
			return r.Decode((&StepRequest{Appends: []blocks.Append{{Seq: 1, N: 1 << 30}}}).Encode(nil))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.fn(); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("got %v, want ErrBadRequest", err)
			}
		})
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: errors are fine,
// panics and huge allocations are not.
func FuzzDecode(f *testing.F) {
	f.Add((&StepRequest{Appends: []blocks.Append{{Seq: 1, N: 2}}}).Encode(nil))
	f.Add(AppendFrame(nil, &Frame{Version: 1, Type: 4, Payload: []byte{1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r StepRequest
		r.Decode(b)
		var rep StepReply
		rep.Decode(b)
		var d StepDone
		d.Decode(b)
		DecodeSeqs(b)
		DecodeError(b)
		ReadFrame(bytes.NewReader(b), nil)
	})
}
