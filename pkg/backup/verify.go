package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// ErrVerifyFailed means Verify found the backup damaged or incomplete; the
// VerifyReport lists every problem.
var ErrVerifyFailed = errors.New("backup: verification failed")

// ignoredPaths are the paths pg_verifybackup ignores by default (a path
// and everything under it): files that are not in the manifest (pg_wal's,
// the manifest itself) or that restores may create or change
// (postgresql.auto.conf, recovery.signal, standby.signal). Verify does not
// report them as missing or extra, but still checks any that both the
// manifest and an archive hold, since Take stores them as the server sent
// them.
var ignoredPaths = []string{"backup_manifest", "pg_wal", "postgresql.auto.conf", "recovery.signal", "standby.signal"}

func ignored(p string) bool {
	for _, ig := range ignoredPaths {
		if p == ig || strings.HasPrefix(p, ig+"/") {
			return true
		}
	}
	return false
}

// VerifyReport is what Verify checked and found.
type VerifyReport struct {
	// Files is the number of regular files read from the archives and
	// compared with the manifest; Bytes their total size.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
	// Problems describes each mismatch, one line each, starting with the
	// stored object it was found in ("base.tar.zst: global/pg_control:
	// checksum mismatch ..."). Damage to a stored object itself comes
	// before what it caused in the files inside it.
	Problems []string `json:"problems"`
}

// Verify re-reads every stored file of backup doc and checks it:
//   - each object's bytes against the checksum stored with it (the backend
//     checks at the end of the object) and against the size and checksum
//     recorded in doc.Files;
//   - each archive's uncompressed length against doc.Files;
//   - backup_manifest's own checksum, and its WAL range against doc's;
//   - every regular file inside the tar archives against the manifest's
//     size and checksum (CRC-32C or SHA-2; tablespace files are
//     pg_tblspc/<oid>/<path> in the manifest), with files in the manifest
//     but in no archive, and files in an archive but not in the manifest,
//     reported, except those pg_verifybackup ignores (pg_wal/, the
//     manifest, postgresql.auto.conf, recovery.signal, standby.signal).
//
// It reads one object at a time, streaming, and calls progress (if not
// nil) about every MiB with the stored bytes read so far and the total of
// doc.Files, from Verify's goroutine.
//
// It returns the report and, when it found problems, an error wrapping
// ErrVerifyFailed that names the first. Other errors (ctx ended, storage
// unreachable) stop the verification and are returned as they are, with the
// report so far.
func Verify(ctx context.Context, b storage.Backend, cluster string, doc catalog.Backup, progress func(done, total int64)) (VerifyReport, error) {
	v := &verifier{ctx: ctx, b: b, prefix: catalog.BackupPrefix(cluster, doc.ID), doc: doc, progress: progress}
	for _, f := range doc.Files {
		v.total += f.StoredBytes
	}
	err := v.run()
	if progress != nil && v.reported != v.done {
		progress(v.done, v.total)
	}
	if err != nil {
		return v.report, fmt.Errorf("verify backup %s: %w", doc.ID, err)
	}
	if p := v.report.Problems; len(p) > 0 {
		more := ""
		if len(p) > 1 {
			more = fmt.Sprintf(" (and %d more problems)", len(p)-1)
		}
		return v.report, fmt.Errorf("verify backup %s: %w: %s%s", doc.ID, ErrVerifyFailed, p[0], more)
	}
	return v.report, nil
}

// verifier is the state of one Verify.
type verifier struct {
	ctx      context.Context
	b        storage.Backend
	prefix   string
	doc      catalog.Backup
	progress func(done, total int64)

	report         VerifyReport
	done, total    int64
	reported       int64
	manifest       *manifest
	byPath         map[string]*manifestFile
	failedArchives map[string]bool // path prefixes whose archive could not be read whole
}

func (v *verifier) problem(format string, args ...any) {
	v.report.Problems = append(v.report.Problems, fmt.Sprintf(format, args...))
}

func (v *verifier) run() error {
	v.failedArchives = map[string]bool{}
	var mf *catalog.BackupFile
	for i, f := range v.doc.Files {
		if f.Name == ManifestName {
			mf = &v.doc.Files[i]
		}
	}
	if mf == nil {
		v.problem("%s: not listed in backup.json: the files cannot be checked against it", ManifestName)
	} else if err := v.readManifest(*mf); err != nil {
		return err
	}
	for _, f := range v.doc.Files {
		if f.Name == ManifestName {
			continue
		}
		if err := v.archive(f); err != nil {
			return err
		}
	}
	if v.manifest == nil {
		return nil
	}
	for _, mfile := range v.manifest.Files {
		p := mfile.path()
		if mfile.seen || ignored(p) || v.failedArchives[archivePrefix(p)] {
			continue
		}
		v.problem("%s: in %s but in no archive", p, ManifestName)
	}
	v.report.Problems = append(v.report.Problems, v.manifest.problems...)
	return nil
}

