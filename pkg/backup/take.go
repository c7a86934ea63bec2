package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/barnacle-pg/barnacle/pkg/basebackup"
	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/wal"
)

// DefaultWALTimeout is how long Take waits, after the base backup's data
// is stored, for the archive to hold the WAL up to the stop position. The
// receiver writes what it has every 100 ms (pkg/walstream), so in a healthy
// archive the wait takes well under a second; minutes of waiting mean the
// WAL streaming is down, and a backup that waited longer would only hide
// that.
const DefaultWALTimeout = 5 * time.Minute

// failWriteTimeout bounds the write that marks a backup failed when Take's
// context has already ended.
const failWriteTimeout = 30 * time.Second

// progressStep is how many archive bytes pass between two OnProgress calls.
const progressStep = 1 << 20

// ManifestName is the name of the stored backup manifest inside a backup's
// prefix, as PostgreSQL names the file.
const ManifestName = "backup_manifest"

// ErrWALMissing means the archive does not hold the WAL a backup needs up to
// its stop position: the backup cannot be restored, and Take marks it failed.
var ErrWALMissing = errors.New("backup: WAL needed by the backup is not in the archive")

// Options configures Take.
type Options struct {
	// Backend is the archive; Cluster the cluster name under which the
	// backup is stored (catalog.BackupPrefix).
	Backend storage.Backend
	Cluster string
	// Compression is how the tar archives are stored: "none" (or ""),
	// "zstd" (base.tar.zst) or "lz4" (base.tar.lz4). The manifest is always
	// stored as it is.
	Compression string
	// ManifestChecksums is the algorithm of the manifest's per-file
	// checksums, one of basebackup.ManifestChecksumAlgorithms in any case;
	// empty means CRC32C, as pg_basebackup does. verify-backup checks any
	// of them.
	ManifestChecksums string
	// Label is the backup label PostgreSQL writes into backup_label; empty
	// means "barnacle <ID>".
	Label string
	// Fast requests an immediate checkpoint instead of a spread one.
	Fast bool
	// MaxRate throttles the server to this many kilobytes per second
	// (32..1048576); 0 means no limit.
	MaxRate int64
	// Agent, KeeperUID, Host and From are recorded in backup.json: where
	// the backup ran and whether it was taken from the master or a standby.
	Agent, KeeperUID, Host, From string
	// WaitWAL blocks until the archive holds the WAL up to stop (the WAL
	// archiver streams it) or ctx ends, and returns nil only in the first
	// case; the backup is done only after it returns nil. ctx carries
	// WALTimeout. nil means check the archive once with
	// catalog.CheckBackupWAL and fail if any segment is missing.
	WaitWAL func(ctx context.Context, stop basebackup.Position) error
	// WALTimeout bounds WaitWAL; 0 means DefaultWALTimeout. When it
	// expires the backup is marked failed with the reason.
	WALTimeout time.Duration
	// OnProgress, if set, is called from Take's goroutine about every MiB
	// of archive data with the bytes received so far, and once at the end.
	// total is the server's estimate of the backup's size, taken before it
	// sends anything (the sum of its tablespaces' sizes), so done may end a
	// little above it when files grow meanwhile; it is -1 if the server
	// sent no estimate, and done at the last call. It must return quickly:
	// the backup waits for it. Without it the server is not asked for the
	// estimate, which costs it a stat of every file before the first byte.
	OnProgress func(done, total int64)
	// OnCreate, if set, is called with the backup's ID once its running
	// document is written, so that the caller knows which running backup
	// is its own.
	OnCreate func(id string)
	// Logger receives the logs under the name "backup"; nil discards them.
	Logger hclog.Logger
	// Now is the clock for backup IDs and start and stop times; nil means
	// time.Now.
	Now func() time.Time
}

