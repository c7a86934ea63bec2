package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
)

// progressBar draws bytes done, total, rate and ETA on one line of
// standard error, like pg_basebackup --progress, so that standard output
// keeps only the result (and --json only JSON). It draws nothing when
// standard error is not a terminal, with --json, or with -q. Log lines
// written meanwhile through newLogger go above it (lineGuard), never onto
// its line.
type progressBar struct {
	g     *lineGuard
	label string
	on    bool
	start time.Time

	mu      sync.Mutex
	last    time.Time
	updated bool
	// waiting is drawn until the first Update: what the command waits for
	// before any byte moves (a spread checkpoint can take minutes).
	waiting string
	// atEnd is added to the line once done reaches total: what the command
	// still waits for with every byte moved.
	atEnd string
}

// newProgressBar returns cmd's progress bar; enabled false (--json) turns
// it off, as do -q and a standard error that is not a terminal.
func newProgressBar(cmd *cobra.Command, label string, enabled bool) *progressBar {
	w := cmd.ErrOrStderr()
	on := false
	if f, ok := w.(*os.File); ok && enabled && !quietFlag(cmd) {
		on = isatty.IsTerminal(f.Fd())
	}
	return &progressBar{g: guardFor(w), label: label, on: on, start: time.Now()}
}

// Waiting draws what the command waits for before its first Update.
func (p *progressBar) Waiting(text string) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waiting = text
	if !p.updated {
		p.g.draw(p.label + ": " + text)
	}
}

// AtEnd sets what the line says once done reaches total.
func (p *progressBar) AtEnd(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.atEnd = text
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
	if p.updated && now.Sub(p.last) < 100*time.Millisecond && (total <= 0 || done < total) {
		return
	}
	p.updated, p.last = true, now
	p.g.draw(p.line(done, total, now.Sub(p.start)))
}

// line is the bar's text after elapsed with done of total bytes.
func (p *progressBar) line(done, total int64, elapsed time.Duration) string {
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(done) / s
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
		line = fmt.Sprintf("%s [%s] %3.0f%% %s / %s", p.label, bar, min(pct, 1)*100, humanBytes(done), humanBytes(total))
		if rate > 0 && done < total {
			eta := time.Duration(float64(total-done)/rate) * time.Second
			line += fmt.Sprintf(" ETA %s", eta.Round(time.Second))
		}
	}
	line += fmt.Sprintf(" %s/s", humanBytes(int64(rate)))
	if total > 0 && done >= total && p.atEnd != "" {
		line += "; " + p.atEnd
	}
	return line
}

// Done ends the line.
func (p *progressBar) Done() {
	if p.on {
		p.g.end()
	}
}

// lineGuard is one writer (standard error) shared by a progress bar and
// the logger. A log line clears the bar's line, is written, and the bar is
// drawn again below it, so the two never mix on one line.
type lineGuard struct {
	mu  sync.Mutex
	w   io.Writer
	bar string // the bar's line as drawn now, "" when none
}

// guards holds the lineGuard of each writer the process draws on.
var guards sync.Map // io.Writer -> *lineGuard

func guardFor(w io.Writer) *lineGuard {
	g, _ := guards.LoadOrStore(w, &lineGuard{w: w})
	return g.(*lineGuard)
}

// Write writes a log line above the bar.
func (g *lineGuard) Write(b []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bar == "" {
		return g.w.Write(b)
	}
	fmt.Fprint(g.w, "\r\033[K")
	n, err := g.w.Write(b)
	fmt.Fprint(g.w, g.bar)
	return n, err
}

func (g *lineGuard) draw(line string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fmt.Fprintf(g.w, "\r\033[K%s", line)
	g.bar = line
}

func (g *lineGuard) end() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.bar != "" {
		fmt.Fprintln(g.w)
		g.bar = ""
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
