package fs

import "testing"

// Names the tests need to look at the files on disk.
const (
	XattrName  = xattrName
	TempPrefix = tempPrefix
)

// SetFsetxattrForTest replaces the call that stores checksums until the
// test ends, to simulate filesystems without user extended attributes.
func SetFsetxattrForTest(t *testing.T, f func(fd int, attr string, data []byte, flags int) error) {
	t.Helper()
	old := fsetxattr
	fsetxattr = f
	t.Cleanup(func() { fsetxattr = old })
}
