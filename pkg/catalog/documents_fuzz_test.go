package catalog

import (
	"bytes"
	"context"
	"testing"

	"github.com/barnacle-pg/barnacle/pkg/storage"
	"github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// FuzzDocuments feeds arbitrary bytes as backup.json, gaps.json and
// archive.json, the documents a restore or check reads from an archive
// that may be damaged or hostile: every read returns a value that passed
// its checks or an error, never a panic, and a listing keeps a bad
// backup visible (as failed) instead of failing or dropping it.
func FuzzDocuments(f *testing.F) {
	for _, s := range []string{
		`{"id":"20261125T101010","status":"done","startLSN":"0/2000028","stopLSN":"0/2000100","timeline":1}`,
		`{"id":"20261125T101010","status":"running"}`,
		`{"id":"20200101T000000","status":"done"}`,
		`{"id":"20261125T101010","status":"weird"}`,
		`{"gaps":[{"startLSN":"0/1000000","endLSN":"0/3000000","timeline":1}]}`,
		`{"cluster":"c","systemIdentifier":"7300000000000000001","walSegmentSize":16777216,"formatVersion":1}`,
		`{"systemIdentifier":"   "}`, `null`, `[]`, `{`, ``, "\x00",
	} {
		f.Add([]byte(s))
	}
	b, err := fs.New(f.TempDir(), fs.Options{})
	if err != nil {
		f.Fatal(err)
	}
	const cluster, id = "c", "20261125T101010"
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		for _, name := range []string{BackupObject(cluster, id), GapsObject(cluster), IdentityObject(cluster)} {
			if err := b.Put(ctx, name, bytes.NewReader(data), storage.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if doc, err := ReadBackup(ctx, b, cluster, id); err == nil {
			if doc.ID != id {
				t.Fatalf("backup.json naming %q read as %q", doc.ID, id)
			}
			switch doc.Status {
			case StatusRunning, StatusDone, StatusFailed:
			default:
				t.Fatalf("status %q accepted", doc.Status)
			}
		}
		list, err := ListBackups(ctx, b, cluster)
		if err != nil {
			t.Fatalf("a bad backup.json failed the listing: %v", err)
		}
		if len(list) != 1 || list[0].ID != id {
			t.Fatalf("listing %+v, want the one backup %s", list, id)
		}
		_, _ = ReadGaps(ctx, b, cluster)
		if ident, err := ReadIdentity(ctx, b, cluster); err == nil && ident.SystemID == "" {
			t.Fatal("identity without a system identifier accepted")
		}
	})
}