// Take takes a base backup over conn, an idle physical replication
// connection (replication=true) to a PostgreSQL 15+ server, into
// opts.Backend, and returns its catalog document. It blocks until the
// backup is done or has failed.
//
// Take creates backup.json with status running before BASE_BACKUP starts,
// streams each archive as <name>.tar[.zst|.lz4] and the manifest (with
// the file checksums of Options.ManifestChecksums) as backup_manifest, all written if absent, since a
// backup ID is never reused. Once all are durable it waits for the WAL up to
// the stop position (Options.WaitWAL) and only then writes status done.
//
// On any failure, including the end of ctx, Take writes status failed with
// the reason in Error (with a fresh context bounded by 30 s when ctx has
// ended) and returns the document and the error. Objects stored before the
// failure stay, listed in Files, for DeleteBackup. A failure before the
// backup was created (invalid options; a server older than PostgreSQL 15,
// which fails with basebackup.ErrUnsupportedVersion; identifying the
// server; creating backup.json) returns a zero Backup. With ctx done the
// error wraps ctx.Err(); a missing WAL wraps ErrWALMissing. After a failure
// during the base backup conn may be closed (see basebackup.Run).
func Take(ctx context.Context, conn *pgconn.PgConn, opts Options) (catalog.Backup, error) {
	if opts.Backend == nil {
		return catalog.Backup{}, errors.New("backup: options: backend is required")
	}
	if opts.Cluster == "" {
		return catalog.Backup{}, errors.New("backup: options: cluster is required")
	}
	alg, err := checkCompression(opts.Compression)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: options: %w", err)
	}
	if _, err := basebackup.ParseManifestChecksums(opts.ManifestChecksums); err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: options: %w", err)
	}
	if opts.MaxRate != 0 && (opts.MaxRate < 32 || opts.MaxRate > 1048576) {
		return catalog.Backup{}, fmt.Errorf("backup: options: max rate %d kB/s is outside 32..1048576", opts.MaxRate)
	}
	if opts.WALTimeout < 0 {
		return catalog.Backup{}, errors.New("backup: options: WAL timeout must not be negative")
	}
	if opts.WALTimeout == 0 {
		opts.WALTimeout = DefaultWALTimeout
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}

	version, err := versionNum(conn.ParameterStatus("server_version"))
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: %w", err)
	}
	if version/10000 < basebackup.MinServerVersion {
		return catalog.Backup{}, fmt.Errorf("backup: %w: server is version %d", basebackup.ErrUnsupportedVersion, version/10000)
	}
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: identify system: %w", err)
	}
	segSize, err := walSegmentSize(ctx, conn)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: %w", err)
	}

	now := opts.Now()
	doc, err := catalog.CreateBackup(ctx, opts.Backend, opts.Cluster, catalog.Backup{
		Label:          opts.Label,
		StartTime:      now.UTC(),
		PGVersion:      version,
		SystemID:       sys.SystemID,
		WALSegmentSize: segSize,
		Compression:    alg,
		Agent:          opts.Agent,
		KeeperUID:      opts.KeeperUID,
		Host:           opts.Host,
		From:           opts.From,
	}, now)
	if err != nil {
		return catalog.Backup{}, fmt.Errorf("backup: %w", err)
	}
	if opts.OnCreate != nil {
		opts.OnCreate(doc.ID)
	}
	if doc.Label == "" {
		doc.Label = "barnacle " + doc.ID
	}
	t := &taker{
		opts:      opts,
		algorithm: alg,
		prefix:    catalog.BackupPrefix(opts.Cluster, doc.ID),
		doc:       doc,
		log:       opts.Logger.Named("backup").With("cluster", opts.Cluster, "backup_id", doc.ID),
	}
	t.log.Info("backup started", "compression", alg, "from", opts.From)
	if err := t.run(ctx, conn); err != nil {
		return t.fail(ctx, err)
	}
	t.log.Info("backup done", "start_lsn", t.doc.StartLSN, "stop_lsn", t.doc.StopLSN,
		"bytes", t.doc.Bytes, "stored_bytes", t.doc.StoredBytes, "duration", t.doc.StopTime.Sub(t.doc.StartTime))
	return t.doc, nil
}

// taker is the state of one Take after backup.json was created. It is the
// basebackup.Consumer; basebackup.Run calls it from Take's goroutine only.
type taker struct {
	opts      Options
	algorithm string
	prefix    string
	log       hclog.Logger

	// ctx is Take's context, kept because the Consumer methods that start
	// and finish uploads take none.
	ctx context.Context

	doc catalog.Backup
	// done counts archive bytes received; reported is done at the last
	// OnProgress call; total is the server's estimate, -1 if unknown.
	done, reported, total int64
}