// archivePrefix returns the key of the archive that holds manifest path p:
// "pg_tblspc/<oid>/" for a tablespace, "" for the data directory.
func archivePrefix(p string) string {
	if rest, ok := strings.CutPrefix(p, "pg_tblspc/"); ok {
		if oid, _, ok := strings.Cut(rest, "/"); ok {
			if _, err := strconv.ParseUint(oid, 10, 32); err == nil {
				return "pg_tblspc/" + oid + "/"
			}
		}
	}
	return ""
}

// objectState is what reading a stored object found.
type objectState int

const (
	// objectIntact: the bytes match the backend's checksum and backup.json.
	objectIntact objectState = iota
	// objectOther: the bytes match the backend's checksum, but backup.json
	// lists another object (size or checksum).
	objectOther
	// objectDamaged: missing, or its bytes do not match the backend's checksum.
	objectDamaged
)

// object reads stored object f through fn, which gets the stored bytes,
// then reads the object to its end so that the backend checks its stored
// checksum, and compares size and digest with backup.json, recording a
// problem unless it is intact. fnErr is fn's error, nil for a damaged
// object (whose damage is the cause). err is an error that stops Verify.
func (v *verifier) object(f catalog.BackupFile, fn func(r io.Reader) error) (state objectState, fnErr, err error) {
	name := v.prefix + f.Name
	rc, err := v.b.Get(v.ctx, name)
	if errors.Is(err, storage.ErrNotExist) {
		v.problem("%s: object %s is missing", f.Name, name)
		return objectDamaged, nil, nil
	}
	if err != nil {
		if errors.Is(err, storage.ErrNoChecksum) {
			v.problem("%s: %v", f.Name, err)
			return objectDamaged, nil, nil
		}
		return objectDamaged, nil, fmt.Errorf("open %s: %w", name, err)
	}
	defer rc.Close()
	h, err := storage.HashFor(f.Checksum)
	if err != nil {
		v.problem("%s: backup.json: %v", f.Name, err)
		return objectOther, nil, nil
	}
	cr := &countingReader{r: rc, h: h, v: v}
	fnErr = fn(cr)
	_, rawErr := io.Copy(io.Discard, cr)
	if cerr := v.ctx.Err(); cerr != nil {
		return objectDamaged, nil, cerr
	}
	var ce *storage.ChecksumError
	switch {
	case errors.As(rawErr, &ce), errors.As(fnErr, &ce):
		v.problem("%s: %v", f.Name, ce)
		return objectDamaged, nil, nil
	case rawErr != nil:
		return objectDamaged, nil, fmt.Errorf("read %s: %w", name, rawErr)
	}
	if got := h.Checksum(); cr.n != f.StoredBytes || !strings.EqualFold(got, f.Checksum) {
		v.problem("%s: stored object (%d bytes, %s) is not the one backup.json lists (%d bytes, %s)",
			f.Name, cr.n, storage.DescribeChecksum(got), f.StoredBytes, storage.DescribeChecksum(f.Checksum))
		return objectOther, fnErr, nil
	}
	return objectIntact, fnErr, nil
}

// readManifest reads and parses backup_manifest; a damaged one is a
// problem, and the archives are then checked without it.
func (v *verifier) readManifest(f catalog.BackupFile) error {
	var data []byte
	state, readErr, err := v.object(f, func(r io.Reader) error {
		var rerr error
		data, rerr = io.ReadAll(r)
		return rerr
	})
	if err != nil {
		return err
	}
	if readErr != nil {
		return fmt.Errorf("read %s: %w", f.Name, readErr)
	}
	if state == objectDamaged {
		return nil
	}
	m, err := parseManifest(data)
	if err != nil {
		v.problem("%s: %v", f.Name, err)
		return nil
	}
	v.checkWALRange(m)
	v.manifest = m
	v.byPath = make(map[string]*manifestFile, len(m.Files))
	for i := range m.Files {
		mf := &m.Files[i]
		if _, dup := v.byPath[mf.path()]; dup {
			v.problem("%s: %s is listed twice", f.Name, mf.path())
		}
		v.byPath[mf.path()] = mf
	}
	return nil
}

