package restore

import "testing"

func TestWALFetchCommand(t *testing.T) {
	got := WALFetchCommand("/usr/bin/barnacle", "/etc/my barnacle.yaml", "c1", "s3://b/p?endpoint=http://h:1&x=50%25")
	want := `/usr/bin/barnacle wal-fetch --config '/etc/my barnacle.yaml' --cluster-name c1 --archive-url 's3://b/p?endpoint=http://h:1&x=50%%25' %f %p`
	if got != want {
		t.Errorf("WALFetchCommand = %s\nwant %s", got, want)
	}
	if q := ShellQuote("it's"); q != `'it'\''s'` {
		t.Errorf("ShellQuote = %s", q)
	}
}
