package agent

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"

	"github.com/barnacle-pg/barnacle/pkg/config"
)

func TestHint(t *testing.T) {
	cfg := config.Default()
	cfg.PGUser = "barnacle"
	cases := []struct {
		code, want string
	}{
		{"42501", "ALTER ROLE barnacle REPLICATION"},
		{"28000", "host replication barnacle"},
		{"28P01", "pg-password-file"},
		{"53400", "max_wal_senders"},
		{"55006", "slot barnacle is in use"},
		{"58P01", ""},
	}
	for _, tc := range cases {
		t.Run(tc.code, func(t *testing.T) {
			err := fmt.Errorf("connect: %w", &pgconn.PgError{Code: tc.code})
			got := hint(err, cfg)
			if tc.want == "" {
				assert.Empty(t, got)
				return
			}
			assert.Contains(t, got, tc.want)
		})
	}
	assert.Empty(t, hint(errors.New("connection refused"), cfg))
}
