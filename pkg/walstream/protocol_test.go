package walstream

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/wal"
)

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{in: "16MB", want: 16 << 20},
		{in: "1MB", want: 1 << 20},
		{in: "1GB", want: 1 << 30},
		{in: "512kB", want: 512 << 10},
		{in: "16777216", want: 16 << 20},
		{in: "8192B", want: 8192},
		{in: "2TB", want: 2 << 40},
		{in: "16 MB", want: 16 << 20},
		{in: "16mb", wantErr: true},
		{in: "MB", wantErr: true},
		{in: "", wantErr: true},
		{in: "-1MB", wantErr: true},
		{in: "1.5MB", wantErr: true},
		{in: "99999999999999999999MB", wantErr: true},
		{in: "17592186044416TB", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseByteSize(tc.in)
			if tc.wantErr {
				assert.Error(t, err, "got %d", got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"16MB", "1GB", "512kB", "8192", "1 B", "x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseByteSize(s)
		if err != nil && n != 0 {
			t.Fatalf("error with a value: %d, %v", n, err)
		}
	})
}

func TestParseReadReplicationSlot(t *testing.T) {
	b := func(s string) []byte { return []byte(s) }
	for _, tc := range []struct {
		name    string
		row     [][]byte
		want    slotInfo
		wantErr bool
	}{
		{name: "missing slot", row: [][]byte{nil, nil, nil}, want: slotInfo{}},
		{name: "physical with wal", row: [][]byte{b("physical"), b("0/3000148"), b("2")},
			want: slotInfo{Exists: true, Physical: true, RestartLSN: 0x3000148, RestartTimeline: 2}},
		{name: "physical without wal", row: [][]byte{b("physical"), nil, nil}, want: slotInfo{Exists: true, Physical: true}},
		{name: "logical", row: [][]byte{b("logical"), b("0/1"), b("1")}, want: slotInfo{Exists: true, RestartLSN: 1, RestartTimeline: 1}},
		{name: "bad lsn", row: [][]byte{b("physical"), b("zz"), b("1")}, wantErr: true},
		{name: "bad timeline", row: [][]byte{b("physical"), b("0/1"), b("0")}, wantErr: true},
		{name: "columns", row: [][]byte{b("physical")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseReadReplicationSlot(tc.row)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func FuzzParseReadReplicationSlot(f *testing.F) {
	f.Add("physical", "0/3000148", "1")
	f.Add("", "", "")
	f.Fuzz(func(t *testing.T, typ, lsn, tli string) {
		info, err := parseReadReplicationSlot([][]byte{[]byte(typ), []byte(lsn), []byte(tli)})
		if err == nil && !info.Exists {
			t.Fatal("a non-NULL slot_type means the slot exists")
		}
	})
}

func TestParseTimelineEnd(t *testing.T) {
	got, err := parseTimelineEnd([][]byte{[]byte("2"), []byte("0/AA0458")})
	require.NoError(t, err)
	assert.Equal(t, timelineEnd{Next: 2, Start: 0xAA0458}, got)
	for _, row := range [][][]byte{
		{[]byte("2")},
		{nil, []byte("0/1")},
		{[]byte("0"), []byte("0/1")},
		{[]byte("x"), []byte("0/1")},
		{[]byte("2"), []byte("1")},
	} {
		_, err := parseTimelineEnd(row)
		assert.Error(t, err, "%q", row)
	}
}

func FuzzParseTimelineEnd(f *testing.F) {
	f.Add("2", "0/AA0458")
	f.Add("4294967295", "FFFFFFFF/FFFFFFFF")
	f.Fuzz(func(t *testing.T, tli, lsn string) {
		te, err := parseTimelineEnd([][]byte{[]byte(tli), []byte(lsn)})
		if err == nil && te.Next == 0 {
			t.Fatal("timeline 0 accepted")
		}
	})
}

func TestStartReplicationSQL(t *testing.T) {
	for _, tc := range []struct {
		name  string
		slot  string
		start wal.LSN
		tli   wal.Timeline
		want  string
	}{
		{"slot", "barnacle", 0x3000000, 1, `START_REPLICATION SLOT "barnacle" PHYSICAL 0/3000000 TIMELINE 1`},
		{"slot starting with a digit", "1s", 0x1_00000000, 3, `START_REPLICATION SLOT "1s" PHYSICAL 1/0 TIMELINE 3`},
		{"no slot", "", 0xAA0458, 2, `START_REPLICATION PHYSICAL 0/AA0458 TIMELINE 2`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, startReplicationSQL(tc.slot, tc.start, tc.tli))
		})
	}
}

func TestReplicationConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		conn    string
		wantErr bool
	}{
		{name: "keyword/value without replication", conn: "host=127.0.0.1 port=5432 user=r"},
		{name: "keyword/value with replication", conn: "host=127.0.0.1 user=r replication=true"},
		{name: "url", conn: "postgres://r:p@127.0.0.1:5432/postgres?sslmode=disable"},
		{name: "url with replication on", conn: "postgres://r@127.0.0.1/postgres?replication=on"},
		{name: "logical", conn: "host=127.0.0.1 user=r replication=database", wantErr: true},
		{name: "replication off", conn: "host=127.0.0.1 user=r replication=false", wantErr: true},
		{name: "garbage", conn: "host='", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := replicationConfig(tc.conn)
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.True(t, isTrue(cfg.RuntimeParams["replication"]))
			assert.Equal(t, "barnacle", cfg.RuntimeParams["application_name"])
		})
	}
}
