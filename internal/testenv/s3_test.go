package testenv

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/require"
)

func TestS3ServerStopStartKeepsData(t *testing.T) {
	s := StartS3(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := s.Client(t)
	_, err := c.PutObject(ctx, s.Bucket, "a/b", bytes.NewReader([]byte("hello")), 5, minio.PutObjectOptions{})
	require.NoError(t, err)
	got, err := os.ReadFile(s.ObjectPath(s.Bucket, "a/b"))
	require.NoError(t, err)
	require.Equal(t, "hello", string(got), "object file on disk")

	s.Stop()
	require.False(t, s.Running())
	_, err = c.StatObject(ctx, s.Bucket, "a/b", minio.StatObjectOptions{})
	require.Error(t, err, "stat while the server is down")

	require.NoError(t, s.Start())
	require.True(t, s.Running())
	obj, err := c.GetObject(ctx, s.Bucket, "a/b", minio.GetObjectOptions{})
	require.NoError(t, err)
	defer obj.Close()
	data, err := io.ReadAll(obj)
	require.NoError(t, err)
	require.Equal(t, "hello", string(data))
}

func TestVersitygwMissingFailsWithHint(t *testing.T) {
	t.Setenv("BARNACLE_VERSITYGW", "/nonexistent/versitygw")
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartS3(ft)
	}()
	<-done
	require.Contains(t, ft.msg, "make versitygw")
}

// fatalRecorder records Fatalf instead of failing the test; it ends the
// goroutine that called it, as testing.T's Fatalf does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
