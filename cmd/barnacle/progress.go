package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
)

// progressBar draws bytes done, total, rate and ETA on one terminal line.
// It draws nothing when w is not a terminal, so scripts and --json output
// stay clean.
type progressBar struct {
	w     io.Writer
	label string
	on    bool
	start time.Time

	mu   sync.Mutex
	last time.Time
}

func newProgressBar(w io.Writer, label string, enabled bool) *progressBar {
	on := false
	if f, ok := w.(*os.File); ok && enabled {
		on = isatty.IsTerminal(f.Fd())
	}
	return &progressBar{w: w, label: label, on: on, start: time.Now()}
}

// Update redraws the line at most ten times a second. total may be 0 when
// unknown.
func (p *progressBar) Update(done, total int64) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < 100*time.Millisecond && (total == 0 || done < total) {
		return
	}
	p.last = now
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	line := fmt.Sprintf("%s %s", p.label, humanBytes(done))
	if total > 0 {
		pct := float64(done) / float64(total)
		const width = 24
		filled := min(int(pct*width), width)
		bar := make([]byte, width)
		for i := range bar {
			if i < filled {
				bar[i] = '='
			} else {
				bar[i] = ' '
			}
		}
		line = fmt.Sprintf("%s [%s] %3.0f%% %s / %s", p.label, bar, pct*100, humanBytes(done), humanBytes(total))
		if rate > 0 && done < total {
			eta := time.Duration(float64(total-done)/rate) * time.Second
			line += fmt.Sprintf(" ETA %s", eta.Round(time.Second))
		}
	}
	line += fmt.Sprintf(" %s/s", humanBytes(int64(rate)))
	fmt.Fprintf(p.w, "\r\033[K%s", line)
}

// Done ends the line.
func (p *progressBar) Done() {
	if p.on {
		fmt.Fprintln(p.w)
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
