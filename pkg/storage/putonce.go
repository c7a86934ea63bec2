package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// conflictTimeFormat names aside copies; nanoseconds make two conflicts on
// the same object in the same second land under different names.
const conflictTimeFormat = "20060102T150405.000000000Z"

// putOnceAttempts bounds PutOnce's retries when the object disappears
// between the failed write-if-absent and the Stat that follows it
// (a concurrent Delete); more than a couple means something is wrong.
const putOnceAttempts = 3

// PutOnce stores data under name if no object has that name, following the
// archive's idempotency rule for names that are written once (WAL segments,
// history files, backup files):
//
//   - the object is absent: data is stored; existed is false.
//   - it exists with the same checksum (in the algorithm stored with it,
//     which may not be the one a new object gets): nothing is written and the result is
//     success (existed is true, err is nil), so a retried upload is harmless.
//   - it exists with other bytes, with no stored checksum, or with the same
//     stored checksum but another size (damaged on disk): the original
//     is never overwritten. data is stored aside under
//     name+".conflict-<UTC timestamp>" and PutOnce returns existed true and
//     a *ConflictError (errors.Is(err, ErrConflict)) so the caller can alarm.
//
// PutOnce is safe for concurrent use, including concurrent calls for the
// same name: the backend's atomic IfAbsent decides the winner.
func PutOnce(ctx context.Context, b Backend, name string, data []byte) (existed bool, err error) {
	want := ChecksumOf(DefaultAlgorithm, data)
	for range putOnceAttempts {
		err := b.Put(ctx, name, bytes.NewReader(data), PutOptions{IfAbsent: true, Checksum: want})
		if err == nil {
			return false, nil
		}
		if !errors.Is(err, ErrExist) {
			return false, fmt.Errorf("put once %s: %w", name, err)
		}
		info, err := b.Stat(ctx, name)
		if errors.Is(err, ErrNotExist) {
			continue // deleted since our Put saw it: try again
		}
		if err != nil {
			return true, fmt.Errorf("put once %s: stat existing object: %w", name, err)
		}
		newSum := want
		if h, err := HashFor(info.Checksum); err == nil {
			h.Write(data)
			newSum = h.Checksum()
		}
		if info.Checksum == newSum && info.Size == int64(len(data)) {
			return true, nil
		}
		aside, err := putAside(ctx, b, name, data, want)
		if err != nil {
			return true, fmt.Errorf("put once %s: existing object differs (%s, new %s) and storing the new bytes aside failed: %w",
				name, DescribeChecksum(info.Checksum), DescribeChecksum(newSum), err)
		}
		return true, &ConflictError{Name: name, AsideName: aside, ExistingChecksum: info.Checksum, NewChecksum: newSum}
	}
	return false, fmt.Errorf("put once %s: object kept appearing and disappearing after %d attempts", name, putOnceAttempts)
}

// putAside stores data under a fresh conflict name and returns that name.
func putAside(ctx context.Context, b Backend, name string, data []byte, sum string) (string, error) {
	var err error
	for range putOnceAttempts {
		aside := name + ".conflict-" + time.Now().UTC().Format(conflictTimeFormat)
		err = b.Put(ctx, aside, bytes.NewReader(data), PutOptions{IfAbsent: true, Checksum: sum})
		if err == nil {
			return aside, nil
		}
		if !errors.Is(err, ErrExist) {
			return "", err
		}
	}
	return "", err
}

// ReadAll returns the whole object, verified against its stored checksum:
// the error wraps ErrNotExist when it is missing, ErrNoChecksum when it has
// no stored checksum, and is a *ChecksumError when the bytes do not match.
func ReadAll(ctx context.Context, b Backend, name string) ([]byte, error) {
	rc, err := b.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}
