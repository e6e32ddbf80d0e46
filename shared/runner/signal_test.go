package runner

import (
	"context"
	"syscall"
	"testing"
	"time"
)

func TestSignalContext(t *testing.T) {
	codes := make(chan int, 1)
	orig := exit
	exit = func(code int) { codes <- code }
	t.Cleanup(func() { exit = orig })

	ctx, cancel := SignalContext(context.Background())
	defer cancel()

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context not cancelled by first signal")
	}
	if cause := context.Cause(ctx); cause == nil || cause == context.Canceled {
		t.Errorf("Cause = %v, want one naming the signal", cause)
	}
	select {
	case code := <-codes:
		t.Fatalf("exit(%d) after the first signal", code)
	default:
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-codes:
		if code != 130 {
			t.Errorf("exit code = %d, want 130", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second signal did not exit")
	}
}

func TestSignalContextCancel(t *testing.T) {
	ctx, cancel := SignalContext(context.Background())
	cancel()
	cancel() // idempotent
	<-ctx.Done()
}
