package basebackup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newArchive(name, location string) []byte {
	return append(append(append([]byte{'n'}, name...), 0), append([]byte(location), 0)...)
}

func data(s string) []byte { return append([]byte{'d'}, s...) }

func progress(n uint64) []byte { return binary.BigEndian.AppendUint64([]byte{'p'}, n) }

var manifestStart = []byte{'m'}

func TestDemux(t *testing.T) {
	tests := []struct {
		name string
		msgs [][]byte
		want []Event
		// errAt is the index of the message Feed must refuse (len(msgs)
		// for End), -1 when none.
		errAt   int
		wantErr string
	}{
		{
			name: "one archive with manifest",
			msgs: [][]byte{newArchive("base.tar", ""), data("ab"), data(""), progress(2), manifestStart, data("{}")},
			want: []Event{
				{Kind: EventArchive, Name: "base.tar"},
				{Kind: EventArchiveData, Data: []byte("ab")},
				{Kind: EventArchiveData, Data: []byte{}},
				{Kind: EventProgress, Done: 2},
				{Kind: EventManifest},
				{Kind: EventManifestData, Data: []byte("{}")},
			},
			errAt: -1,
		},
		{
			name: "tablespace then base without manifest",
			msgs: [][]byte{newArchive("16384.tar", "/srv/ts"), data("x"), progress(1), newArchive("base.tar", ""), data("y"), progress(2), progress(2)},
			want: []Event{
				{Kind: EventArchive, Name: "16384.tar", Location: "/srv/ts"},
				{Kind: EventArchiveData, Data: []byte("x")},
				{Kind: EventProgress, Done: 1},
				{Kind: EventArchive, Name: "base.tar"},
				{Kind: EventArchiveData, Data: []byte("y")},
				{Kind: EventProgress, Done: 2},
				{Kind: EventProgress, Done: 2},
			},
			errAt: -1,
		},
		{name: "empty message", msgs: [][]byte{{}}, errAt: 0, wantErr: "empty CopyData message"},
		{name: "data before first archive", msgs: [][]byte{data("x")}, errAt: 0, wantErr: "data before the first archive"},
		{name: "unknown type", msgs: [][]byte{newArchive("base.tar", ""), {'x', 1}}, errAt: 1, wantErr: "unknown CopyData type byte 0x78"},
		{name: "manifest before archive", msgs: [][]byte{manifestStart}, errAt: 0, wantErr: "manifest before any archive"},
		{name: "second manifest", msgs: [][]byte{newArchive("base.tar", ""), manifestStart, manifestStart}, errAt: 2, wantErr: "second manifest"},
		{name: "manifest with payload", msgs: [][]byte{newArchive("base.tar", ""), {'m', 0}}, errAt: 1, wantErr: "manifest message has 1 unexpected bytes"},
		{name: "archive after manifest", msgs: [][]byte{newArchive("base.tar", ""), manifestStart, data("{"), newArchive("1.tar", "/x")}, errAt: 3, wantErr: "new archive after the manifest started"},
		{name: "name not terminated", msgs: [][]byte{[]byte("nbase.tar")}, errAt: 0, wantErr: "archive name is not NUL-terminated"},
		{name: "location not terminated", msgs: [][]byte{[]byte("nbase.tar\x00/x")}, errAt: 0, wantErr: "tablespace location is not NUL-terminated"},
		{name: "trailing bytes after location", msgs: [][]byte{[]byte("nbase.tar\x00\x00junk")}, errAt: 0, wantErr: "4 bytes after the tablespace location"},
		{name: "empty archive name", msgs: [][]byte{newArchive("", "")}, errAt: 0, wantErr: `invalid archive name ""`},
		{name: "hidden archive name", msgs: [][]byte{newArchive(".tar", "")}, errAt: 0, wantErr: "invalid archive name"},
		{name: "path archive name", msgs: [][]byte{newArchive("../base.tar", "")}, errAt: 0, wantErr: "invalid archive name"},
		{name: "backslash archive name", msgs: [][]byte{newArchive(`a\b.tar`, "")}, errAt: 0, wantErr: "invalid archive name"},
		{name: "archive twice", msgs: [][]byte{newArchive("base.tar", ""), newArchive("base.tar", "")}, errAt: 1, wantErr: `archive "base.tar" sent twice`},
		{name: "short progress", msgs: [][]byte{{'p', 0, 0, 0}}, errAt: 0, wantErr: "progress message has 3 bytes, want 8"},
		{name: "long progress", msgs: [][]byte{append(progress(1), 0)}, errAt: 0, wantErr: "progress message has 9 bytes"},
		{name: "negative progress", msgs: [][]byte{progress(1 << 63)}, errAt: 0, wantErr: "is negative"},
		{name: "progress backwards", msgs: [][]byte{progress(10), progress(9)}, errAt: 1, wantErr: "progress went back from 10 to 9 bytes"},
		{name: "end before any archive", msgs: [][]byte{progress(0)}, errAt: 1, wantErr: "COPY ended before any archive"},
		{name: "end with nothing", msgs: nil, errAt: 0, wantErr: "COPY ended before any archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Demux
			var got []Event
			var err error
			for i, m := range tt.msgs {
				var ev Event
				ev, err = d.Feed(m)
				if err != nil {
					assert.Equal(t, tt.errAt, i, "refused message %d: %v", i, err)
					break
				}
				got = append(got, ev)
			}
			if err == nil {
				err = d.End()
				if err != nil {
					assert.Equal(t, tt.errAt, len(tt.msgs), "End refused: %v", err)
				}
			}
			if tt.errAt < 0 {
				require.NoError(t, err)
				assert.Equal(t, tt.want, got)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
			assert.ErrorIs(t, err, ErrProtocol)
			// The failure sticks.
			_, again := d.Feed(newArchive("other.tar", ""))
			assert.Equal(t, err, again)
			assert.Equal(t, err, d.End())
		})
	}
}

