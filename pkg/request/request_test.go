package request

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/barnacle-pg/barnacle/pkg/restore"
)

func TestKeys(t *testing.T) {
	k := Keys{Prefix: "barnacle/stolon-cluster/"}
	assert.Equal(t, "barnacle/stolon-cluster/requests/backup/", k.Requests(KindBackup))
	assert.Equal(t, "barnacle/stolon-cluster/requests/restore/x", k.Request(KindRestore, "x"))
	assert.Equal(t, "barnacle/stolon-cluster/status/backup/", k.Statuses(KindBackup))
	assert.Equal(t, "barnacle/stolon-cluster/status/restore/x", k.Status(KindRestore, "x"))
	assert.Equal(t, "barnacle/stolon-cluster/claimed/backup/", k.Claims(KindBackup))
	assert.Equal(t, "barnacle/stolon-cluster/claimed/restore/x", k.Claim(KindRestore, "x"))
}

func TestParseBackup(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		from        string // "" = rejected
		err         string
	}{
		{"master", `{"from":"master","label":"nightly"}`, "master", ""},
		{"empty from runs on the master", `{}`, "master", ""},
		{"any runs on the master", `{"from":"any"}`, "master", ""},
		{"standby", `{"from":"standby"}`, "standby", ""},
		{"requested by an agent", `{"from":"any","requestedBy":"agent-keeper1","requestedAt":"2026-11-25T10:00:00Z"}`, "master", ""},
		{"trailing newline", "{\"from\":\"master\"}\n  ", "master", ""},
		{"unknown from", `{"from":"elsewhere"}`, "", `unknown from "elsewhere": use "master", "standby" or "any"`},
		{"unknown field", `{"from":"master","extra":1}`, "", `malformed request: json: unknown field "extra"`},
		{"not an object", `[]`, "", "malformed request"},
		{"cut short", `{"from":`, "", "malformed request"},
		{"empty", ``, "", "malformed request"},
		{"second object", `{"from":"master"} {"x":1}`, "", "malformed request: trailing data after the JSON object"},
		{"trailing garbage", `{"from":"master"}x`, "", "malformed request: trailing data after the JSON object"},
		{"second value", `{"from":"master"} 1`, "", "malformed request: trailing data after the JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := ParseBackup([]byte(tc.value))
			if tc.from == "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.from, req.From)
		})
	}
}

// The request the leader writes after a gap is one the parser accepts: one
// type for writer and reader.
func TestGapBackupParses(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	v, err := json.Marshal(GapBackup("agent-keeper1", "after WAL gap 0/3000000..0/9000000", now))
	require.NoError(t, err)
	req, err := ParseBackup(v)
	require.NoError(t, err, "request %s", v)
	assert.Equal(t, "master", req.From, `"any" runs on the master`)
	assert.Equal(t, "agent-keeper1", req.RequestedBy)
	assert.True(t, now.Equal(req.RequestedAt))

	// A user's request has neither field, and says so by omitting them.
	v, err = json.Marshal(Backup{From: "standby", Label: "nightly"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"from":"standby","label":"nightly"}`, string(v))
}

func TestParseRestore(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		err         string // "" = accepted
	}{
		{"full", `{"keeper":"keeper1","backup":"latest","targetDir":"/restore/pitr","target":{"time":"2026-11-24T17:00:00Z"},"targetTimeline":"latest","targetAction":"pause","force":false}`, ""},
		{"trailing newline", "{\"keeper\":\"k\"}\n ", ""},
		{"unknown field", `{"keeper":"k","dataOnly":true,"unknown":1}`, `malformed request: json: unknown field "unknown"`},
		{"second object", `{"keeper":"k"} {"x":1}`, "malformed request: trailing data after the JSON object"},
		{"trailing garbage", `{"keeper":"k"}x`, "malformed request: trailing data after the JSON object"},
		{"cut short", `{"keeper":`, "malformed request"},
		{"null", `null`, ""}, // an empty request: the leader rejects it for naming no keeper
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRestore([]byte(tc.value))
			if tc.err == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
}

func TestRestoreValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  Restore
		err  string // "" = valid
		want func(t *testing.T, s RestoreSpec)
	}{
		{name: "end of wal", req: Restore{Keeper: "k", TargetDir: "/r/x"}, want: func(t *testing.T, s RestoreSpec) {
			assert.Equal(t, restore.TargetEnd, s.Target.Kind)
			assert.Nil(t, s.Inclusive)
		}},
		{name: "time in PostgreSQL's form", req: Restore{Target: RestoreTarget{Time: "2026-11-25 10:00:00+00"}}, want: func(t *testing.T, s RestoreSpec) {
			assert.Equal(t, restore.TargetTime, s.Target.Kind)
			assert.True(t, s.Target.Time.Equal(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)))
		}},
		{name: "exclusive lsn", req: Restore{Target: RestoreTarget{LSN: "0/3000060"}, TargetExclusive: true}, want: func(t *testing.T, s RestoreSpec) {
			require.NotNil(t, s.Inclusive)
			assert.False(t, *s.Inclusive)
		}},
		{name: "timeline", req: Restore{TargetTimeline: "2"}, want: func(t *testing.T, s RestoreSpec) {
			assert.Equal(t, "2", s.Timeline.String())
		}},
		{name: "tablespaces", req: Restore{TablespaceMap: map[string]string{"16385": "/r/ts"}}, want: func(t *testing.T, s RestoreSpec) {
			assert.Equal(t, map[uint32]string{16385: "/r/ts"}, s.Tablespaces)
		}},
		{name: "two targets", req: Restore{Target: RestoreTarget{Name: "a", Immediate: true}}, err: "target.name and target.immediate are given together"},
		{name: "time without zone", req: Restore{Target: RestoreTarget{Time: "2026-11-25 10:00:00"}}, err: "target.time"},
		{name: "bad lsn", req: Restore{Target: RestoreTarget{LSN: "3000060"}}, err: `target.lsn "3000060"`},
		{name: "exclusive name", req: Restore{Target: RestoreTarget{Name: "a"}, TargetExclusive: true}, err: "targetExclusive applies to a time, LSN or xid target"},
		{name: "bad timeline", req: Restore{TargetTimeline: "sideways"}, err: "sideways"},
		{name: "oid zero", req: Restore{TablespaceMap: map[string]string{"0": "/r/y"}}, err: `tablespaceMap key "0"`},
		{name: "oid not a number", req: Restore{TablespaceMap: map[string]string{"pg_default": "/r/y"}}, err: `tablespaceMap key "pg_default"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.req.Validate()
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			tc.want(t, s)
		})
	}
}

