package telemetry

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Values of the outcome label of Metrics.EventsProcessed.
const (
	OutcomeApplied      = "applied"
	OutcomeSkipped      = "skipped"
	OutcomeDeadLettered = "dead_lettered"
	OutcomePublished    = "published"
	OutcomeRetried      = "retried"
)

// Metrics holds every Prometheus metric oneway exports; all of them are
// declared in this file. Names are in base units, counters end in _total and
// labels are low-cardinality (never keys, ids or error strings). The metrics
// are registered on Registry, which is private to this Metrics (never the
// global registry) and also carries the Go and process collectors.
type Metrics struct {
	Registry *prometheus.Registry

	// EventsProcessed counts events by what happened to them; outcome is one
	// of the Outcome* constants.
	EventsProcessed *prometheus.CounterVec // {service,pipeline,outcome}
	// EndToEndLag is the time from the source change to its application on
	// the target, for the last applied event.
	EndToEndLag *prometheus.GaugeVec // {pipeline,target}
	// ConsumerPending is the number of messages a target's consumer has not
	// yet acknowledged.
	ConsumerPending *prometheus.GaugeVec // {pipeline,target}
	// OperationDuration times internal operations (e.g. "publish",
	// "apply_batch", "checkpoint"); keep the operation set small and fixed.
	OperationDuration *prometheus.HistogramVec // {operation}
	// BackfillRows counts rows read by backfills.
	BackfillRows *prometheus.CounterVec // {pipeline}
	// ReaderPosition is the source watermark the reader has published up to,
	// as a Unix time in seconds.
	ReaderPosition *prometheus.GaugeVec // {pipeline}
	// DeadLetters counts events sent to the dead-letter stream.
	DeadLetters *prometheus.CounterVec // {pipeline,target}
	// DifferDecisions counts the differ's decisions per key, by action
	// (insert, update, delete, orphan_delete, orphan_report, orphan_kept,
	// kept_deleted, delete_skipped, unchanged, stuck, held, in_flight).
	DifferDecisions *prometheus.CounterVec // {pipeline,target,action}
	// BreakerHeld is 1 while the mass-delete breaker holds a target's
	// deletes, else 0.
	BreakerHeld *prometheus.GaugeVec // {pipeline,target}
	// BuildInfo is always 1; its labels carry the build.
	BuildInfo *prometheus.GaugeVec // {version,commit,go_version}
	// CDCSlotLag is the WAL between the source's current position and what
	// the cdc pattern's replication slot has confirmed, in bytes.
	CDCSlotLag *prometheus.GaugeVec // {pipeline}
	// CDCSlotRetained is the WAL the slot keeps on the source's disk, in
	// bytes; the WAL budget applies to it.
	CDCSlotRetained *prometheus.GaugeVec // {pipeline}
	// CDCSlotOverBudget is 1 while the slot retains more WAL than its
	// budget (source.capture.wal_budget), else 0.
	CDCSlotOverBudget *prometheus.GaugeVec // {pipeline}
}

// NewMetrics creates and registers every metric on a fresh registry and sets
// oneway_build_info{version,commit,go_version} to 1. It can be called more
// than once (e.g. in tests): each call has its own registry.
func NewMetrics(version, commit string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		EventsProcessed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oneway_events_processed_total",
			Help: "Events processed, by service, pipeline and outcome (applied, skipped, dead_lettered, published, retried).",
		}, []string{"service", "pipeline", "outcome"}),
		EndToEndLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_end_to_end_lag_seconds",
			Help: "Seconds between a change at the source and its application on the target, for the last applied event.",
		}, []string{"pipeline", "target"}),
		ConsumerPending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_consumer_pending_messages",
			Help: "Messages not yet acknowledged by a target's consumer.",
		}, []string{"pipeline", "target"}),
		OperationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "oneway_operation_duration_seconds",
			Help:    "Duration of internal operations in seconds, by operation.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"operation"}),
		BackfillRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oneway_backfill_rows_total",
			Help: "Rows read by backfills, by pipeline.",
		}, []string{"pipeline"}),
		ReaderPosition: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_reader_watermark_unixtime_seconds",
			Help: "Source watermark the reader has published up to, as a Unix time in seconds.",
		}, []string{"pipeline"}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oneway_dead_letters_total",
			Help: "Events sent to the dead-letter stream, by pipeline and target.",
		}, []string{"pipeline", "target"}),
		DifferDecisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "oneway_differ_decisions_total",
			Help: "Keys the differ decided on, by pipeline, target and action (insert, update, delete, orphan_delete, orphan_report, orphan_kept, kept_deleted, delete_skipped, unchanged, stuck, held).",
		}, []string{"pipeline", "target", "action"}),
		BreakerHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_breaker_held",
			Help: "1 while the mass-delete breaker holds a target's deletes until `oneway approve`, else 0.",
		}, []string{"pipeline", "target"}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_build_info",
			Help: "Always 1; labels describe the running build.",
		}, []string{"version", "commit", "go_version"}),
		CDCSlotLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_cdc_slot_lag_bytes",
			Help: "WAL bytes between the source's current position and the position the cdc replication slot confirmed.",
		}, []string{"pipeline"}),
		CDCSlotRetained: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_cdc_slot_retained_bytes",
			Help: "WAL bytes the cdc replication slot keeps on the source's disk.",
		}, []string{"pipeline"}),
		CDCSlotOverBudget: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "oneway_cdc_slot_over_budget",
			Help: "1 while the cdc replication slot retains more WAL than source.capture.wal_budget, else 0.",
		}, []string{"pipeline"}),
	}
	m.Registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.EventsProcessed,
		m.EndToEndLag,
		m.ConsumerPending,
		m.OperationDuration,
		m.BackfillRows,
		m.ReaderPosition,
		m.DeadLetters,
		m.DifferDecisions,
		m.BreakerHeld,
		m.BuildInfo,
		m.CDCSlotLag,
		m.CDCSlotRetained,
		m.CDCSlotOverBudget,
	)
	m.BuildInfo.WithLabelValues(version, commit, runtime.Version()).Set(1)
	return m
}
