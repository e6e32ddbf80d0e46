package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	onewayv1 "github.com/oneway-sync/oneway/proto/oneway/v1"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/event"
	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
)

// writerScaling measures writer scale-out against a slow target: an HTTP
// API on 127.0.0.1 that takes 5 ms per request. The stream holds `changes`
// changes to distinct keys; 1, 2 and 4 writer processes (one worker, one
// request in flight each) drain it. The reference is the 1-writer rate.
func writerScaling(ctx context.Context, bin, base string, changes int) []result {
	dir, err := os.MkdirTemp("", "oneway-scaling-")
	must(err)
	defer os.RemoveAll(dir)

	var served atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond) // the slow target being modelled
		served.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	ns, err := natsembed.Start(natsembed.Options{StoreDir: filepath.Join(dir, "nats")})
	must(err)
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	must(err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	must(err)
	_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: bus.StreamName("scaling"), Subjects: bus.StreamSubjects("scaling"),
		Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, MaxBytes: 1 << 30, MaxAge: time.Hour, Duplicates: 2 * time.Minute})
	must(err)
	cols := []*onewayv1.Column{{Name: "id", Type: "bigint", Key: true}, {Name: "v", Type: "text"}}
	const perMsg = 10
	for m := 0; m < changes/perMsg; m++ {
		b := &onewayv1.Batch{SchemaVersion: event.SchemaVersion, Pipeline: "scaling", Origin: "source",
			Pattern: onewayv1.CapturePattern_CAPTURE_PATTERN_WATERMARK, Table: "public.t", Columns: cols}
		for i := 0; i < perMsg; i++ {
			row := event.PackRow([][]byte{[]byte(strconv.Itoa(m*perMsg + i)), []byte("value")})
			b.Changes = append(b.Changes, &onewayv1.Change{Op: onewayv1.Op_OP_UPSERT, Row: row, Hash: event.RowHash(row)})
		}
		data, err := event.Encode(b)
		must(err)
		_, err = js.Publish(ctx, bus.SourceSubject("scaling"), data)
		must(err)
	}

	ledger := dbURL(base, "oneway_bench_ledger")
	var out []result
	var oneRate float64
	for _, writers := range []int{1, 2, 4} {
		must(exec1(ctx, base, "DROP DATABASE IF EXISTS oneway_bench_ledger WITH (FORCE)", "CREATE DATABASE oneway_bench_ledger"))
		_ = js.DeleteConsumer(ctx, bus.StreamName("scaling"), bus.WriterConsumer("scaling", "api"))
		served.Store(0)
		cfg := filepath.Join(dir, fmt.Sprintf("scaling-%d.yaml", writers))
		must(os.WriteFile(cfg, []byte(fmt.Sprintf(`pipeline: scaling
nats: {url: %q}
source: {kind: postgres, url: "postgres://unused/db", table: public.t, key: [id], capture: {column: ts}}
targets:
  - name: api
    kind: http
    url: "http://%s/t/{{.Key}}"
    ledger_url: %q
    writer: {workers: 1, fetch_batch: 1}
    http: {concurrency: 1}
`, ns.ClientURL(), ln.Addr(), ledger)), 0o600))
		log.Printf("writer_scaling: %d writer(s) …", writers)
		start := time.Now()
		var procs []*exec.Cmd
		for i := 0; i < writers; i++ {
			p := exec.CommandContext(ctx, bin, "run", "--config", cfg, "--log-level", "warn")
			p.Stdout, p.Stderr = os.Stderr, os.Stderr
			must(p.Start())
			procs = append(procs, p)
		}
		for served.Load() < int64(changes) {
			time.Sleep(20 * time.Millisecond)
			if time.Since(start) > 5*time.Minute {
				log.Fatalf("writer_scaling: only %d of %d changes applied after 5 minutes", served.Load(), changes)
			}
		}
		sec := time.Since(start).Seconds()
		for _, p := range procs {
			_ = p.Process.Signal(os.Interrupt)
			_ = p.Wait()
		}
		rate := float64(changes) / sec
		if writers == 1 {
			oneRate = rate
		}
		out = append(out, result{Workload: fmt.Sprintf("writer_scaling_%d", writers), Rows: changes, Seconds: round(sec),
			RowsPerS: round(rate), ReferenceSeconds: round(float64(changes) / oneRate), ReferenceRowsPerS: round(oneRate),
			Ratio: round(rate / oneRate), Commit: commit(), At: time.Now().UTC().Format(time.RFC3339)})
	}
	_ = exec1(ctx, base, "DROP DATABASE IF EXISTS oneway_bench_ledger WITH (FORCE)")
	return out
}
