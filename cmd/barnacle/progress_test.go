package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// TestProgressBarAndLogLines: the bar says what it waits for before the
// first byte and at 100%, and a log line written meanwhile goes on a line
// of its own, with the bar drawn again below it.
func TestProgressBarAndLogLines(t *testing.T) {
	var w bytes.Buffer
	bar := &progressBar{g: guardFor(&w), label: "backup", on: true, start: time.Now()}
	log := newLogger(config.Config{LogLevel: "info", LogFormat: "text"}, &w)

	bar.Waiting(checkpointWait(false))
	log.Info("checkpoint done, receiving backup")
	bar.AtEnd("waiting for the WAL up to the stop position to be archived")
	bar.Update(1<<20, 4<<20)
	bar.Update(4<<20, 4<<20)
	log.Info("backup data stored, waiting for its WAL to be archived")
	bar.Done()

	out := w.String()
	assert.Contains(t, out, "\r\033[Kbackup: waiting for checkpoint (spread: may take minutes; --fast asks for an immediate one)")
	assert.Contains(t, out, "100% 4.0 MiB / 4.0 MiB")
	assert.Contains(t, out, "; waiting for the WAL up to the stop position to be archived")
	// Split into what a terminal shows: \n ends a line, \r\033[K clears it.
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		parts := strings.Split(l, "\r\033[K")
		lines = append(lines, parts[len(parts)-1])
	}
	var logLines int
	for _, l := range lines {
		if strings.Contains(l, "[INFO]") {
			logLines++
			assert.NotContains(t, l, "backup [", "a log line shares its line with the bar: %q", l)
			assert.NotContains(t, l, "backup: waiting", "a log line shares its line with the bar: %q", l)
			assert.True(t, strings.HasSuffix(l, "to be archived") || strings.HasSuffix(l, "receiving backup"), "%q", l)
		}
	}
	assert.Equal(t, 2, logLines, "lines:\n%s", strings.Join(lines, "\n"))
	assert.True(t, strings.HasSuffix(out, "to be archived\n"), "Done ends the bar's line: %q", out[max(0, len(out)-80):])
}

// TestQuietFlag: -q leaves only warnings and errors on standard error; the
// error itself is still printed.
func TestQuietFlag(t *testing.T) {
	root, _ := tarArchive(t)
	dest := t.TempDir() + "/r"
	var out, loud, quiet bytes.Buffer
	require.Equal(t, exitOK, run(t.Context(), restoreArgs(root, "--target-dir", dest), &out, &loud), loud.String())
	assert.Contains(t, loud.String(), "[INFO]")
	require.Equal(t, exitOK, run(t.Context(), restoreArgs(root, "--target-dir", dest+"2", "-q"), &out, &quiet), quiet.String())
	assert.NotContains(t, quiet.String(), "[INFO]")
	quiet.Reset()
	require.Equal(t, exitFailure, run(t.Context(), restoreArgs(root, "--target-dir", dest, "-q"), &out, &quiet))
	assert.Contains(t, quiet.String(), "barnacle: ")
}
