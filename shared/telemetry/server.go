package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// shutdownGrace bounds the graceful shutdown done by Run.
const shutdownGrace = 5 * time.Second

// Server serves /healthz, /readyz and /metrics (plus anything mounted with
// Handle) on one address.
type Server struct {
	addr string
	log  *slog.Logger
	mux  *http.ServeMux
	srv  *http.Server

	mu      sync.Mutex
	ln      net.Listener
	started bool
	served  chan error // receives Serve's error (nil after Shutdown), then closed
}

// NewServer returns a server for addr (host:port; ":0" picks a free port).
// /healthz always answers 200; /readyz answers from h (a nil h is always
// ready); /metrics serves m.Registry and is not mounted when m is nil. A nil
// log discards.
func NewServer(addr string, m *Metrics, h *Health, log *slog.Logger) *Server {
	if h == nil {
		h = NewHealth()
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/readyz", readyHandler(h))
	if m != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
			Registry:      m.Registry,
			ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	return &Server{
		addr: addr,
		log:  log,
		mux:  mux,
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       60 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
}

func readyHandler(h *Health) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ok, pending := h.IsReady()
		if ok {
			_, _ = io.WriteString(w, "ready\n")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "not ready:\n"+strings.Join(pending, "\n")+"\n")
	})
}

// Handle mounts an extra handler (http.ServeMux pattern syntax). Call it
// before Start.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
}

// Start listens on the address, so a bad or busy address fails at once with
// an error naming it, then serves in a background goroutine until Shutdown.
// It can be called only once.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return fmt.Errorf("telemetry: server on %s already started", s.addr)
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("telemetry: listen on %s: %w", s.addr, err)
	}
	s.ln = ln
	s.started = true
	s.served = make(chan error, 1)
	go func() {
		defer close(s.served)
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil {
			s.log.Error("telemetry server failed", slog.String("addr", ln.Addr().String()), slog.Any("error", err))
		}
		s.served <- err
	}()
	s.log.Info("telemetry server listening", slog.String("addr", ln.Addr().String()))
	return nil
}

// Addr returns the bound address once started (the real port when the
// address was ":0"), else the configured address.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.addr
}

// Shutdown stops accepting connections and waits for in-flight requests
// until ctx ends (see http.Server.Shutdown). It is a no-op before Start.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		return nil
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: shut down server on %s: %w", s.Addr(), err)
	}
	return nil
}

// Name returns "telemetry_server", so a Server can be used as a
// runner.Component.
func (s *Server) Name() string { return "telemetry_server" }

// Run makes the server a runner.Component: it starts the server unless Start
// was already called, serves until ctx ends, then shuts down gracefully
// (bounded by 5s). It returns an error if the server cannot listen or stops
// serving on its own.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if !started {
		if err := s.Start(); err != nil {
			return err
		}
	}
	s.mu.Lock()
	served := s.served
	s.mu.Unlock()
	select {
	case err := <-served:
		if err == nil {
			err = errors.New("stopped serving")
		}
		return fmt.Errorf("telemetry: server on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	return s.Shutdown(sctx)
}
