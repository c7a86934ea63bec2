package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

const (
	// readChunk is how much Put reads from its input between context checks.
	readChunk = 256 << 10
	// cleanupTimeout bounds the abort and delete that follow a failed or
	// cancelled Put; they run on a context detached from the caller's,
	// which may be the one that ended.
	cleanupTimeout = 30 * time.Second
	// conflictAttempts bounds the retries of a conditional write that the
	// server refused with 409 ConditionalRequestConflict (another
	// conditional write to the same name was in flight; AWS asks clients to
	// retry).
	conflictAttempts = 5
)

// Put implements storage.Backend; see the package documentation for how the
// digest gets into the object's metadata and how IfAbsent is decided. It
// holds at most Concurrency buffers of PartSize bytes. An object that fits
// in one part goes up in a single PUT; a larger one in a multipart upload
// that is aborted if Put fails or ctx ends, so nothing becomes visible.
func (b *Backend) Put(ctx context.Context, name string, r io.Reader, opts storage.PutOptions) error {
	b.stats.puts.Add(1)
	want, err := storage.CheckPut(ctx, name, opts)
	if err != nil {
		return err
	}
	if err := b.put(ctx, name, r, want, opts.IfAbsent); err != nil {
		b.stats.putErrors.Add(1)
		return fmt.Errorf("put %s: %w", name, ctxErr(ctx, err))
	}
	return nil
}

// upload is one Put in progress.
type upload struct {
	b        *Backend
	name     string
	key      string
	want     string
	ifAbsent bool
	token    string // x-amz-meta-barnacle-upload: tells our own write from another's
	src      *partReader
}

func (b *Backend) put(ctx context.Context, name string, r io.Reader, want string, ifAbsent bool) error {
	h, err := storage.HashForPut(want)
	if err != nil {
		return err
	}
	u := &upload{b: b, name: name, key: b.key(name), want: want, ifAbsent: ifAbsent, token: randomHex(),
		src: &partReader{ctx: ctx, r: r, h: h}}
	first := b.getBuf()
	n, last, err := u.src.fill(*first)
	if err != nil || last {
		defer b.putBuf(first)
	}
	switch {
	case err != nil:
		return err
	case last:
		return u.single(ctx, (*first)[:n])
	case want != "":
		_, err := u.multipart(ctx, u.key, first, n, true)
		return err
	default:
		return u.viaTemp(ctx, first, n)
	}
}

func (b *Backend) getBuf() *[]byte  { return b.bufs.Get().(*[]byte) }
func (b *Backend) putBuf(p *[]byte) { b.bufs.Put(p) }

// checkDigest returns a *ChecksumError when the bytes read differ from
// the expected digest.
func (u *upload) checkDigest() (string, error) {
	got := u.src.h.Checksum()
	if u.want != "" && got != u.want {
		return "", &storage.ChecksumError{Name: u.name, Want: u.want, Got: got}
	}
	return got, nil
}

func (u *upload) putOptions(digest string) minio.PutObjectOptions {
	meta := map[string]string{metaUpload: u.token}
	if digest != "" {
		meta[metaSHA256] = digest
	}
	return minio.PutObjectOptions{
		UserMetadata:         meta,
		ContentType:          "application/octet-stream",
		ServerSideEncryption: u.b.sse,
	}
}

// conditional returns opts with If-None-Match: * when the write must not
// replace an object.
func (u *upload) conditional(opts minio.PutObjectOptions) minio.PutObjectOptions {
	if u.ifAbsent {
		opts.SetMatchETagExcept("*")
	}
	return opts
}

// single stores data, the whole object, in one PUT.
func (u *upload) single(ctx context.Context, data []byte) error {
	digest, err := u.checkDigest()
	if err != nil {
		return err
	}
	opts := u.conditional(u.putOptions(digest))
	return u.commit(ctx, func() error {
		// The digest doubles as the payload hash of the v4 signature.
		_, err := u.b.core.PutObject(ctx, u.b.bucket, u.key, bytes.NewReader(data), int64(len(data)), "", digest, opts)
		return err
	})
}

