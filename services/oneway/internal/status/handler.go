package status

import (
	_ "embed"
	"encoding/json"
	"log/slog"
	"net/http"
)

//go:embed page.html
var page []byte

// Mount serves the status page at "/" and its data at "/status.json" on
// mux (the admin server's).
func Mount(mux interface {
	Handle(pattern string, h http.Handler)
}, c *Collector, log *slog.Logger) {
	mux.Handle("/status.json", JSONHandler(c, log))
	mux.Handle("/{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(page)
	}))
}

// PipelinePath is where MountPipeline serves the page of one pipeline of
// several (a config listing several tables): its data is at
// PipelinePath(name)+"status.json".
func PipelinePath(name string) string { return "/pipelines/" + name + "/" }

// MountPipeline serves the status page of pipeline name, one of several
// that one process runs, at PipelinePath(name) and its data beside it.
func MountPipeline(mux interface {
	Handle(pattern string, h http.Handler)
}, name string, c *Collector, log *slog.Logger) {
	mux.Handle(PipelinePath(name)+"status.json", JSONHandler(c, log))
	mux.Handle(PipelinePath(name)+"{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(page)
	}))
}

// JSONHandler serves a fresh Snapshot as JSON; 503 with the error when
// JetStream cannot be read.
func JSONHandler(c *Collector, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		s, err := c.Collect(r.Context())
		if err != nil {
			log.Warn("status unavailable", "error", err)
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		_ = json.NewEncoder(w).Encode(s)
	})
}
