package observability

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCPUProfile checks that KVD_CPUPROFILE's %s becomes the service's name
// and the file holds a profile once stopped, and that without the variable
// nothing is written.
func TestCPUProfile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("KVD_CPUPROFILE", filepath.Join(dir, "%s.prof"))
	stop, err := CPUProfile("kvd")
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if fi, err := os.Stat(filepath.Join(dir, "kvd.prof")); err != nil || fi.Size() == 0 {
		t.Fatalf("kvd.prof: %v (size %v)", err, fi)
	}
	t.Setenv("KVD_CPUPROFILE", filepath.Join(dir, "missing", "%s.prof"))
	if _, err := CPUProfile("gateway"); err == nil {
		t.Error("a profile path in a missing folder: no error")
	}
	t.Setenv("KVD_CPUPROFILE", "")
	stop, err = CPUProfile("gateway")
	if err != nil {
		t.Fatal(err)
	}
	stop()
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("without KVD_CPUPROFILE: %d files in the folder, want 1 (kvd.prof)", len(ents))
	}
}