// commit runs do, the request that makes the object visible, and
// interprets the answers that need it. 412 Precondition Failed means the
// name is taken (by someone else, unless the object carries our token
// because an earlier attempt of this request succeeded and its response was
// lost). 409 Conflict is retried a few times with backoff: AWS answers
// ConditionalRequestConflict while another conditional write to the name is
// in flight, and versitygw's posix backend answers ExistingObjectIsDirectory
// when a concurrent Delete removed the parent directory it had just
// created; a real conflict fails the same way every time.
func (u *upload) commit(ctx context.Context, do func() error) error {
	for attempt := 1; ; attempt++ {
		err := do()
		if err == nil {
			return nil
		}
		var er minio.ErrorResponse
		errors.As(err, &er)
		switch {
		case u.ifAbsent && (er.StatusCode == http.StatusPreconditionFailed || er.Code == "PreconditionFailed"):
			u.b.stats.conditionFailed.Add(1)
			if u.ownedByUs(ctx) {
				return nil
			}
			return fmt.Errorf("%w (server refused If-None-Match)", storage.ErrExist)
		case er.StatusCode == http.StatusConflict && attempt < conflictAttempts:
			u.b.stats.conflictRetries.Add(1)
			if err := sleep(ctx, time.Duration(attempt)*50*time.Millisecond); err != nil {
				return err
			}
		case er.Code == "NoSuchUpload" && u.ownedByUs(ctx):
			// A retried CompleteMultipartUpload whose first attempt succeeded.
			return nil
		default:
			return err
		}
	}
}

