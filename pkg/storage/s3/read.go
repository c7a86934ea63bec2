package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

// userMeta returns the user metadata value key (canonical form, without
// the x-amz-meta- prefix) of an object.
func userMeta(oi minio.ObjectInfo, key string) string {
	if v, ok := oi.UserMetadata[key]; ok {
		return v
	}
	if v := oi.Metadata.Get("X-Amz-Meta-" + key); v != "" {
		return v
	}
	// Some servers list metadata under other spellings (MinIO's listing
	// extension uses the full header name).
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, key) || strings.EqualFold(k, "X-Amz-Meta-"+key) {
			return v
		}
	}
	return ""
}

// Get implements storage.Backend. The object's metadata and bytes come
// from one GET request, so the digest always belongs to the bytes read,
// even when the object is replaced meanwhile.
func (b *Backend) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	b.stats.gets.Add(1)
	if err := storage.CheckName(name); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	rc, oi, _, err := b.core.GetObject(ctx, b.bucket, b.key(name), minio.GetObjectOptions{})
	if err != nil {
		if isNotExist(err) {
			return nil, fmt.Errorf("get %s: %w", name, storage.ErrNotExist)
		}
		b.stats.getErrors.Add(1)
		return nil, fmt.Errorf("get %s: %w", name, ctxErr(ctx, err))
	}
	want, err := digestOf(oi)
	if err != nil {
		rc.Close() //nolint:errcheck // the error is reported
		return nil, fmt.Errorf("get %s: %w", name, err)
	}
	return storage.NewVerifyingReader(name, &ctxReader{ctx: ctx, rc: rc}, want), nil
}

// digestOf returns an object's stored digest, or an error wrapping
// ErrNoChecksum or ErrInvalidChecksum.
func digestOf(oi minio.ObjectInfo) (string, error) {
	v := userMeta(oi, metaSHA256)
	if v == "" {
		return "", storage.ErrNoChecksum
	}
	return storage.NormalizeChecksum(v)
}

// ctxReader ends reads with ctx's error once ctx has ended, whatever the
// HTTP body still holds in its buffers.
type ctxReader struct {
	ctx context.Context
	rc  io.ReadCloser
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.rc.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = ctxErr(r.ctx, err)
	}
	return n, err
}

func (r *ctxReader) Close() error { return r.rc.Close() }

// Stat implements storage.Backend with one HEAD request. Checksum is empty
// for an object that carries no (valid) digest.
func (b *Backend) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	b.stats.stats.Add(1)
	if err := storage.CheckName(name); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, err)
	}
	info, err := b.stat(ctx, name)
	if err != nil {
		if !errors.Is(err, storage.ErrNotExist) {
			b.stats.statErrors.Add(1)
		}
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", name, ctxErr(ctx, err))
	}
	return info, nil
}

func (b *Backend) stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	oi, err := b.client.StatObject(ctx, b.bucket, b.key(name), minio.StatObjectOptions{})
	if err != nil {
		if isNotExist(err) {
			return storage.ObjectInfo{}, storage.ErrNotExist
		}
		return storage.ObjectInfo{}, err
	}
	info := storage.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}
	info.Checksum, _ = digestOf(oi)
	return info, nil
}

// List implements storage.Backend. S3 listings carry no user metadata
// (MinIO's listing extension, which List asks for except from AWS and
// Google, is the exception), so
// List reads each object's digest with a HEAD request, 16 at a time:
// listing N objects costs about N/1000 LIST and N HEAD requests. An object
// deleted between the listing and its HEAD is left out.
func (b *Backend) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	b.stats.lists.Add(1)
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		if err := storage.CheckName(prefix[:i]); err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	infos, err := b.list(ctx, minio.ListObjectsOptions{Prefix: b.key(prefix), Recursive: true}, 0)
	if err != nil {
		b.stats.listErrors.Add(1)
		return nil, fmt.Errorf("list %s: %w", prefix, ctxErr(ctx, err))
	}
	return infos, nil
}

var _ storage.DirLister = (*Backend)(nil)

// ListAfter implements storage.DirLister with one LIST request (StartAfter,
// MaxKeys, delimited at "/") and, where the listing lacks digests, a HEAD
// per object returned: a page costs the same whatever the directory holds.
func (b *Backend) ListAfter(ctx context.Context, dir, after string, limit int) ([]storage.ObjectInfo, error) {
	b.stats.lists.Add(1)
	if err := storage.CheckListAfter(ctx, dir, after, limit); err != nil {
		return nil, err
	}
	infos, err := b.list(ctx, minio.ListObjectsOptions{
		Prefix:     b.key(dir + "/"),
		StartAfter: b.key(dir + "/" + after),
		MaxKeys:    limit,
	}, limit)
	if err != nil {
		b.stats.listErrors.Add(1)
		return nil, fmt.Errorf("list %s after %q: %w", dir, after, ctxErr(ctx, err))
	}
	return infos, nil
}

