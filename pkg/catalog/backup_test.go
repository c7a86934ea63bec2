package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/barnacle-pg/barnacle/pkg/storage"
)

var t0 = time.Date(2026, 11, 24, 17, 0, 5, 123456789, time.UTC)

// putObject stores an arbitrary object for a test.
func putObject(t *testing.T, b storage.Backend, name string, data []byte) {
	t.Helper()
	_, err := storage.PutOnce(t.Context(), b, name, data)
	require.NoError(t, err)
}

// storeBackup writes doc as-is (any ID, any status) plus a base.tar.
func storeBackup(t *testing.T, b storage.Backend, cluster string, doc Backup) {
	t.Helper()
	require.NoError(t, PutBackup(t.Context(), b, cluster, doc))
	putObject(t, b, BackupPrefix(cluster, doc.ID)+"base.tar", []byte("tar of "+doc.ID))
}

func ids(backups []Backup) []string {
	var out []string
	for _, d := range backups {
		out = append(out, d.ID)
	}
	return out
}

func TestParseBackupID(t *testing.T) {
	tests := []struct {
		id     string
		suffix int
		ok     bool
	}{
		{"20261124T170005", 0, true},
		{"20261124T170005-1", 1, true},
		{"20261124T170005-12", 12, true},
		{"20261124T170005-0", 0, false},
		{"20261124T170005-01", 0, false},
		{"20261124T170005-", 0, false},
		{"20261124T170005-x", 0, false},
		{"20261124170005", 0, false},
		{"2026-11-24", 0, false},
		{"20261324T170005", 0, false},
		{"latest", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			ts, n, err := ParseBackupID(tt.id)
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, t0.Truncate(time.Second), ts)
			assert.Equal(t, tt.suffix, n)
		})
	}
}

func TestCompareBackupIDs(t *testing.T) {
	in := []string{"junk", "20261124T170005-10", "20261124T170006", "20261124T170005", "20261124T170005-2", "20251231T235959", "20261124T170005-1", "Aardvark"}
	slices.SortFunc(in, CompareBackupIDs)
	assert.Equal(t, []string{"20251231T235959", "20261124T170005", "20261124T170005-1", "20261124T170005-2",
		"20261124T170005-10", "20261124T170006", "Aardvark", "junk"}, in)
}

func TestNewBackupID(t *testing.T) {
	tests := []struct {
		name     string
		existing []string // IDs that have objects
		want     string
	}{
		{"empty archive", nil, "20261124T170005"},
		{"other second", []string{"20261124T170004", "20261124T170006"}, "20261124T170005"},
		{"same second", []string{"20261124T170005"}, "20261124T170005-1"},
		{"two same second", []string{"20261124T170005", "20261124T170005-1"}, "20261124T170005-2"},
		{"hole in suffixes", []string{"20261124T170005", "20261124T170005-2"}, "20261124T170005-1"},
		{"another cluster", nil, "20261124T170005"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			for _, id := range tt.existing {
				putObject(t, b, BackupPrefix("c", id)+"base.tar", []byte(id))
			}
			putObject(t, b, BackupPrefix("other", "20261124T170005")+"base.tar", []byte("x"))
			got, err := NewBackupID(t.Context(), b, "c", t0.In(time.FixedZone("CET", 3600)))
			require.NoError(t, err)
			assert.Equal(t, tt.want, got, "the ID is UTC whatever now's zone")
		})
	}
}

func TestCreateBackupSameSecond(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	// Debris without backup.json occupies its ID.
	putObject(t, b, BackupPrefix("c", "20261124T170005-1")+"base.tar", []byte("debris"))

	var got []string
	for range 3 {
		doc, err := CreateBackup(ctx, b, "c", Backup{Label: "l", Status: StatusDone, Error: "x", WALSegmentSize: 16 << 20}, t0)
		require.NoError(t, err)
		assert.Equal(t, StatusRunning, doc.Status, "a new backup is always running")
		assert.Empty(t, doc.Error)
		assert.Equal(t, t0, doc.StartTime)
		assert.False(t, doc.UpdatedAt.IsZero())
		stored, err := ReadBackup(ctx, b, "c", doc.ID)
		require.NoError(t, err)
		assert.Equal(t, doc.Label, stored.Label)
		assert.Equal(t, StatusRunning, stored.Status)
		got = append(got, doc.ID)
	}
	assert.Equal(t, []string{"20261124T170005", "20261124T170005-2", "20261124T170005-3"}, got)
}

