package runner

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// exit is os.Exit, replaceable in tests.
var exit = os.Exit

// SignalContext returns a context cancelled on the first SIGINT or SIGTERM
// (signal.NotifyContext; context.Cause names the signal). A second signal
// exits the process at once with code 130, skipping graceful shutdown. The
// returned CancelFunc cancels the context and stops listening for signals.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	exitFn := exit
	go func() {
		count := 0
		for {
			select {
			case <-sigs:
				count++
				if count >= 2 {
					exitFn(130)
					return
				}
			case <-done:
				return
			}
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
			stop()
		})
	}
}
