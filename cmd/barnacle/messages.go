package main

import (
	"fmt"
	"os"

	"github.com/barnacle-pg/barnacle/pkg/restore"
)

// hintError is an error with what the operator can do about it; run prints
// the hint on the lines after the error, also when the error was an
// interruption.
type hintError struct {
	err  error
	hint string
}

func (e hintError) Error() string { return e.err.Error() + "\n" + e.hint }
func (e hintError) Unwrap() error { return e.err }

// restoreFailed adds to a failed local restore what to do with the
// directory it leaves: a restore that was refused wrote nothing, but one
// that failed or was interrupted on the way leaves files that PostgreSQL
// cannot start (global/pg_control is written last) and that a second
// restore refuses without --force.
func restoreFailed(err error, res restore.Result, targetDir string, interrupted bool) error {
	if restore.IsRejected(err) {
		return err
	}
	if _, serr := os.Stat(targetDir); serr != nil {
		return err
	}
	hint := fmt.Sprintf("%s now holds a partial restore that PostgreSQL cannot start (it has no global/pg_control): "+
		"remove it, or run the restore again with --force, which moves it aside", targetDir)
	for old, moved := range res.MovedAside {
		hint += fmt.Sprintf("\nthe old contents of %s are in %s", old, moved)
	}
	if !interrupted {
		hint += "\nif this backup is damaged, restore an older one with --backup ID (barnacle list-backups lists them; barnacle verify-backup ID checks one)"
	}
	return hintError{err: err, hint: hint}
}