func TestCreateBackupConcurrent(t *testing.T) {
	b := newBackend(t)
	var mu sync.Mutex
	var got []string
	var g errgroup.Group
	for i := range 8 {
		g.Go(func() error {
			doc, err := CreateBackup(t.Context(), b, "c", Backup{Label: fmt.Sprint(i)}, t0)
			if err != nil {
				return err
			}
			mu.Lock()
			defer mu.Unlock()
			got = append(got, doc.ID)
			return nil
		})
	}
	require.NoError(t, g.Wait())
	want := []string{"20261124T170005"}
	for i := 1; i < 8; i++ {
		want = append(want, fmt.Sprintf("20261124T170005-%d", i))
	}
	assert.ElementsMatch(t, want, got, "every creator gets its own ID")

	list, err := ListBackups(t.Context(), b, "c")
	require.NoError(t, err)
	require.Len(t, list, 8)
	labels := map[string]bool{}
	for _, d := range list {
		assert.Equal(t, StatusRunning, d.Status)
		labels[d.Label] = true
	}
	assert.Len(t, labels, 8, "no creator overwrote another's document")
}

func TestListBackups(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)

	empty, err := ListBackups(ctx, b, "c")
	require.NoError(t, err)
	assert.Empty(t, empty)

	for _, id := range []string{"20261124T170005-2", "20261123T000000", "20261124T170005-10", "20261124T170005", "20261125T010203"} {
		storeBackup(t, b, "c", Backup{ID: id, Status: StatusDone})
	}
	putObject(t, b, BackupPrefix("c", "20261124T170005-1")+"backup.json", []byte("{not json"))
	putObject(t, b, BackupPrefix("c", "20261124T170005-3")+"base.tar", []byte("no doc"))
	putObject(t, b, BackupPrefix("c", "20261124T170005-4")+"backup.json", []byte(`{"id":"20200101T000000","status":"done"}`))
	putObject(t, b, BackupPrefix("c", "20261124T170005-5")+"backup.json", []byte(`{"id":"20261124T170005-5","status":"weird"}`))
	putObject(t, b, BackupPrefix("c", "stray")+"backup.json", []byte(`{}`))
	putObject(t, b, BackupsPrefix("c")+"README", []byte("an object outside any backup is ignored"))
	storeBackup(t, b, "other", Backup{ID: "20300101T000000", Status: StatusDone})

	list, err := ListBackups(ctx, b, "c")
	require.NoError(t, err)
	assert.Equal(t, []string{
		"20261125T010203", "20261124T170005-10", "20261124T170005-5", "20261124T170005-4", "20261124T170005-3",
		"20261124T170005-2", "20261124T170005-1", "20261124T170005", "20261123T000000", "stray",
	}, ids(list))

	byID := map[string]Backup{}
	for _, d := range list {
		byID[d.ID] = d
	}
	for _, tt := range []struct{ id, errPart string }{
		{"20261124T170005-1", "decode"},
		{"20261124T170005-3", "backup.json is missing"},
		{"20261124T170005-4", `names backup "20200101T000000"`},
		{"20261124T170005-5", `unknown status "weird"`},
		{"stray", `names backup ""`},
	} {
		t.Run(tt.id, func(t *testing.T) {
			d := byID[tt.id]
			assert.Equal(t, StatusFailed, d.Status, "an unreadable document is listed as failed")
			assert.Contains(t, d.Error, tt.errPart)
		})
	}
	assert.Equal(t, StatusDone, byID["20261124T170005"].Status)
}