// FuzzParseBackup: any bytes under requests/backup/ give a request that
// names a known place to run, or an error that says what to change; never
// a panic.
func FuzzParseBackup(f *testing.F) {
	for _, s := range []string{
		`{"from":"master","label":"nightly"}`, `{"from":"standby"}`, `{"from":"any","label":"x"}`, `{}`,
		`{"from":"elsewhere"}`, `{"from":"master","extra":1}`, `{"from":`, `null`, `[]`, `{"label":"\u0000"}`,
		`{"from":"master","requestedBy":"agent-keeper1","requestedAt":"2026-11-25T10:00:00Z"}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		req, err := ParseBackup(value)
		if err != nil {
			if !strings.Contains(err.Error(), "malformed request") && !strings.Contains(err.Error(), "unknown from") {
				t.Fatalf("error does not say what to change: %v", err)
			}
			return
		}
		if req.From != "master" && req.From != "standby" {
			t.Fatalf("accepted from %q", req.From)
		}
	})
}

func TestParseDrill(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        Drill
		err         string // "" = accepted
	}{
		{"any agent", `{}`, Drill{}, ""},
		{"named agent", `{"agent":"keeper1","requestedBy":"ops@host","requestedAt":"2026-11-25T10:00:00Z"}`,
			Drill{Agent: "keeper1", RequestedBy: "ops@host", RequestedAt: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}, ""},
		{"unknown field", `{"agent":"a","node":"b"}`, Drill{}, `malformed request: json: unknown field "node"`},
		{"agent with a slash", `{"agent":"a/b"}`, Drill{}, `agent "a/b": name an agent as barnacle status lists it`},
		{"agent with blanks", `{"agent":" a"}`, Drill{}, `agent " a": name an agent`},
		{"requestedBy too long", `{"requestedBy":"` + strings.Repeat("x", 300) + `"}`, Drill{}, "requestedBy is 300 bytes long: use at most 256"},
		{"wrong type", `{"agent":1}`, Drill{}, "malformed request"},
		{"two objects", `{} {}`, Drill{}, "trailing data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseDrill([]byte(tc.value))
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	k := Keys{Prefix: "barnacle/c/"}
	assert.Equal(t, "barnacle/c/requests/drill/x", k.Request(KindDrill, "x"))
	assert.Equal(t, "barnacle/c/status/drill/x", k.Status(KindDrill, "x"))
	assert.Equal(t, "barnacle/c/claimed/drill/x", k.Claim(KindDrill, "x"))
}
