package drill

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDropOutsideIncludes: includes naming paths outside the data
// directory are commented out, in postgresql.conf, postgresql.auto.conf
// and the files included from inside; includes inside stay.
func TestDropOutsideIncludes(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(filepath.Join(data, "conf.d"), 0o700))
	write := func(name, text string) {
		require.NoError(t, os.WriteFile(filepath.Join(data, name), []byte(text), 0o600))
	}
	write("postgresql.conf", "port = 5433\n"+
		"include 'local.conf'\n"+
		"INCLUDE_IF_EXISTS = '/etc/postgresql/host.conf'   # comment\n"+
		"include_dir conf.d\n"+
		"include '../escape.conf'\n"+
		"  include = '/it''s/outside.conf'\n"+
		"#include '/etc/commented.conf'\n"+
		"included_setting = on\n")
	write("local.conf", "include '/etc/from-local.conf'\nwork_mem = '4MB'\n")
	write("conf.d/10-a.conf", "include_dir '/etc/postgresql/conf.d'\n")
	write("postgresql.auto.conf", "include '/etc/auto.conf'\nrestore_command = 'x'\n")

	dropped, err := dropOutsideIncludes(data)
	require.NoError(t, err)
	assert.Equal(t, []string{
		"postgresql.conf: INCLUDE_IF_EXISTS = '/etc/postgresql/host.conf'   # comment",
		"postgresql.conf: include '../escape.conf'",
		"postgresql.conf: include = '/it''s/outside.conf'",
		"local.conf: include '/etc/from-local.conf'",
		"10-a.conf: include_dir '/etc/postgresql/conf.d'",
		"postgresql.auto.conf: include '/etc/auto.conf'",
	}, dropped)
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(data, name))
		require.NoError(t, err)
		return string(b)
	}
	const mark = "# barnacle drill: names a path outside the restored data directory: "
	assert.Equal(t, "port = 5433\n"+
		"include 'local.conf'\n"+
		mark+"INCLUDE_IF_EXISTS = '/etc/postgresql/host.conf'   # comment\n"+
		"include_dir conf.d\n"+
		mark+"include '../escape.conf'\n"+
		mark+"  include = '/it''s/outside.conf'\n"+
		"#include '/etc/commented.conf'\n"+
		"included_setting = on\n", read("postgresql.conf"))
	assert.Equal(t, mark+"include '/etc/from-local.conf'\nwork_mem = '4MB'\n", read("local.conf"))
	assert.Equal(t, mark+"include '/etc/auto.conf'\nrestore_command = 'x'\n", read("postgresql.auto.conf"))
}