func TestReadBackup(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	doc := Backup{
		ID: "20261124T170005", Status: StatusDone, Label: "nightly",
		StartLSN: 0x2000028, StopLSN: 0x2000100, StartTimeline: 1, StopTimeline: 1,
		StartTime: t0, StopTime: t0.Add(time.Minute), PGVersion: 150010, SystemID: "7711797878400204491",
		WALSegmentSize: 16 << 20, Compression: "zstd",
		Files: []BackupFile{
			{Name: "base.tar.zst", Bytes: 100, StoredBytes: 40, Checksum: "ab"},
			{Name: "16385.tar.zst", Bytes: 10, StoredBytes: 4, Checksum: "cd", TablespaceOID: 16385, TablespaceLocation: "/ts"},
			{Name: "backup_manifest", Bytes: 5, StoredBytes: 5, Checksum: "ef"},
		},
		Bytes: 115, StoredBytes: 49, Agent: "a1", KeeperUID: "keeper1", Host: "h1", From: "master", Keep: true,
	}
	require.NoError(t, PutBackup(ctx, b, "c", doc))
	got, err := ReadBackup(ctx, b, "c", doc.ID)
	require.NoError(t, err)
	assert.False(t, got.UpdatedAt.IsZero())
	got.UpdatedAt = time.Time{}
	assert.Equal(t, doc, got)

	_, err = ReadBackup(ctx, b, "c", "20261124T170006")
	require.ErrorIs(t, err, ErrNoBackup)
	_, err = ReadBackup(ctx, b, "c", "../x")
	require.Error(t, err)
	require.NotErrorIs(t, err, ErrNoBackup)
	require.Error(t, PutBackup(ctx, b, "c", Backup{ID: "20261124T170007", Status: "bogus"}))
	require.Error(t, PutBackup(ctx, b, "c", Backup{ID: "a/b", Status: StatusDone}))
}

// TestBackupFileChecksumField reads backup.json files of both versions:
// "checksum" now, "sha256" before BLAKE3 checksums came.
func TestBackupFileChecksumField(t *testing.T) {
	var f BackupFile
	require.NoError(t, json.Unmarshal([]byte(`{"name":"base.tar","bytes":1,"storedBytes":1,"sha256":"ab"}`), &f))
	assert.Equal(t, BackupFile{Name: "base.tar", Bytes: 1, StoredBytes: 1, Checksum: "ab"}, f)
	require.NoError(t, json.Unmarshal([]byte(`{"name":"base.tar","checksum":"blake3:cd","tablespaceOID":5}`), &f))
	assert.Equal(t, BackupFile{Name: "base.tar", Checksum: "blake3:cd", TablespaceOID: 5}, f)
	out, err := json.Marshal(BackupFile{Name: "n", Checksum: "blake3:cd"})
	require.NoError(t, err)
	assert.Equal(t, `{"name":"n","bytes":0,"storedBytes":0,"checksum":"blake3:cd"}`, string(out))
}

func TestResolveBackup(t *testing.T) {
	tests := []struct {
		name    string
		backups map[string]BackupStatus
		ask     string
		want    string
		noSuch  bool
	}{
		{"latest skips running and failed", map[string]BackupStatus{
			"20261124T170005": StatusDone, "20261124T170005-1": StatusDone, "20261124T180000": StatusFailed, "20261124T190000": StatusRunning,
		}, "latest", "20261124T170005-1", false},
		{"latest with nothing done", map[string]BackupStatus{"20261124T170005": StatusFailed}, "latest", "", true},
		{"latest in empty archive", nil, "latest", "", true},
		{"explicit failed backup", map[string]BackupStatus{"20261124T170005": StatusFailed}, "20261124T170005", "20261124T170005", false},
		{"explicit missing", map[string]BackupStatus{"20261124T170005": StatusDone}, "20261124T170006", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			for id, st := range tt.backups {
				storeBackup(t, b, "c", Backup{ID: id, Status: st})
			}
			// Unreadable documents never win "latest".
			putObject(t, b, BackupPrefix("c", "20991231T235959")+"backup.json", []byte("garbage"))
			got, err := ResolveBackup(t.Context(), b, "c", tt.ask)
			if tt.noSuch {
				require.ErrorIs(t, err, ErrNoBackup)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.ID)
		})
	}
}

