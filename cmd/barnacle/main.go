// Command barnacle is continuous backup and point-in-time recovery for
// PostgreSQL clusters managed by Stolon: `barnacle agent` is the sidecar
// daemon, the other subcommands are the operator's tools.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

// Exit codes, DESIGN.md §4.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// defaultMemoryLimit is the Go heap's soft limit unless GOMEMLIMIT is set:
// the uploads hold at most part size × concurrency (64 MiB by default)
// live, but with the default GC pacing a heap may grow to twice its live
// size before a collection, which took a backup to S3 past 250 MB of RSS.
const defaultMemoryLimit = 150 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Once the first signal has cancelled ctx, restore default handling so
	// that a second signal kills the process.
	go func() { <-ctx.Done(); stop() }()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks a mistake in the command line (unknown flag, wrong
// arguments) so that it maps to exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitCodeError ends a command with a given exit code: a Nagios CRITICAL
// (2), or wal-fetch's quiet "no such file" (1) that PostgreSQL expects past
// the end of the archive. With a nil err nothing is printed.
type exitCodeError struct {
	code int
	err  error
}

func (e exitCodeError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}
func (e exitCodeError) Unwrap() error { return e.err }

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCommand(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ec exitCodeError
	if cmd != nil && cmd.Annotations[abortOnFailure] != "" && !errors.As(err, &ec) {
		// wal-fetch's flags or arguments are wrong: exit 2 would tell
		// PostgreSQL that the file does not exist.
		err = walFetchError(err, 0)
	}
	if errors.As(err, &ec) {
		if ec.err != nil {
			fmt.Fprintln(stderr, "barnacle:", ec.err)
		}
		return ec.code
	}
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		// A signal (Ctrl-C, SIGTERM) ended the command: say so, not
		// "context canceled", and keep what to do about it.
		msg := "interrupted"
		var h hintError
		if errors.As(err, &h) {
			msg += "\n" + h.hint
		}
		fmt.Fprintln(stderr, "barnacle:", msg)
		return exitFailure
	}
	fmt.Fprintln(stderr, "barnacle:", err)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "Run 'barnacle --help' for usage.")
		return exitUsage
	case config.IsConfigError(err):
		return exitUsage
	}
	return exitFailure
}
