package restore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/compress"
)

// framedBase is a base archive of n relation files of 8 KiB, then
// global/pg_control, compressed by compress.FrameWriter as backups are:
// restore writes its files from the decompressor's buffers.
func framedBase(t *testing.T, n int) (plain, stored []byte) {
	t.Helper()
	entries := []entry{dir("base"), dir("base/1")}
	for i := range n {
		page := bytes.Repeat(fmt.Appendf(nil, "row %d of relation %d\n", i, i*7919), 8192/24)
		entries = append(entries, file(fmt.Sprintf("base/1/%d", 20000+i), string(page)))
	}
	entries = append(entries, dir("global"), file(pgControlName, "control"))
	plain = tarOf(t, entries...)
	var z bytes.Buffer
	fw, err := compress.NewFrameWriter(&z, 2)
	require.NoError(t, err)
	_, err = fw.Write(plain)
	require.NoError(t, err)
	require.NoError(t, fw.Close())
	return plain, z.Bytes()
}

// TestRestoreCorruptFrame: a zstd frame half way through a stored object
// that cannot be decoded (its checksum matches: the damage was there when
// it was stored) fails the restore, naming the object, after the files
// of the frames before it were written; the restore is not startable.
func TestRestoreCorruptFrame(t *testing.T) {
	plain, stored := framedBase(t, 2500) // about 20 MiB: five frames
	var frames []int
	for i := 0; i+4 <= len(stored); i++ {
		if binary.LittleEndian.Uint32(stored[i:]) == 0xFD2FB528 {
			frames = append(frames, i)
		}
	}
	require.GreaterOrEqual(t, len(frames), 4, "the archive has several frames")
	copy(stored[frames[2]:], []byte{0xff, 0xff, 0xff, 0xff}) // the third frame's magic number
	b, doc := craftedBackup(t, map[string][]byte{"base.tar.zst": stored}, map[string]int64{"base.tar.zst": int64(len(plain))})

	target := filepath.Join(t.TempDir(), "data")
	_, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
	require.Error(t, err)
	t.Log(err)
	var oe *ObjectError
	require.ErrorAs(t, err, &oe)
	assert.Equal(t, "base.tar.zst", oe.Object)
	assert.ErrorContains(t, err, "compress: zstd")
	assert.FileExists(t, filepath.Join(target, "base/1/20000"), "the first frames were restored")
	assert.NoFileExists(t, filepath.Join(target, "base/1/22499"))
	assert.NoFileExists(t, filepath.Join(target, pgControlName))
	assert.NoFileExists(t, filepath.Join(target, pgControlTempName))
}

// TestRestoreFramesBound: the bound on what an archive may write holds
// when files are written from the decompressor's buffers: a framed object
// that expands past what backup.json records stops as soon as it does.
func TestRestoreFramesBound(t *testing.T) {
	_, stored := framedBase(t, 2500)
	const limit = 1<<20 + 5000 // inside a file: its content is where the bound stops it
	b, doc := craftedBackup(t, map[string][]byte{"base.tar.zst": stored}, map[string]int64{"base.tar.zst": limit})
	target := filepath.Join(t.TempDir(), "data")
	_, err := Restore(t.Context(), Options{Backend: b, Cluster: testCluster, Backup: doc, TargetDir: target})
	require.ErrorIs(t, err, errTooLarge)
	var oe *ObjectError
	require.ErrorAs(t, err, &oe)
	assert.Contains(t, oe.Member, "base/1/2", "stopped in the content of the file that crosses the bound")
	assert.LessOrEqual(t, writtenUnder(t, target), int64(limit))
	assert.NoFileExists(t, filepath.Join(target, pgControlName))
}