// list lists what opts selects (WithMetadata is set here), with each
// object's digest; limit > 0 stops after that many objects.
func (b *Backend) list(ctx context.Context, opts minio.ListObjectsOptions, limit int) ([]storage.ObjectInfo, error) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine on an early return
	var infos []storage.ObjectInfo
	var missing []int // indexes of infos whose digest the listing lacks
	opts.WithMetadata = b.listMetadata
	for oi := range b.client.ListObjects(lctx, b.bucket, opts) {
		if oi.Err != nil {
			if isNotExist(oi.Err) {
				continue
			}
			return nil, oi.Err
		}
		name := strings.TrimPrefix(oi.Key, b.prefix)
		// Temporary objects, "directory" markers, the common prefixes of
		// a delimited listing and anything else that is not a valid
		// object name are not barnacle's objects.
		if strings.HasSuffix(oi.Key, "/") || storage.CheckName(name) != nil {
			continue
		}
		info := storage.ObjectInfo{Name: name, Size: oi.Size, ModTime: oi.LastModified}
		info.Checksum, _ = digestOf(oi)
		if info.Checksum == "" {
			missing = append(missing, len(infos))
		}
		infos = append(infos, info)
		if limit > 0 && len(infos) == limit {
			break // before minio-go asks for the next page
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	gone := make([]bool, len(infos))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(headConcurrency)
	for _, i := range missing {
		g.Go(func() error {
			b.stats.listHeads.Add(1)
			info, err := b.stat(gctx, infos[i].Name)
			if errors.Is(err, storage.ErrNotExist) {
				gone[i] = true
				return nil
			}
			if err != nil {
				return fmt.Errorf("read digest of %s: %w", infos[i].Name, err)
			}
			infos[i] = info
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := infos[:0]
	for i, info := range infos {
		if !gone[i] {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b storage.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Delete implements storage.Backend. S3's DELETE already succeeds for a
// missing key.
func (b *Backend) Delete(ctx context.Context, name string) error {
	b.stats.deletes.Add(1)
	if err := storage.CheckName(name); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	err := b.client.RemoveObject(ctx, b.bucket, b.key(name), minio.RemoveObjectOptions{})
	if err != nil && !isNotExist(err) {
		b.stats.deleteErrors.Add(1)
		return fmt.Errorf("delete %s: %w", name, ctxErr(ctx, err))
	}
	return nil
}

// Cleanup implements storage.Cleaner: it deletes temporary objects and
// aborts multipart uploads under the prefix that are older than
// Options.TempMaxAge, the leftovers of processes killed during Put. It
// returns the first error after trying everything.
func (b *Backend) Cleanup(ctx context.Context) error {
	cutoff := time.Now().Add(-b.tempMaxAge)
	var errs []error
	for oi := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{Prefix: b.prefix + tempDir, Recursive: true}) {
		if oi.Err != nil {
			errs = append(errs, fmt.Errorf("list temporary objects: %w", oi.Err))
			break
		}
		if oi.LastModified.Before(cutoff) {
			if err := b.client.RemoveObject(ctx, b.bucket, oi.Key, minio.RemoveObjectOptions{}); err != nil && !isNotExist(err) {
				errs = append(errs, fmt.Errorf("delete temporary object %s: %w", oi.Key, err))
			}
		}
	}
	for up := range b.client.ListIncompleteUploads(ctx, b.bucket, b.prefix, true) {
		if up.Err != nil {
			if up.Err.Error() != "" && errorCode(up.Err) != "NotImplemented" {
				errs = append(errs, fmt.Errorf("list multipart uploads: %w", up.Err))
			}
			break
		}
		if up.Initiated.Before(cutoff) {
			if err := b.core.AbortMultipartUpload(ctx, b.bucket, up.Key, up.UploadID); err != nil && errorCode(err) != "NoSuchUpload" {
				errs = append(errs, fmt.Errorf("abort multipart upload of %s: %w", up.Key, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cleanup: %w", ctxErr(ctx, err))
	}
	return nil
}

// Stats counts what a Backend has done since New. Operation counts and
// error counts are per call of the storage.Backend method (a call is one
// operation however many requests it takes); the others count requests or
// events inside them. All fields are cumulative, for Prometheus counters.
type Stats struct {
	Puts, Gets, Stats, Lists, Deletes                          uint64
	PutErrors, GetErrors, StatErrors, ListErrors, DeleteErrors uint64
	// MultipartUploads counts multipart uploads started (temporary
	// objects included) and Parts the parts uploaded.
	MultipartUploads, Parts uint64
	// ServerCopies counts Puts of unknown digest larger than one part,
	// which the server copied from a temporary object.
	ServerCopies uint64
	// Aborts counts multipart uploads aborted after a failed or cancelled
	// Put; AbortErrors those that could not be (left for Cleanup).
	Aborts, AbortErrors uint64
	// ConditionFailed counts conditional writes the server refused (412).
	ConditionFailed uint64
	// ConflictRetries counts writes retried after a 409 Conflict.
	ConflictRetries uint64
	// ListHeads counts the HEAD requests List made to read digests.
	ListHeads uint64
	// TempLeft counts temporary objects that could not be deleted.
	TempLeft uint64
}

type stats struct {
	puts, gets, stats, lists, deletes                          atomic.Uint64
	putErrors, getErrors, statErrors, listErrors, deleteErrors atomic.Uint64
	multipartUploads, parts, serverCopies                      atomic.Uint64
	aborts, abortErrors, conditionFailed, listHeads, tempLeft  atomic.Uint64
	conflictRetries                                            atomic.Uint64
}

// Stats returns the counters. It is safe to call concurrently with every
// other method.
func (b *Backend) Stats() Stats {
	s := &b.stats
	return Stats{
		Puts: s.puts.Load(), Gets: s.gets.Load(), Stats: s.stats.Load(), Lists: s.lists.Load(), Deletes: s.deletes.Load(),
		PutErrors: s.putErrors.Load(), GetErrors: s.getErrors.Load(), StatErrors: s.statErrors.Load(),
		ListErrors: s.listErrors.Load(), DeleteErrors: s.deleteErrors.Load(),
		MultipartUploads: s.multipartUploads.Load(), Parts: s.parts.Load(), ServerCopies: s.serverCopies.Load(),
		Aborts: s.aborts.Load(), AbortErrors: s.abortErrors.Load(), ConditionFailed: s.conditionFailed.Load(), ConflictRetries: s.conflictRetries.Load(),
		ListHeads: s.listHeads.Load(), TempLeft: s.tempLeft.Load(),
	}
}
