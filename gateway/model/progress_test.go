package model

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestProgressLogsEveryTenth(t *testing.T) {
	var logs, out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	total := int64(progressMin*2 + 7)
	p := newProgress(&out, log, "loading weights", total)
	step := total / 20
	for range 19 {
		p.add(step)
	}
	p.add(total - 19*step)
	p.done()
	if got := strings.Count(logs.String(), "percent="); got != 10 {
		t.Errorf("%d progress lines, want 10:\n%s", got, logs.String())
	}
	if !strings.Contains(logs.String(), "percent=100") || !strings.Contains(logs.String(), "loading weights done") {
		t.Errorf("missing the last line:\n%s", logs.String())
	}
	if out.Len() != 0 {
		t.Errorf("a non-terminal got a bar: %q", out.String())
	}

	logs.Reset()
	small := newProgress(&out, log, "loading weights", 1<<20)
	small.add(1 << 20)
	if strings.Contains(logs.String(), "percent=") {
		t.Error("a small checkpoint logged progress")
	}
}
