package model

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

// progressMin is the checkpoint size below which loading shows no progress.
const progressMin = 256 << 20

// progress shows how far a long read has come: a redrawn bar when out is a
// terminal, a log line every 10% otherwise.
type progress struct {
	out        io.Writer
	log        *slog.Logger
	what       string
	total, cur int64
	tty        bool
	lastTenth  int64
	start      time.Time
}

func newProgress(out io.Writer, log *slog.Logger, what string, total int64) *progress {
	p := &progress{out: out, log: log, what: what, total: total, start: time.Now()}
	if f, ok := out.(*os.File); ok {
		p.tty = term.IsTerminal(int(f.Fd()))
	}
	return p
}

func (p *progress) enabled() bool { return p.total >= progressMin }

func (p *progress) add(n int64) {
	p.cur += n
	if !p.enabled() {
		return
	}
	if p.tty {
		const width = 40
		done := int(min(p.cur, p.total) * width / p.total)
		fmt.Fprintf(p.out, "\r%s [%s%s] %3d%% %s", p.what, strings.Repeat("=", done), strings.Repeat(" ", width-done),
			p.cur*100/p.total, time.Since(p.start).Round(100*time.Millisecond))
		return
	}
	if tenth := p.cur * 10 / p.total; tenth > p.lastTenth {
		p.lastTenth = tenth
		p.log.Info(p.what, "percent", tenth*10, "bytes", p.cur, "total", p.total)
	}
}

func (p *progress) done() {
	if p.enabled() && p.tty {
		fmt.Fprintln(p.out)
	}
	if p.cur > 0 {
		p.log.Info(p.what+" done", "bytes", p.cur, "seconds", time.Since(p.start).Seconds())
	}
}
