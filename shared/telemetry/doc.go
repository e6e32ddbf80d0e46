// Package telemetry is the observability every oneway binary shares: a slog
// logger, the Prometheus metrics oneway exports, liveness/readiness tracking
// and the HTTP server that exposes /healthz, /readyz and /metrics.
package telemetry
