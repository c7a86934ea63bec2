package restore

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRenderRecoverySettings(t *testing.T) {
	yes, no := true, false
	const resets = "recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_name = ''\nrecovery_target_time = ''\nrecovery_target_xid = ''\n"
	tests := []struct {
		name    string
		r       Recovery
		want    string
		wantErr string
	}{
		{
			name: "end of WAL, single quotes in the command",
			r:    Recovery{RestoreCommand: `cp '/archive/wals/%f' "%p"`, Action: ActionPromote},
			want: `restore_command = 'cp ''/archive/wals/%f'' "%p"'` + "\n" + resets +
				"recovery_target_timeline = 'latest'\n",
		},
		{
			name: "path with spaces and a backslash",
			r: Recovery{
				RestoreCommand: `barnacle wal-fetch --config "/etc/my barnacle/b.yaml" %f %p`,
				Target:         Target{Kind: TargetLSN, LSN: lsn("16/B374D848")},
				Timeline:       TimelineTarget{Mode: TimelineExplicit, Timeline: 3},
				Action:         ActionPause,
				Inclusive:      &no,
			},
			want: `restore_command = 'barnacle wal-fetch --config "/etc/my barnacle/b.yaml" %f %p'` + "\n" +
				"recovery_target = ''\nrecovery_target_name = ''\nrecovery_target_time = ''\nrecovery_target_xid = ''\n" +
				"recovery_target_lsn = '16/B374D848'\nrecovery_target_timeline = '3'\nrecovery_target_action = 'pause'\nrecovery_target_inclusive = 'false'\n",
		},
		{
			name: "backslash doubled",
			r:    Recovery{RestoreCommand: `copy C:\wal\%f %p`, Target: Target{Kind: TargetImmediate}, Timeline: TimelineTarget{Mode: TimelineCurrent}, Action: ActionShutdown},
			want: `restore_command = 'copy C:\\wal\\%f %p'` + "\n" +
				"recovery_target_lsn = ''\nrecovery_target_name = ''\nrecovery_target_time = ''\nrecovery_target_xid = ''\n" +
				"recovery_target = 'immediate'\nrecovery_target_timeline = 'current'\nrecovery_target_action = 'shutdown'\n",
		},
		{
			name: "time in UTC with offset",
			r:    Recovery{RestoreCommand: "x %f %p", Target: Target{Kind: TargetTime, Time: at("10:00").Add(123456 * 1000)}, Action: ActionPromote, Inclusive: &yes},
			want: "restore_command = 'x %f %p'\n" +
				"recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_name = ''\nrecovery_target_xid = ''\n" +
				"recovery_target_time = '2026-11-25 10:00:00.123456+00:00'\nrecovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\nrecovery_target_inclusive = 'true'\n",
		},
		{
			name: "restore point name with a quote",
			r:    Recovery{RestoreCommand: "x", Target: Target{Kind: TargetName, Name: "before Bob's upgrade"}},
			want: "restore_command = 'x'\n" +
				"recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_time = ''\nrecovery_target_xid = ''\n" +
				"recovery_target_name = 'before Bob''s upgrade'\nrecovery_target_timeline = 'latest'\n",
		},
		{
			name: "xid",
			r:    Recovery{RestoreCommand: "x", Target: Target{Kind: TargetXID, XID: "4294967299"}, Action: ActionPromote},
			want: "restore_command = 'x'\n" +
				"recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_name = ''\nrecovery_target_time = ''\n" +
				"recovery_target_xid = '4294967299'\nrecovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\n",
		},
		{
			name: "recovery end command removes the prefetch spool",
			r:    Recovery{RestoreCommand: "x %f %p", RecoveryEndCommand: RemoveSpoolCommand("/opt/50%/barnacle")},
			want: "restore_command = 'x %f %p'\n" + resets +
				"recovery_target_timeline = 'latest'\nrecovery_end_command = '''/opt/50%%/barnacle'' wal-fetch --remove-spool'\n",
		},
		{name: "newline in recovery end command", r: Recovery{RestoreCommand: "x", RecoveryEndCommand: "rm\nx"}, wantErr: "recovery end command"},
		{name: "empty command", r: Recovery{RestoreCommand: "  "}, wantErr: "restore command is empty"},
		{name: "newline in command", r: Recovery{RestoreCommand: "cp %f %p\nrm -rf /"}, wantErr: "newline"},
		{name: "newline in name", r: Recovery{RestoreCommand: "x", Target: Target{Kind: TargetName, Name: "a\nb"}}, wantErr: "newline"},
		{name: "bad action", r: Recovery{RestoreCommand: "x", Action: "resume"}, wantErr: `target action "resume"`},
		{name: "bad xid", r: Recovery{RestoreCommand: "x", Target: Target{Kind: TargetXID, XID: "12a"}}, wantErr: "not a positive decimal"},
		{name: "inclusive with immediate", r: Recovery{RestoreCommand: "x", Target: Target{Kind: TargetImmediate}, Inclusive: &yes}, wantErr: "inclusive applies to"},
		{name: "timeline 0", r: Recovery{RestoreCommand: "x", Timeline: TimelineTarget{Mode: TimelineExplicit}}, wantErr: "timeline 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderRecoverySettings(tc.r)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			// Every block ends by emptying the source's cleanup command.
			assert.Equal(t, tc.want+"archive_cleanup_command = ''\n", got)
		})
	}
}