// ownedByUs reports whether the object now under the name carries this
// upload's token.
func (u *upload) ownedByUs(ctx context.Context) bool {
	oi, err := u.b.client.StatObject(ctx, u.b.bucket, u.key, minio.StatObjectOptions{})
	return err == nil && userMeta(oi, metaUpload) == u.token
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// multipart streams the object to key in a multipart upload that starts
// with the n bytes in first and continues with the rest of the input; it
// takes ownership of first. final says key is the object's own name: the
// upload then carries the expected digest and, with IfAbsent, completes
// conditionally; otherwise key is a temporary object without a digest.
// Failures and cancellation abort the upload. It returns the size
// uploaded.
func (u *upload) multipart(ctx context.Context, key string, first *[]byte, n int, final bool) (size int64, err error) {
	b := u.b
	// free holds the buffers that may be filled next, nil standing for one
	// not yet allocated: Concurrency of them in all, counting first, so
	// that Put holds at most Concurrency×PartSize bytes.
	free := make(chan *[]byte, b.conc)
	for range b.conc - 1 {
		free <- nil
	}
	defer func() {
		// Every upload goroutine has returned its buffer by now.
		for range b.conc {
			if buf := <-free; buf != nil {
				b.putBuf(buf)
			}
		}
	}()
	inFirst := true
	defer func() {
		if inFirst {
			free <- first
		}
	}()

	opts := u.putOptions("")
	if final {
		opts = u.putOptions(u.want)
	}
	uploadID, err := b.core.NewMultipartUpload(ctx, b.bucket, key, opts)
	if err != nil {
		return 0, fmt.Errorf("create multipart upload: %w", err)
	}
	b.stats.multipartUploads.Add(1)
	defer func() {
		if err != nil {
			b.abort(ctx, key, uploadID)
		}
	}()

	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(pctx)
	var mu sync.Mutex
	var parts []minio.CompletePart
	send := func(num int, buf *[]byte, n int) {
		size += int64(n)
		g.Go(func() error {
			defer func() { free <- buf }()
			p, err := b.core.PutObjectPart(gctx, b.bucket, key, uploadID, num, bytes.NewReader((*buf)[:n]), int64(n), minio.PutObjectPartOptions{})
			if err != nil {
				return fmt.Errorf("upload part %d: %w", num, err)
			}
			b.stats.parts.Add(1)
			mu.Lock()
			parts = append(parts, minio.CompletePart{PartNumber: num, ETag: p.ETag})
			mu.Unlock()
			return nil
		})
	}
	inFirst = false
	send(1, first, n)
	readErr := func() error {
		for num := 2; ; num++ {
			var buf *[]byte
			select {
			case buf = <-free:
			case <-gctx.Done():
				return nil // an upload failed; g.Wait reports it
			}
			if buf == nil {
				buf = b.getBuf()
			}
			n, last, err := u.src.fill(*buf)
			if err != nil {
				free <- buf
				return err
			}
			if n == 0 { // only when the input ended exactly at a part's end
				free <- buf
				return nil
			}
			send(num, buf, n)
			if last {
				return nil
			}
		}
	}()
	if readErr != nil {
		cancel()
	}
	if err := errors.Join(readErr, g.Wait()); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if _, err := u.checkDigest(); err != nil {
		return 0, err
	}
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	copts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	if final {
		copts = u.conditional(copts)
		err = u.commit(ctx, func() error {
			_, err := b.core.CompleteMultipartUpload(ctx, b.bucket, key, uploadID, parts, copts)
			return err
		})
		return size, err
	}
	err = u.commit(ctx, func() error {
		_, err := b.core.CompleteMultipartUpload(ctx, b.bucket, key, uploadID, parts, copts)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("complete multipart upload: %w", err)
	}
	return size, nil
}

// viaTemp stores an object larger than one part whose digest was not given:
// it uploads the data to a temporary object while hashing it, then has the
// server copy that into a multipart upload of the final name that carries
// the digest, completed conditionally with IfAbsent, and deletes the
// temporary object.
func (u *upload) viaTemp(ctx context.Context, first *[]byte, n int) (err error) {
	b := u.b
	tmp := b.prefix + tempDir + randomHex()
	size, err := u.multipart(ctx, tmp, first, n, false)
	if err != nil {
		return fmt.Errorf("upload to temporary object: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := b.client.RemoveObject(dctx, b.bucket, tmp, minio.RemoveObjectOptions{}); derr != nil && err == nil {
			// The object is stored; the temporary copy is debris for Cleanup.
			b.stats.tempLeft.Add(1)
		}
	}()
	digest, err := u.checkDigest()
	if err != nil {
		return err
	}
	b.stats.serverCopies.Add(1)
	uploadID, err := b.core.NewMultipartUpload(ctx, b.bucket, u.key, u.putOptions(digest))
	if err != nil {
		return fmt.Errorf("create multipart upload for copy: %w", err)
	}
	defer func() {
		if err != nil {
			b.abort(ctx, u.key, uploadID)
		}
	}()
	nparts := max(1, (size+MaxPartSize-1)/MaxPartSize)
	per := (size + nparts - 1) / nparts
	var parts []minio.CompletePart
	for i := range nparts {
		off := i * per
		length := min(per, size-off)
		p, err := b.core.CopyObjectPart(ctx, b.bucket, tmp, b.bucket, u.key, uploadID, int(i)+1, off, length, nil)
		if err != nil {
			return fmt.Errorf("copy part %d from temporary object: %w", i+1, err)
		}
		parts = append(parts, minio.CompletePart{PartNumber: int(i) + 1, ETag: p.ETag})
	}
	copts := u.conditional(minio.PutObjectOptions{ContentType: "application/octet-stream"})
	return u.commit(ctx, func() error {
		_, err := b.core.CompleteMultipartUpload(ctx, b.bucket, u.key, uploadID, parts, copts)
		return err
	})
}

// abort aborts a multipart upload on a context detached from ctx, which
// may have ended; an upload that cannot be aborted is left for Cleanup.
func (b *Backend) abort(ctx context.Context, key, uploadID string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := b.core.AbortMultipartUpload(actx, b.bucket, key, uploadID); err != nil && errorCode(err) != "NoSuchUpload" {
		b.stats.abortErrors.Add(1)
		return
	}
	b.stats.aborts.Add(1)
}

// partReader reads Put's input in parts, hashing it and checking the
// context between chunks. It looks one byte ahead so that it knows whether
// a full part is the last one.
type partReader struct {
	ctx  context.Context
	r    io.Reader
	h    *storage.Hash
	peek []byte // 0 or 1 byte read ahead
	eof  bool
}

// fill reads up to len(buf) bytes into buf and reports whether the input
// ended with them.
func (p *partReader) fill(buf []byte) (n int, last bool, err error) {
	n = copy(buf, p.peek)
	p.peek = p.peek[:0]
	for n < len(buf) && !p.eof {
		if err := p.ctx.Err(); err != nil {
			return 0, false, err
		}
		m, err := p.r.Read(buf[n:min(len(buf), n+readChunk)])
		n += m
		if errors.Is(err, io.EOF) {
			p.eof = true
		} else if err != nil {
			return 0, false, fmt.Errorf("read input: %w", err)
		}
	}
	if !p.eof {
		var one [1]byte
		for {
			if err := p.ctx.Err(); err != nil {
				return 0, false, err
			}
			m, err := p.r.Read(one[:])
			if m == 1 {
				p.peek = append(p.peek, one[0])
			}
			if errors.Is(err, io.EOF) {
				p.eof = true
			} else if err != nil {
				return 0, false, fmt.Errorf("read input: %w", err)
			}
			if m == 1 || p.eof {
				break
			}
		}
	}
	p.h.Write(buf[:n])
	return n, p.eof && len(p.peek) == 0, nil
}