// recordingBackend records Delete calls and fails the Delete of failOn.
type recordingBackend struct {
	storage.Backend
	mu      sync.Mutex
	deleted []string
	failOn  string
}

func (r *recordingBackend) Delete(ctx context.Context, name string) error {
	if name == r.failOn {
		return errors.New("injected delete failure")
	}
	r.mu.Lock()
	r.deleted = append(r.deleted, name)
	r.mu.Unlock()
	return r.Backend.Delete(ctx, name)
}

func TestDeleteBackup(t *testing.T) {
	const id = "20261124T170005"
	tests := []struct {
		name    string
		doc     *Backup // nil: only debris, no backup.json
		garbage bool    // backup.json is not JSON
		force   bool
		wantErr error // nil: deleted
		anyErr  bool
	}{
		{name: "done", doc: &Backup{Status: StatusDone}},
		{name: "failed", doc: &Backup{Status: StatusFailed}},
		{name: "kept", doc: &Backup{Status: StatusDone, Keep: true}, wantErr: ErrBackupKept},
		{name: "kept forced", doc: &Backup{Status: StatusDone, Keep: true}, force: true},
		{name: "running", doc: &Backup{Status: StatusRunning}, wantErr: ErrBackupRunning},
		{name: "running forced", doc: &Backup{Status: StatusRunning}, force: true},
		{name: "unreadable", garbage: true, anyErr: true},
		{name: "unreadable forced", garbage: true, force: true},
		{name: "debris without backup.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			rb := &recordingBackend{Backend: newBackend(t)}
			prefix := BackupPrefix("c", id)
			switch {
			case tt.doc != nil:
				doc := *tt.doc
				doc.ID = id
				require.NoError(t, PutBackup(ctx, rb, "c", doc))
			case tt.garbage:
				putObject(t, rb, prefix+"backup.json", []byte("garbage"))
			}
			for _, f := range []string{"base.tar.zst", "16385.tar.zst", "backup_manifest", "zzz"} {
				putObject(t, rb, prefix+f, []byte(f))
			}
			storeBackup(t, rb, "c", Backup{ID: id + "-1", Status: StatusDone})

			err := DeleteBackup(ctx, rb, "c", id, tt.force)
			if tt.wantErr != nil || tt.anyErr {
				require.Error(t, err)
				if tt.wantErr != nil {
					require.ErrorIs(t, err, tt.wantErr)
				}
				assert.Empty(t, rb.deleted, "a refused delete deletes nothing")
				return
			}
			require.NoError(t, err)
			objs, err := rb.List(ctx, prefix)
			require.NoError(t, err)
			assert.Empty(t, objs)
			if tt.doc != nil || tt.garbage {
				require.Len(t, rb.deleted, 5)
				assert.Equal(t, prefix+"backup.json", rb.deleted[4], "backup.json goes last")
			}
			_, err = ReadBackup(ctx, rb, "c", id+"-1")
			require.NoError(t, err, "the neighbouring ID is untouched")
			require.ErrorIs(t, DeleteBackup(ctx, rb, "c", id, tt.force), ErrNoBackup, "a second delete finds nothing")
		})
	}

	t.Run("interrupted delete stays listed", func(t *testing.T) {
		ctx := t.Context()
		rb := &recordingBackend{Backend: newBackend(t)}
		storeBackup(t, rb, "c", Backup{ID: id, Status: StatusDone})
		putObject(t, rb, BackupPrefix("c", id)+"backup_manifest", []byte("m"))
		rb.failOn = BackupPrefix("c", id) + "base.tar"
		require.Error(t, DeleteBackup(ctx, rb, "c", id, false))
		list, err := ListBackups(ctx, rb, "c")
		require.NoError(t, err)
		assert.Equal(t, []string{id}, ids(list))
		rb.failOn = ""
		require.NoError(t, DeleteBackup(ctx, rb, "c", id, false))
		list, err = ListBackups(ctx, rb, "c")
		require.NoError(t, err)
		assert.Empty(t, list)
	})

	t.Run("missing", func(t *testing.T) {
		require.ErrorIs(t, DeleteBackup(t.Context(), newBackend(t), "c", id, true), ErrNoBackup)
	})
}