// checkWALRange compares the manifest's WAL range with backup.json's.
func (v *verifier) checkWALRange(m *manifest) {
	if len(m.WALRanges) == 0 {
		v.problem("%s: no WAL-Ranges", ManifestName)
		return
	}
	first, last := m.WALRanges[0], m.WALRanges[len(m.WALRanges)-1]
	same := func(a string, b wal.LSN) bool {
		la, err := wal.ParseLSN(a)
		return err == nil && b != wal.InvalidLSN && la == b
	}
	if !same(first.StartLSN, v.doc.StartLSN) || first.Timeline != v.doc.StartTimeline ||
		!same(last.EndLSN, v.doc.StopLSN) || last.Timeline != v.doc.StopTimeline {
		v.problem("%s: WAL range %s on timeline %d to %s on timeline %d is not backup.json's %s on timeline %d to %s on timeline %d",
			ManifestName, first.StartLSN, first.Timeline, last.EndLSN, last.Timeline,
			v.doc.StartLSN, v.doc.StartTimeline, v.doc.StopLSN, v.doc.StopTimeline)
	}
}

// archive checks one stored tar archive and the files in it.
func (v *verifier) archive(f catalog.BackupFile) error {
	key := ""
	if f.TablespaceOID != 0 {
		key = fmt.Sprintf("pg_tblspc/%d/", f.TablespaceOID)
	}
	var members []string // problems of files in the archive
	var tarBytes int64
	state, readErr, err := v.object(f, func(r io.Reader) error {
		dec, err := compress.NewParallelReader(algorithmOfName(f.Name), r, zstdWorkers)
		if err != nil {
			return err
		}
		defer dec.Close()
		cr := &countingReader{r: dec}
		err = v.members(f.Name, key, tar.NewReader(cr), &members)
		if err == nil {
			// PostgreSQL's tar ends in zero blocks that tar.Reader may
			// not consume; the compressed frames end after them.
			_, err = io.Copy(io.Discard, cr)
		}
		tarBytes = cr.n
		return err
	})
	if err != nil {
		return err
	}
	switch {
	case readErr != nil:
		if cerr := v.ctx.Err(); cerr != nil {
			return cerr
		}
		v.problem("%s: cannot read the archive: %v", f.Name, readErr)
	case state == objectIntact && tarBytes != f.Bytes:
		v.problem("%s: holds %d bytes uncompressed, backup.json says %d", f.Name, tarBytes, f.Bytes)
	}
	if state == objectDamaged || readErr != nil {
		// Its files were not all read: not finding them is no news.
		v.failedArchives[key] = true
	}
	v.report.Problems = append(v.report.Problems, members...)
	return nil
}

// members checks every file in the tar archive object against the
// manifest; key prefixes the archive's paths to make manifest paths.
func (v *verifier) members(object, key string, tr *tar.Reader, problems *[]string) error {
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if !h.FileInfo().Mode().IsRegular() {
			continue
		}
		name := path.Clean(h.Name)
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			*problems = append(*problems, fmt.Sprintf("%s: %s: unsafe path in the archive", object, h.Name))
			continue
		}
		p := key + name
		if v.manifest == nil {
			if _, err := io.Copy(io.Discard, tr); err != nil {
				return err
			}
			continue
		}
		mf := v.byPath[p]
		if mf == nil {
			if !ignored(p) {
				*problems = append(*problems, fmt.Sprintf("%s: %s: in the archive but not in %s", object, p, ManifestName))
			}
			continue
		}
		if mf.seen {
			*problems = append(*problems, fmt.Sprintf("%s: %s: in the archives twice", object, p))
		}
		mf.seen = true
		hsh, known := manifestHash(mf.Algorithm)
		if !known {
			*problems = append(*problems, fmt.Sprintf("%s: %s: checksum algorithm %s is not supported, only the size was checked", object, p, mf.Algorithm))
		}
		var w io.Writer = io.Discard
		if hsh != nil {
			w = hsh
		}
		n, err := io.Copy(w, tr)
		if err != nil {
			return err
		}
		v.report.Files++
		v.report.Bytes += n
		if n != mf.Size {
			*problems = append(*problems, fmt.Sprintf("%s: %s: size mismatch: %d bytes, %s says %d", object, p, n, ManifestName, mf.Size))
			continue
		}
		if hsh != nil {
			if got := hex.EncodeToString(hsh.Sum(nil)); !strings.EqualFold(got, mf.Checksum) {
				*problems = append(*problems, fmt.Sprintf("%s: %s: checksum mismatch: %s %s, %s says %s", object, p, strings.ToLower(mf.Algorithm), got, ManifestName, mf.Checksum))
			}
		}
	}
}

