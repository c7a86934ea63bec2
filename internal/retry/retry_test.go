package retry

import (
	"context"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	cases := []struct {
		n        int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{4, 400 * time.Millisecond, 800 * time.Millisecond},
		{20, 2500 * time.Millisecond, 5 * time.Second},
	}
	for _, tc := range cases {
		for range 100 {
			if d := Backoff(tc.n, 100*time.Millisecond, 5*time.Second); d < tc.min || d > tc.max {
				t.Fatalf("Backoff(%d) = %s, want within [%s, %s]", tc.n, d, tc.min, tc.max)
			}
		}
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	Sleep(ctx, time.Hour)
	if time.Since(start) > time.Second {
		t.Fatal("Sleep did not return when the context ended")
	}
}