var (
	_ basebackup.Consumer = (*taker)(nil)
	_ basebackup.Planner  = (*taker)(nil)
)

// run takes the backup and waits for its WAL; any error fails the backup.
func (t *taker) run(ctx context.Context, conn *pgconn.PgConn) error {
	t.ctx, t.total = ctx, -1
	// The server checkpoints before it sends anything; a spread one
	// (not Fast) lasts checkpoint_completion_target of checkpoint_timeout,
	// minutes in which nothing else would be said (pg_basebackup says
	// "waiting for checkpoint" too).
	t.log.Info("waiting for checkpoint", "fast", t.opts.Fast)
	// PROGRESS costs the server one pass of stat calls over the data
	// directory before it sends anything, no reads: it gives the
	// progress bar and status key their total, and is asked for only
	// when something reads it (OnProgress). Small beside a backup of
	// large files, it took 0.7-1.3 s before the first byte on a cluster
	// of 121,000 small files, a sixth of the backup (issue 21).
	res, err := basebackup.Run(ctx, conn, basebackup.Options{
		Label:             t.doc.Label,
		Fast:              t.opts.Fast,
		Manifest:          true,
		ManifestChecksums: t.opts.ManifestChecksums,
		MaxRate:           t.opts.MaxRate,
		Progress:          t.opts.OnProgress != nil,
	}, t)
	if err != nil {
		return err
	}
	t.doc.StopLSN, t.doc.StopTimeline = res.Stop.LSN, res.Stop.Timeline
	t.doc.StopTime = t.opts.Now().UTC()
	if t.opts.OnProgress != nil {
		t.opts.OnProgress(t.done, t.done)
	}
	// Recorded before the wait, so that the stop position of a backup
	// waiting for its WAL can be seen.
	if err := t.put(ctx); err != nil {
		return err
	}
	t.log.Info("backup data stored, waiting for its WAL to be archived", "stop_lsn", res.Stop.LSN.String(), "timeline", res.Stop.Timeline)
	if err := t.waitWAL(ctx, res.Stop); err != nil {
		return err
	}
	t.doc.Status = catalog.StatusDone
	return t.put(ctx)
}

// put writes the document. UpdatedAt, which PutBackup sets in what it
// stores, is set here too, to within the write's duration.
func (t *taker) put(ctx context.Context) error {
	if err := catalog.PutBackup(ctx, t.opts.Backend, t.opts.Cluster, t.doc); err != nil {
		return err
	}
	t.doc.UpdatedAt = time.Now().UTC()
	return nil
}

// waitWAL returns nil once the archive holds the WAL up to stop.
func (t *taker) waitWAL(ctx context.Context, stop basebackup.Position) error {
	wctx, cancel := context.WithTimeout(ctx, t.opts.WALTimeout)
	defer cancel()
	if t.opts.WaitWAL == nil {
		chk, err := catalog.CheckBackupWAL(wctx, t.opts.Backend, t.opts.Cluster, t.doc)
		if err != nil {
			return fmt.Errorf("check WAL up to %s: %w", stop.LSN, err)
		}
		if !chk.OK() {
			missing := chk.Missing[0]
			if n := len(chk.Missing); n > 1 {
				missing += fmt.Sprintf(" and %d more", n-1)
			}
			if chk.First != "" && chk.First != chk.Last {
				missing += fmt.Sprintf(" of %s to %s", chk.First, chk.Last)
			}
			return fmt.Errorf("%w: missing %s (is WAL streaming running?)", ErrWALMissing, missing)
		}
		return nil
	}
	start := time.Now()
	err := t.opts.WaitWAL(wctx, stop)
	switch {
	case err == nil:
		t.log.Debug("WAL archived", "stop_lsn", stop.LSN.String(), "waited", time.Since(start))
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("wait for WAL up to %s: %w", stop.LSN, ctx.Err())
	case wctx.Err() != nil:
		return fmt.Errorf("%w: WAL up to %s on timeline %d was not archived within %s (is WAL streaming running?): %w",
			ErrWALMissing, stop.LSN, stop.Timeline, t.opts.WALTimeout, err)
	}
	return fmt.Errorf("%w: wait for WAL up to %s: %w", ErrWALMissing, stop.LSN, err)
}