// manifestHash returns a hash for a manifest file's Checksum-Algorithm,
// whose hex-encoded Sum is what the manifest records, or nil for none; known
// is false for an algorithm it does not know.
func manifestHash(algorithm string) (h hash.Hash, known bool) {
	switch strings.ToUpper(algorithm) {
	case "", "NONE":
		return nil, true
	case "CRC32C":
		return crc32cHash{crc32.New(crc32.MakeTable(crc32.Castagnoli))}, true
	case "SHA224":
		return sha256.New224(), true
	case "SHA256":
		return sha256.New(), true
	case "SHA384":
		return sha512.New384(), true
	case "SHA512":
		return sha512.New(), true
	}
	return nil, false
}

// crc32cHash is CRC-32C as a backup manifest records it: the server copies
// the final pg_crc32c out of memory as it lies there (pg_checksum_final in
// checksum_helper.c), so in the server's byte order: little-endian on amd64
// and arm64, the platforms barnacle is built for. Go's Sum is big-endian.
type crc32cHash struct{ hash.Hash32 }

func (c crc32cHash) Sum(b []byte) []byte { return binary.LittleEndian.AppendUint32(b, c.Sum32()) }

// countingReader counts (and, with h, hashes) what passes; with v it
// reports Verify's progress.
type countingReader struct {
	r io.Reader
	h hash.Hash
	n int64
	v *verifier
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	if v := c.v; v != nil {
		v.done += int64(n)
		if v.progress != nil && v.done-v.reported >= progressStep {
			v.reported = v.done
			v.progress(v.done, v.total)
		}
	}
	return n, err
}

// manifest is the part of PostgreSQL's backup manifest Verify uses.
// https://www.postgresql.org/docs/15/backup-manifest-format.html
type manifest struct {
	Version   int            `json:"PostgreSQL-Backup-Manifest-Version"`
	Files     []manifestFile `json:"Files"`
	WALRanges []struct {
		Timeline wal.Timeline `json:"Timeline"`
		StartLSN string       `json:"Start-LSN"`
		EndLSN   string       `json:"End-LSN"`
	} `json:"WAL-Ranges"`
	Checksum string `json:"Manifest-Checksum"`

	// problems are found while parsing and reported after the archives'.
	problems []string
}

type manifestFile struct {
	Path string `json:"Path"`
	// EncodedPath is the hex-encoded path, used instead of Path for a
	// path that is not valid UTF-8.
	EncodedPath string `json:"Encoded-Path"`
	Size        int64  `json:"Size"`
	Algorithm   string `json:"Checksum-Algorithm"`
	Checksum    string `json:"Checksum"`

	decoded string
	seen    bool
}

func (f *manifestFile) path() string {
	if f.decoded == "" {
		f.decoded = f.Path
	}
	return f.decoded
}

// parseManifest parses a backup manifest and checks its own checksum: the
// SHA-256 of everything before its last line, as pg_verifybackup computes
// it (parse_manifest.c, verify_manifest_checksum).
func parseManifest(data []byte) (*manifest, error) {
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if m.Version != 1 && m.Version != 2 {
		return nil, fmt.Errorf("unsupported manifest version %d", m.Version)
	}
	if !bytes.HasSuffix(data, []byte("\n")) {
		return nil, errors.New("last line is not newline-terminated")
	}
	body := data[:len(data)-1]
	end := bytes.LastIndexByte(body, '\n')
	if end < 0 {
		return nil, errors.New("expected at least 2 lines")
	}
	sum := sha256.Sum256(data[:end+1])
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, m.Checksum) {
		return nil, fmt.Errorf("manifest checksum mismatch: sha256 %s, Manifest-Checksum says %s", got, m.Checksum)
	}
	for i := range m.Files {
		f := &m.Files[i]
		switch {
		case f.Path != "" && f.EncodedPath != "":
			m.problems = append(m.problems, fmt.Sprintf("%s: %s has both Path and Encoded-Path", ManifestName, f.Path))
		case f.EncodedPath != "":
			raw, err := hex.DecodeString(f.EncodedPath)
			if err != nil {
				m.problems = append(m.problems, fmt.Sprintf("%s: Encoded-Path %q is not hex", ManifestName, f.EncodedPath))
			}
			f.decoded = string(raw)
		case f.Path == "":
			m.problems = append(m.problems, fmt.Sprintf("%s: a file has no path", ManifestName))
		}
	}
	return &m, nil
}