func TestSetKeep(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	storeBackup(t, b, "c", Backup{ID: "20261124T170005", Status: StatusDone})
	storeBackup(t, b, "c", Backup{ID: "20261124T170006", Status: StatusRunning})

	tests := []struct {
		name   string
		id     string
		keep   bool
		ok     bool
		noSuch bool
	}{
		{name: "keep done", id: "20261124T170005", keep: true, ok: true},
		{name: "keep again", id: "20261124T170005", keep: true, ok: true},
		{name: "keep running", id: "20261124T170006", keep: true},
		{name: "release running", id: "20261124T170006", keep: false, ok: true},
		{name: "keep missing", id: "20261124T170007", keep: true, noSuch: true},
		{name: "release done", id: "20261124T170005", keep: false, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := SetKeep(ctx, b, "c", tt.id, tt.keep)
			switch {
			case tt.noSuch:
				require.ErrorIs(t, err, ErrNoBackup)
			case !tt.ok:
				require.Error(t, err)
			default:
				require.NoError(t, err)
				doc, err := ReadBackup(ctx, b, "c", tt.id)
				require.NoError(t, err)
				assert.Equal(t, tt.keep, doc.Keep)
			}
		})
	}
}

func TestMarkStaleRunning(t *testing.T) {
	ctx := t.Context()
	b := newBackend(t)
	docs := []Backup{
		{ID: "20261124T170001", Status: StatusRunning, Agent: "dead"},
		{ID: "20261124T170002", Status: StatusRunning, Agent: "alive"},
		{ID: "20261124T170003", Status: StatusDone, Agent: "dead"},
		{ID: "20261124T170004", Status: StatusRunning, Agent: "dead"},
		{ID: "20261124T170005", Status: StatusFailed, Agent: "dead", Error: "earlier"},
	}
	for _, d := range docs {
		storeBackup(t, b, "c", d)
	}
	putObject(t, b, BackupPrefix("c", "20261124T170006")+"backup.json", []byte("garbage"))

	var asked []string
	isStale := func(d Backup) bool {
		asked = append(asked, d.ID)
		return d.Agent == "dead"
	}
	marked, err := MarkStaleRunning(ctx, b, "c", isStale, "agent dead died during the backup")
	require.NoError(t, err)
	assert.Equal(t, []string{"20261124T170001", "20261124T170004"}, marked, "oldest first")
	assert.ElementsMatch(t, []string{"20261124T170001", "20261124T170002", "20261124T170004"}, asked, "only running backups are offered")

	want := map[string]struct {
		st  BackupStatus
		err string
	}{
		"20261124T170001": {StatusFailed, "agent dead died during the backup"},
		"20261124T170002": {StatusRunning, ""},
		"20261124T170003": {StatusDone, ""},
		"20261124T170004": {StatusFailed, "agent dead died during the backup"},
		"20261124T170005": {StatusFailed, "earlier"},
	}
	for id, w := range want {
		doc, err := ReadBackup(ctx, b, "c", id)
		require.NoError(t, err)
		assert.Equal(t, w.st, doc.Status, id)
		assert.Equal(t, w.err, doc.Error, id)
	}

	marked, err = MarkStaleRunning(ctx, b, "c", isStale, "again")
	require.NoError(t, err)
	assert.Empty(t, marked)
}