// fail records the failure in backup.json and returns the error.
func (t *taker) fail(ctx context.Context, cause error) (catalog.Backup, error) {
	t.doc.Status, t.doc.Error = catalog.StatusFailed, cause.Error()
	if t.doc.StopTime.IsZero() {
		t.doc.StopTime = t.opts.Now().UTC()
	}
	wctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), failWriteTimeout)
		defer cancel()
	}
	if err := t.put(wctx); err != nil {
		cause = errors.Join(cause, fmt.Errorf("mark backup failed: %w", err))
	}
	// Not logged: the caller handles (and logs) the returned error.
	return t.doc, fmt.Errorf("backup %s: %w", t.doc.ID, cause)
}

// Begin implements basebackup.Consumer. It records the start position
// at once: from now on the backup needs the WAL from there, and retention
// must see that while the backup runs.
func (t *taker) Begin(start basebackup.Position) error {
	t.doc.StartLSN, t.doc.StartTimeline = start.LSN, start.Timeline
	t.log.Info("checkpoint done, receiving backup", "start_lsn", start.LSN.String(), "timeline", start.Timeline)
	if err := t.put(t.ctx); err != nil {
		return fmt.Errorf("record start position: %w", err)
	}
	return nil
}

// Plan implements basebackup.Planner: it keeps the server's estimate of
// the backup's size for OnProgress.
func (t *taker) Plan(tablespaces []basebackup.Tablespace) error {
	t.total = basebackup.EstimatedBytes(tablespaces)
	t.log.Debug("tablespaces", "count", len(tablespaces), "estimated_bytes", t.total)
	return nil
}

// NewArchive implements basebackup.Consumer.
func (t *taker) NewArchive(name, tablespaceLocation string) (io.WriteCloser, error) {
	f := catalog.BackupFile{Name: name + suffix(t.algorithm), TablespaceLocation: tablespaceLocation}
	if tablespaceLocation != "" {
		oid, err := strconv.ParseUint(strings.TrimSuffix(name, ".tar"), 10, 32)
		if err != nil || !strings.HasSuffix(name, ".tar") {
			return nil, fmt.Errorf("tablespace archive %q is not named <oid>.tar", name)
		}
		f.TablespaceOID = uint32(oid)
	} else if name != "base.tar" {
		return nil, fmt.Errorf("data directory archive %q is not named base.tar", name)
	}
	return t.upload(f, t.algorithm)
}

// Manifest implements basebackup.Consumer.
func (t *taker) Manifest() (io.WriteCloser, error) {
	return t.upload(catalog.BackupFile{Name: ManifestName}, "none")
}

// Progress implements basebackup.Consumer. The server's count is the
// same as the bytes written to the archives, which upload counts as they
// pass, more often than the server reports.
func (t *taker) Progress(int64) {}

// wrote counts n archive bytes and reports progress every progressStep.
func (t *taker) wrote(n int) {
	t.done += int64(n)
	if t.opts.OnProgress != nil && t.done-t.reported >= progressStep {
		t.reported = t.done
		t.opts.OnProgress(t.done, t.total)
	}
}

// upload starts storing one object: Put reads from a pipe that the
// returned writer feeds through the compressor.
func (t *taker) upload(f catalog.BackupFile, algorithm string) (*upload, error) {
	pw := newBufferedPipe()
	u := &upload{t: t, f: f, object: t.prefix + f.Name, pw: pw, w: pw, done: make(chan error, 1)}
	enc, err := newEncoder(algorithm, pw)
	if err != nil {
		return nil, err
	}
	if enc != nil {
		u.enc, u.w = enc, enc
	}
	go func() {
		err := t.opts.Backend.Put(t.ctx, u.object, pipeReader{pw}, storage.PutOptions{IfAbsent: true})
		// Put has stopped reading: writes must fail rather than block.
		pw.CloseReader(err)
		u.done <- err
	}()
	t.log.Debug("storing archive", "object", u.object)
	return u, nil
}

