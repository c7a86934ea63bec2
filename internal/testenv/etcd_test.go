package testenv

import (
	"context"
	"testing"
	"time"
)

func TestEtcdRestartKeepsData(t *testing.T) {
	e := StartEtcd(t)
	e.Put(t, "k", "v1")
	if err := e.Restart(100 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client(t).Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
		t.Fatalf("after restart got %v, want k=v1", resp.Kvs)
	}
}
