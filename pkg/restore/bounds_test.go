package restore

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/catalog"
	"github.com/barnacle-pg/barnacle/pkg/compress"
	"github.com/barnacle-pg/barnacle/pkg/storage"
	storagefs "github.com/barnacle-pg/barnacle/pkg/storage/fs"
)

// rawHeader is a ustar header block, built by hand because archive/tar
// does not write the headers a hostile archive uses.
func rawHeader(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], fmt.Sprintf("%011o\x00", tarTime.Unix()))
	h[156] = typ
	copy(h[257:265], "ustar\x0000")
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad512(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// paxSparseTar is a tar whose one member is GNU sparse format 1.0 in PAX
// records: 1 KiB of archive that archive/tar expands to realSize bytes.
func paxSparseTar(realSize int64) []byte {
	var recs bytes.Buffer
	for _, kv := range [][2]string{
		{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"},
		{"GNU.sparse.name", "base/1/16384"}, {"GNU.sparse.realsize", strconv.FormatInt(realSize, 10)},
	} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec)
		for len(strconv.Itoa(n))+len(rec) != n {
			n = len(strconv.Itoa(n)) + len(rec)
		}
		recs.WriteString(strconv.Itoa(n) + rec)
	}
	// The sparse map (one data extent of 512 bytes at offset 0), then the
	// data.
	sparseMap := pad512([]byte("1\n0\n512\n"))
	data := bytes.Repeat([]byte{'x'}, 512)
	var out []byte
	out = append(out, rawHeader("PaxHeaders/16384", tar.TypeXHeader, int64(recs.Len()))...)
	out = append(out, pad512(recs.Bytes())...)
	out = append(out, rawHeader("GNUSparseFile.0/16384", tar.TypeReg, int64(len(sparseMap)+len(data)))...)
	out = append(out, sparseMap...)
	out = append(out, data...)
	return append(out, make([]byte, 1024)...)
}

// craftedBackup stores objects as the files of a done backup whose
// backup.json records the given sizes (what an attacker who may write
// into the archive controls).
func craftedBackup(t *testing.T, objects map[string][]byte, bytesOf map[string]int64) (storage.Backend, catalog.Backup) {
	t.Helper()
	b, err := storagefs.New(t.TempDir(), storagefs.Options{})
	require.NoError(t, err)
	doc := catalog.Backup{ID: "20261125T100000", Status: catalog.StatusDone}
	for name, data := range objects {
		require.NoError(t, b.Put(t.Context(), catalog.BackupPrefix(testCluster, doc.ID)+name, bytes.NewReader(data), storage.PutOptions{}))
		n, ok := bytesOf[name]
		if !ok {
			n = int64(len(data))
		}
		doc.Files = append(doc.Files, catalog.BackupFile{Name: name, Bytes: n, StoredBytes: int64(len(data))})
	}
	return b, doc
}

// writtenUnder sums the allocated bytes of the files under dir.
func writtenUnder(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if st, err := os.Stat(p); err == nil {
				n += st.Size()
			}
		}
		return nil
	})
	return n
}

// TestRestoreBounds: a small crafted object cannot make a restore write
// without bound. A PAX sparse member is refused (it wrote a fully
// allocated 48 MiB file from 20 KB and ended done); a zstd object that
// expands past what backup.json records stops as soon as it does (it
// wrote until the disk was full); documents with negative or absurd sizes
// and backups larger than the free space are refused before anything is
// written.
func TestRestoreBounds(t *testing.T) {
	enc, err := compress.NewEncoder(compress.Zstd)
	require.NoError(t, err)
	zeros := func(n int) string { return string(make([]byte, n)) }

	t.Run("SparseMember", func(t *testing.T) {
		data := paxSparseTar(48 << 20)
		b, doc := craftedBackup(t, map[string][]byte{"base.tar": data}, nil)
		target := filepath.Join(t.TempDir(), "data")
		_, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
		assert.Less(t, writtenUnder(t, target), int64(1<<20))
		require.ErrorContains(t, err, "sparse tar members are not restored")
	})

	t.Run("ZstdBombOneMember", func(t *testing.T) {
		plain := tarOf(t, file("base/1/16384", zeros(64<<20)))
		z, err := enc.Compress(plain)
		require.NoError(t, err)
		require.Less(t, len(z), 64<<10, "a small object")
		b, doc := craftedBackup(t, map[string][]byte{"base.tar.zst": z}, map[string]int64{"base.tar.zst": 16 << 10})
		target := filepath.Join(t.TempDir(), "data")
		_, err = Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
		assert.LessOrEqual(t, writtenUnder(t, target), int64(16<<10))
		require.ErrorContains(t, err, "more than the 16384 bytes backup.json records")
	})

	t.Run("ZstdBombManyMembers", func(t *testing.T) {
		var entries []entry
		for i := range 64 {
			entries = append(entries, file(fmt.Sprintf("base/1/%d", 20000+i), zeros(1<<20)))
		}
		z, err := enc.Compress(tarOf(t, entries...))
		require.NoError(t, err)
		b, doc := craftedBackup(t, map[string][]byte{"base.tar.zst": z}, map[string]int64{"base.tar.zst": 4 << 20})
		target := filepath.Join(t.TempDir(), "data")
		_, err = Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
		require.Error(t, err)
		t.Log(err)
		assert.LessOrEqual(t, writtenUnder(t, target), int64(4<<20))
	})

	t.Run("LargerThanTheManifestSays", func(t *testing.T) {
		data := tarOf(t, file("base/1/16384", zeros(64<<10)))
		manifest := []byte(`{"PostgreSQL-Backup-Manifest-Version":1,"Files":[{"Path":"base/1/16384","Size":8192}]}` + "\n")
		b, doc := craftedBackup(t, map[string][]byte{"base.tar": data, manifestName: manifest}, nil)
		target := filepath.Join(t.TempDir(), "data")
		_, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
		require.ErrorContains(t, err, `member "base/1/16384": it holds 65536 bytes, but backup_manifest lists 8192`)
		assert.NoFileExists(t, filepath.Join(target, "base", "1", "16384"))
	})

	t.Run("TrailingBomb", func(t *testing.T) {
		// Past the tar end marker, where nothing is unpacked but the
		// decompressor still runs.
		plain := append(tarOf(t, file("PG_VERSION", "15\n")), zeros(64<<20)...)
		z, err := enc.Compress(plain)
		require.NoError(t, err)
		b, doc := craftedBackup(t, map[string][]byte{"base.tar.zst": z}, map[string]int64{"base.tar.zst": 8 << 10})
		_, err = Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: filepath.Join(t.TempDir(), "data")})
		require.ErrorIs(t, err, errTooLarge)
	})

	for _, tc := range []struct {
		name        string
		bytes       int64
		want        string
		rejectedNow bool
	}{
		{"NegativeSize", -1, "records -1 bytes", false},
		{"ZeroSize", 0, "records 0 bytes", false},
		{"AbsurdSize", 1 << 62, "records 4611686018427387904 bytes", false},
		{"LargerThanFreeSpace", 1 << 49, "not enough free space", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tarOf(t, file("PG_VERSION", "15\n"))
			b, doc := craftedBackup(t, map[string][]byte{"base.tar": data}, map[string]int64{"base.tar": tc.bytes})
			target := filepath.Join(t.TempDir(), "data")
			_, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
			require.ErrorContains(t, err, tc.want)
			assert.NoDirExists(t, target, "refused before anything was written")
			if tc.rejectedNow {
				assert.True(t, IsRejected(err))
			}
		})
	}
}