// upload is the writer of one stored object. It implements
// basebackup.Aborter.
type upload struct {
	t      *taker
	f      catalog.BackupFile
	object string
	pw     *bufferedPipe
	enc    io.WriteCloser // nil without compression
	w      io.Writer      // enc or pw
	n      int64
	done   chan error // Put's result
	abort  error
}

func (u *upload) Write(p []byte) (int, error) {
	n, err := u.w.Write(p)
	u.n += int64(n)
	u.t.wrote(n)
	return n, err
}

// Abort implements basebackup.Aborter: Close then discards the object.
func (u *upload) Abort(err error) { u.abort = err }

// Close ends the object: on success it waits until Put has made it durable
// and records it in the backup's Files; after Abort it makes Put fail, so
// that nothing is stored, and waits for it.
func (u *upload) Close() error {
	if u.abort != nil {
		u.pw.CloseWithError(u.abort)
		if u.enc != nil {
			_ = u.enc.Close() // ends its goroutines; it fails on the closed pipe
		}
		<-u.done
		return nil // the backup's error is the abort's cause
	}
	var err error
	if u.enc != nil {
		if err = u.enc.Close(); err != nil {
			err = fmt.Errorf("compress %s: %w", u.f.Name, err)
		}
	}
	if err != nil {
		u.pw.CloseWithError(err)
	} else if cerr := u.pw.Close(); cerr != nil {
		err = fmt.Errorf("store %s: %w", u.f.Name, cerr)
	}
	if perr := <-u.done; perr != nil {
		return errors.Join(perr, err) // Put's error is the cause of the compressor's
	}
	if err != nil {
		return err
	}
	info, err := u.t.opts.Backend.Stat(u.t.ctx, u.object)
	if err != nil {
		return fmt.Errorf("stat stored %s: %w", u.object, err)
	}
	u.f.Bytes, u.f.StoredBytes, u.f.Checksum = u.n, info.Size, info.Checksum
	u.t.doc.Files = append(u.t.doc.Files, u.f)
	u.t.doc.Bytes += u.f.Bytes
	u.t.doc.StoredBytes += u.f.StoredBytes
	u.t.log.Debug("archive stored", "object", u.object, "bytes", u.f.Bytes, "stored_bytes", u.f.StoredBytes)
	return nil
}

// versionNum turns the server_version parameter ("15.8 (Debian 15.8-1)",
// "16beta1") into server_version_num form (150008, 160000).
func versionNum(v string) (int, error) {
	digits := func(s string) (int, string) {
		end := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(s)
		}
		n, err := strconv.Atoi(s[:end])
		if err != nil {
			return -1, s
		}
		return n, s[end:]
	}
	major, rest := digits(v)
	if major < 10 {
		return 0, fmt.Errorf("server version %q is not PostgreSQL 10 or later", v)
	}
	minor := 0
	if strings.HasPrefix(rest, ".") {
		if m, _ := digits(rest[1:]); m >= 0 && m < 10000 {
			minor = m
		}
	}
	return major*10000 + minor, nil
}

// walSegmentSize runs SHOW wal_segment_size, which a physical replication
// connection accepts.
func walSegmentSize(ctx context.Context, conn *pgconn.PgConn) (uint64, error) {
	results, err := conn.Exec(ctx, "SHOW wal_segment_size").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) != 1 {
		return 0, errors.New("show wal_segment_size: want one row with one column")
	}
	size, err := parseSize(string(results[0].Rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	if err := wal.ValidSegmentSize(size); err != nil {
		return 0, fmt.Errorf("show wal_segment_size: %w", err)
	}
	return size, nil
}

// parseSize parses a size as SHOW prints it: an integer and a unit (B, kB,
// MB, GB).
func parseSize(s string) (uint64, error) {
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	mult := map[string]uint64{"": 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[s[len(num):]]
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil || mult == 0 {
		return 0, fmt.Errorf("parse size %q: want an integer and a unit like 16MB", s)
	}
	return n * mult, nil
}
