// Command fakesaas serves the fake SaaS invoices API of
// shared/testkit/fakesaas, the runnable example of an HTTP source
// (deploy/examples/invoices-http-source.yaml):
//
//	go run ./integration/cmd/fakesaas -addr 127.0.0.1:8089 -token demo-token -seed 500 -churn 2s
//
// It seeds -seed invoices, then (with -churn > 0) creates, updates and
// deletes a few every -churn, so a running pipeline has changes to carry.
// The token is read from -token or FAKESAAS_TOKEN; it is never printed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/oneway-sync/oneway/shared/testkit/fakesaas"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8089", "listen address")
	token := flag.String("token", os.Getenv("FAKESAAS_TOKEN"), "bearer token the API accepts (default $FAKESAAS_TOKEN)")
	seed := flag.Int("seed", 500, "invoices created at start")
	churn := flag.Duration("churn", 0, "make a few random changes this often (0: none)")
	coarse := flag.Bool("coarse", false, "stamp modified_at to the whole second")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *token == "" {
		fmt.Fprintln(os.Stderr, "fakesaas: a token is required (-token or FAKESAAS_TOKEN)")
		os.Exit(2)
	}
	api := fakesaas.New(*token, *coarse)
	for i := 1; i <= *seed; i++ {
		api.Create(invoice(i))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *addr, Handler: api, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if *churn <= 0 {
			return
		}
		t := time.NewTicker(*churn)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				change(api)
			}
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("fake SaaS API listening", "url", "http://"+*addr+"/invoices", "invoices", *seed)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("serve", "error", err)
		os.Exit(1)
	}
	<-done
}

func invoice(i int) fakesaas.Invoice {
	return fakesaas.Invoice{Customer: fmt.Sprintf("customer %d", i%97), Amount: fmt.Sprintf("%d.%02d", rand.IntN(5000), rand.IntN(100)), Status: "open"}
}

// change creates one invoice, updates two and deletes one, at random.
func change(api *fakesaas.Server) {
	ids := api.IDs()
	api.Create(invoice(len(ids) + 1))
	if len(ids) < 3 {
		return
	}
	for range 2 {
		api.Update(ids[rand.IntN(len(ids))], func(inv *fakesaas.Invoice) { inv.Status = "paid" })
	}
	api.Delete(ids[rand.IntN(len(ids))])
}
