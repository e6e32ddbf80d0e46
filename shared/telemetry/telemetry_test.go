package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

func startServer(t *testing.T, m *Metrics, h *Health) *Server {
	t.Helper()
	s := NewServer("127.0.0.1:0", m, h, slog.New(slog.DiscardHandler))
	if err := s.Start(); err != nil {
		t.Fatalf("Start() error = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() error = %v", err)
		}
	})
	return s
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestServerHealth(t *testing.T) {
	h := NewHealth()
	readerReady, readerNotReady := h.Register("reader")
	writerReady, _ := h.Register("writer")
	s := startServer(t, NewMetrics("v1", "abc"), h)
	base := "http://" + s.Addr()

	tests := []struct {
		name       string
		do         func()
		path       string
		wantStatus int
		wantBody   []string
		notInBody  []string
	}{
		{name: "healthz is 200 while not ready", path: "/healthz", wantStatus: 200},
		{name: "readyz lists every not-ready component", path: "/readyz", wantStatus: 503,
			wantBody: []string{"reader", "writer"}},
		{name: "readyz lists only what is still not ready", do: readerReady, path: "/readyz", wantStatus: 503,
			wantBody: []string{"writer"}, notInBody: []string{"reader"}},
		{name: "readyz is 200 once all are ready", do: writerReady, path: "/readyz", wantStatus: 200},
		{name: "readyz is 503 again after notReady", do: readerNotReady, path: "/readyz", wantStatus: 503,
			wantBody: []string{"reader"}, notInBody: []string{"writer"}},
		{name: "healthz stays 200", path: "/healthz", wantStatus: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.do != nil {
				tt.do()
			}
			status, body := get(t, base+tt.path)
			if status != tt.wantStatus {
				t.Errorf("GET %s = %d, want %d (body %q)", tt.path, status, tt.wantStatus, body)
			}
			for _, s := range tt.wantBody {
				if !strings.Contains(body, s) {
					t.Errorf("body %q, want it to contain %q", body, s)
				}
			}
			for _, s := range tt.notInBody {
				if strings.Contains(body, s) {
					t.Errorf("body %q, want it not to contain %q", body, s)
				}
			}
		})
	}
}

func TestHealthIsReady(t *testing.T) {
	h := NewHealth()
	if ok, pending := h.IsReady(); !ok || len(pending) != 0 {
		t.Fatalf("empty IsReady() = %v, %v; want true, none", ok, pending)
	}
	bReady, _ := h.Register("b")
	aReady, _ := h.Register("a")
	if ok, pending := h.IsReady(); ok || strings.Join(pending, ",") != "a,b" {
		t.Fatalf("IsReady() = %v, %v; want false, [a b]", ok, pending)
	}
	aReady()
	bReady()
	if ok, _ := h.IsReady(); !ok {
		t.Fatal("IsReady() = false after all ready")
	}
}

func TestServerMetrics(t *testing.T) {
	m := NewMetrics("v1.2.3", "abc123")
	m.EventsProcessed.WithLabelValues("reader", "orders", OutcomePublished).Add(3)
	m.DeadLetters.WithLabelValues("orders", "warehouse").Inc()
	s := startServer(t, m, nil)

	status, body := get(t, "http://"+s.Addr()+"/metrics")
	if status != 200 {
		t.Fatalf("GET /metrics = %d", status)
	}
	for _, want := range []string{
		`oneway_build_info{commit="abc123",go_version="go`,
		`",version="v1.2.3"} 1`,
		`oneway_events_processed_total{outcome="published",pipeline="orders",service="reader"} 3`,
		`oneway_dead_letters_total{pipeline="orders",target="warehouse"} 1`,
		"go_goroutines ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics does not contain %q", want)
		}
	}
}

// TestMetricsLint checks names, units and help of every oneway metric with
// Prometheus' own linter.
func TestMetricsLint(t *testing.T) {
	m := NewMetrics("v1", "abc")
	NewMetrics("v1", "abc") // a second set must not clash with the first
	m.EventsProcessed.WithLabelValues("writer", "p", OutcomeApplied).Inc()
	m.EndToEndLag.WithLabelValues("p", "t").Set(1)
	m.ConsumerPending.WithLabelValues("p", "t").Set(1)
	m.OperationDuration.WithLabelValues("apply_batch").Observe(0.1)
	m.BackfillRows.WithLabelValues("p").Inc()
	m.ReaderPosition.WithLabelValues("p").Set(1)
	m.DeadLetters.WithLabelValues("p", "t").Inc()

	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	seen := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "oneway_") {
			seen++
		}
	}
	if seen != 8 {
		t.Errorf("gathered %d oneway_ metrics, want 8", seen)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatalf("Lint() error = %v", err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "oneway_") {
			t.Errorf("lint %s: %s", p.Metric, p.Text)
		}
	}
}

func TestServerStartAddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()

	s := NewServer(addr, nil, nil, nil)
	err = s.Start()
	if err == nil {
		_ = s.Shutdown(context.Background())
		t.Fatalf("Start() on busy %s = nil, want error", addr)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("Start() error = %q, want it to name %s", err, addr)
	}
}

func TestServerHandleAndRun(t *testing.T) {
	s := NewServer("127.0.0.1:0", nil, nil, nil)
	s.Handle("/debug/extra", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "extra")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	// Run starts the server itself; poll until it has bound an address.
	var addr string
	waitFor(t, func() bool {
		addr = s.Addr()
		return addr != "127.0.0.1:0"
	})
	if status, body := get(t, "http://"+addr+"/debug/extra"); status != 200 || body != "extra" {
		t.Errorf("GET /debug/extra = %d %q", status, body)
	}
	if status, _ := get(t, "http://"+addr+"/metrics"); status != http.StatusNotFound {
		t.Errorf("GET /metrics without Metrics = %d, want 404", status)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run() = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("server still serving after Run returned")
	}
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		<-tick.C
	}
}
