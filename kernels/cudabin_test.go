package kernels

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKernelsBuiltFromSources fails when a .cu or .cuh file changed without
// `make kernels`: the committed fat binaries would not be what the sources
// say.
func TestKernelsBuiltFromSources(t *testing.T) {
	h := sha256.New()
	for _, pat := range []string{"*.cuh", "*.cu"} { // the order `cat kernels/*.cuh kernels/*.cu` reads them
		files, err := filepath.Glob(pat)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			h.Write(b)
		}
	}
	want, err := os.ReadFile("cudabin/SOURCES.sha256")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) {
		t.Errorf("kernels/*.cu changed since the kernels were built (sources %s, built from %s): run make kernels", got, bytes.TrimSpace(want))
	}
	for _, f := range []string{"elementwise", "cache", "attention", "sampling"} {
		if st, err := os.Stat("cudabin/" + f + ".fatbin"); err != nil || st.Size() == 0 {
			t.Errorf("cudabin/%s.fatbin missing: run make kernels", f)
		}
	}
}