// encodeMessages frames CopyData payloads for testdata and fuzz inputs:
// each is a 4-byte big-endian length and the payload.
func encodeMessages(msgs [][]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	return b
}

// decodeMessages undoes encodeMessages; a truncated tail becomes the last
// message, so that every input means something.
func decodeMessages(b []byte) [][]byte {
	var msgs [][]byte
	for len(b) > 0 {
		if len(b) < 4 {
			return append(msgs, b)
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return append(msgs, b)
		}
		msgs = append(msgs, b[:n])
		b = b[n:]
	}
	return msgs
}

// capturedSequences are the CopyData sequences the integration test
// captured from PostgreSQL 15 (regenerate with -update).
func capturedSequences(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "*.copydata"))
	require.NoError(t, err)
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		out[filepath.Base(f)] = b
	}
	return out
}

func TestDemuxCapturedSequences(t *testing.T) {
	seqs := capturedSequences(t)
	require.NotEmpty(t, seqs, "no testdata/*.copydata; run the integration test with -update")
	for name, b := range seqs {
		t.Run(name, func(t *testing.T) {
			var d Demux
			kinds := map[EventKind]int{}
			for i, m := range decodeMessages(b) {
				ev, err := d.Feed(m)
				require.NoError(t, err, "message %d", i)
				kinds[ev.Kind]++
			}
			require.NoError(t, d.End())
			assert.Positive(t, kinds[EventArchive])
			assert.Positive(t, kinds[EventArchiveData])
			assert.Positive(t, kinds[EventProgress])
		})
	}
}

func FuzzDemux(f *testing.F) {
	for _, b := range capturedSequences(f) {
		f.Add(b)
	}
	f.Add(encodeMessages([][]byte{newArchive("base.tar", ""), data("ab"), progress(2), manifestStart, data("{}")}))
	f.Add(encodeMessages([][]byte{newArchive("1.tar", "/x"), newArchive("base.tar", ""), {'m', 1}}))
	f.Add(encodeMessages([][]byte{progress(5), progress(4)}))
	f.Fuzz(func(t *testing.T, in []byte) {
		var d Demux
		inArchive, inManifest, failed := false, false, error(nil)
		var last int64
		names := map[string]bool{}
		for _, m := range decodeMessages(in) {
			ev, err := d.Feed(m)
			if failed != nil {
				if err != failed {
					t.Fatalf("after failure %v, Feed returned %v", failed, err)
				}
				continue
			}
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					t.Fatalf("error %v does not wrap ErrProtocol", err)
				}
				failed = err
				continue
			}
			switch ev.Kind {
			case EventArchive:
				if inManifest || names[ev.Name] || checkArchiveName(ev.Name) != nil {
					t.Fatalf("accepted archive %q (in manifest %v, seen %v)", ev.Name, inManifest, names[ev.Name])
				}
				names[ev.Name] = true
				inArchive = true
			case EventArchiveData:
				if !inArchive || inManifest || !bytes.Equal(ev.Data, m[1:]) {
					t.Fatal("archive data out of place or altered")
				}
			case EventManifest:
				if !inArchive || inManifest || len(m) != 1 {
					t.Fatal("manifest out of place")
				}
				inManifest = true
			case EventManifestData:
				if !inManifest || !bytes.Equal(ev.Data, m[1:]) {
					t.Fatal("manifest data out of place or altered")
				}
			case EventProgress:
				if ev.Done < last {
					t.Fatalf("progress went back from %d to %d", last, ev.Done)
				}
				last = ev.Done
			default:
				t.Fatalf("unknown event kind %v", ev.Kind)
			}
		}
		err := d.End()
		switch {
		case failed != nil:
			if err != failed {
				t.Fatalf("End after failure returned %v", err)
			}
		case inArchive:
			if err != nil {
				t.Fatalf("End refused a stream with an archive: %v", err)
			}
		default:
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("End accepted a stream without archives: %v", err)
			}
		}
	})
}
