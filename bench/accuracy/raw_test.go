package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRawSaverThrottles checks what a run cut off keeps: the raw file is
// written on the first sample, then not again within the interval, but on
// a flush (a signal, an error) and always when a configuration finishes; the scores and seconds held in
// memory count every sample, and loadRaw (what -resume reads) sees the
// last write.
func TestRawSaverThrottles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raw.json")
	run := rawRun{Results: map[string]result{}, Done: map[string]int{}, Seconds: map[string]float64{}}
	s := &rawSaver{run: &run, path: path, every: time.Hour}
	r := result{}
	const n = 50
	for i := 1; i <= n; i++ {
		r["m"] = append(r["m"], float64(i))
		if err := s.save("full", r, i, time.Millisecond, false); err != nil {
			t.Fatal(err)
		}
	}
	on, err := loadRaw([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if on.Done["full"] != 1 || len(on.Results["full"]["m"]) != 1 {
		t.Fatalf("within the interval the file holds %d samples (%d scores), want the first write's 1", on.Done["full"], len(on.Results["full"]["m"]))
	}
	if run.Done["full"] != n || len(run.Results["full"]["m"]) != n || run.Seconds["full"] < 0.049 {
		t.Fatalf("in memory: %d samples, %d scores, %.3f s; want %d, %d and 0.050", run.Done["full"], len(run.Results["full"]["m"]), run.Seconds["full"], n, n)
	}
	// A signal or an error flushes what memory holds.
	if err := s.flush(); err != nil {
		t.Fatal(err)
	}
	if on, err = loadRaw([]string{path}); err != nil || on.Done["full"] != n {
		t.Fatalf("after flush the file holds %d samples (%v), want %d", on.Done["full"], err, n)
	}
	if done, got := s.progress("full"); done != n || len(got["m"]) != n {
		t.Fatalf("progress: %d samples, %d scores; want %d", done, len(got["m"]), n)
	}
	r["m"] = append(r["m"], n+1)
	if err := s.save("full", r, n+1, time.Millisecond, true); err != nil {
		t.Fatal(err)
	}
	if on, err = loadRaw([]string{path}); err != nil {
		t.Fatal(err)
	}
	if on.Done["full"] != n+1 || len(on.Results["full"]["m"]) != n+1 {
		t.Fatalf("a finished configuration is written: file holds %d samples, want %d", on.Done["full"], n+1)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("the temporary file is left behind: %v", err)
	}
	// Without -raw-out nothing is written, and scores still count.
	mem := rawRun{Results: map[string]result{}, Done: map[string]int{}, Seconds: map[string]float64{}}
	if err := (&rawSaver{run: &mem, every: time.Second}).save("full", r, 3, 0, true); err != nil || mem.Done["full"] != 3 {
		t.Fatalf("no path: err %v, done %d", err, mem.Done["full"])
	}
}
