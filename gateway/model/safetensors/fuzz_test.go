package safetensors

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to Open as a file: it may fail, never
// panic, and whatever it accepts must convert and close cleanly.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	err := Write(dir, []WriteTensor{
		{"a", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6}},
		{"s", []int{}, []float32{7}},
	}, BF16, 0, map[string]string{"k": "v"})
	if err != nil {
		f.Fatal(err)
	}
	valid, err := os.ReadFile(filepath.Join(dir, SingleFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(valid[:len(valid)-1])
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	for _, h := range []string{
		`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}`,
		`{"a":{"dtype":"F32","shape":[1],"data_offsets":[1,5]},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`,
		`{"__metadata__":{"a":"b"},"x":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`,
	} {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
		f.Add(append(append(b, h...), 1, 2, 3, 4, 5, 6, 7, 8))
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "x.safetensors")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Open(path)
		if err != nil {
			return
		}
		defer c.Close()
		var total int64
		for _, name := range c.Names() {
			tn, err := c.Get(name)
			if err != nil {
				t.Fatal(err)
			}
			total += int64(len(tn.Data))
			if n := tn.NumElements(); n <= len(b) {
				tn.Float32(make([]float32, n))
			}
			tn.Float32View()
		}
		if total != c.TotalBytes() {
			t.Fatalf("TotalBytes %d, tensors hold %d", c.TotalBytes(), total)
		}
	})
}
