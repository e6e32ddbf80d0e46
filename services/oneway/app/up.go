package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	differapp "github.com/oneway-sync/oneway/services/differ/app"
	"github.com/oneway-sync/oneway/services/oneway/internal/status"
	readerapp "github.com/oneway-sync/oneway/services/reader/app"
	stagerapp "github.com/oneway-sync/oneway/services/stager/app"
	writerapp "github.com/oneway-sync/oneway/services/writer/app"
	"github.com/oneway-sync/oneway/shared/bus"
	"github.com/oneway-sync/oneway/shared/cli"
	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/natsbus"
	"github.com/oneway-sync/oneway/shared/natsbus/natsembed"
	"github.com/oneway-sync/oneway/shared/procs"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage"
	"github.com/oneway-sync/oneway/shared/stage/stagedb"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

type upOptions struct {
	cli.Flags
	dataDir        string
	adminAddr      string
	natsPort       int
	exitWhenSynced bool
	stopTimeout    time.Duration
	cpuProfile     string
	demoEvery      time.Duration
	demoBurst      int

	// Set by the demo (see runDemo): components run beside the pipeline's,
	// the status page's direct comparison, and a call once the admin
	// server listens (with the status page's URL, "" when off).
	extra      []runner.Component
	compare    func(context.Context) (status.Comparison, error)
	started    func(statusURL string)
	memProfile string
}

func upCommand() *cobra.Command {
	var o upOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run every service of a pipeline in one process",
		Long: `up runs the reader and one writer per target in this process, and in
staged mode (mode: staged) the stager and the differ too. When the config
names no NATS URL it starts an embedded NATS JetStream server that stores
under --data-dir; with no stage.url, the stage is a SQLite file there too.
A restart with the same directory resumes.

With no config (no --config, no ONEWAY_CONFIG) it runs the built-in demo:
a SQLite System of Record under --data-dir/demo, seeded once and changed
by a simulator (--demo-burst changes every --demo-every), kept in step
with a SQLite target there that you may edit to watch it repaired.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.ConfigPath == "" {
				log, err := o.Logger("oneway")
				if err != nil {
					return err
				}
				return runDemo(cmd.Context(), o, log, cmd.OutOrStdout())
			}
			cfgs, err := o.LoadAll()
			if err != nil {
				return err
			}
			log, err := o.Logger("oneway")
			if err != nil {
				return err
			}
			return runUpAll(cmd.Context(), cfgs, o, log)
		},
	}
	o.Bind(cmd)
	cmd.Flags().StringVar(&o.dataDir, "data-dir", "./data", "where the embedded NATS server stores its streams (and the embedded stage its file)")
	cmd.Flags().StringVar(&o.adminAddr, "admin-addr", "", "serve the status page, /status.json, /healthz, /readyz and /metrics here (default: the config's admin.addr, else "+defaultAdminAddr+"; \"off\" disables)")
	cmd.Flags().IntVar(&o.natsPort, "nats-port", -1, "port of the embedded NATS server (-1: any free port)")
	cmd.Flags().BoolVar(&o.exitWhenSynced, "exit-when-synced", false, "exit 0 once every target has applied everything the reader found up to then")
	cmd.Flags().DurationVar(&o.stopTimeout, "stop-timeout", 30*time.Second, "how long shutdown may take")
	cmd.Flags().StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile of the run to this file")
	_ = cmd.Flags().MarkHidden("cpu-profile")
	cmd.Flags().DurationVar(&o.demoEvery, "demo-every", 5*time.Second, "demo only (no config): how often the simulator changes the SoR")
	cmd.Flags().IntVar(&o.demoBurst, "demo-burst", 10, "demo only (no config): changes per simulator burst (0: no simulator)")
	cmd.Flags().StringVar(&o.memProfile, "mem-profile", "", "write a heap profile to this file when the run ends (before shutdown with --exit-when-synced)")
	_ = cmd.Flags().MarkHidden("mem-profile")
	return cmd
}

func runUp(parent context.Context, cfg *config.Pipeline, o upOptions, log *slog.Logger) error {
	return runUpAll(parent, []*config.Pipeline{cfg}, o, log)
}

// runUpAll runs the pipelines of one config (one, or one per table of a
// config listing several) in this process, over one NATS connection and
// one admin server. With --exit-when-synced it exits once every pipeline
// is in sync.
func runUpAll(parent context.Context, cfgs []*config.Pipeline, o upOptions, log *slog.Logger) error {
	ctx, stop := runner.SignalContext(parent)
	defer stop()
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// The pipelines of one file share its NATS and admin settings.
	first := cfgs[0]
	name := first.Pipeline
	if first.Group != "" {
		name = first.Group
	}
	// The status page shows each target's last warning or error.
	errLog := status.NewErrorLog()
	plain := log.Handler()
	base := slog.New(errLog.Wrap(plain))
	log = base.With("pipeline", name)

	natsURL, auth := first.NATS.URL.Value(), natsbus.AuthOptions(first.NATS.NATSAuth)
	if natsURL == "" {
		dir := filepath.Join(o.dataDir, "nats")
		url, stop, err := startEmbedded(dir, o.natsPort)
		if err != nil {
			return err
		}
		defer stop()
		natsURL = url
		log.Info("embedded NATS JetStream started", "url", natsURL, "store_dir", dir)
	}
	b, err := natsbus.Connect(ctx, natsURL, "oneway-up", log, auth...)
	if err != nil {
		return err
	}
	defer b.Close()
	// The streams and the state bucket once, before the components ensure
	// them again (a no-op then): several creating them at once is the
	// server's least-trodden path.
	for _, cfg := range cfgs {
		if _, err := b.EnsureStream(ctx, natsbus.PipelineStream(cfg)); err != nil {
			return err
		}
	}
	if _, err := b.StateKV(ctx, first.NATS.Replicas); err != nil {
		return err
	}

	metrics := telemetry.NewMetrics(cli.Version, cli.Commit())
	health := telemetry.NewHealth()
	// One P while one core is enough: see package procs.
	components := []runner.Component{procs.New(log)}
	srv, err := startAdmin(o.adminAddr, first.Admin.Addr, metrics, health, log)
	if err != nil {
		return err
	}
	statusURL := ""
	if srv != nil {
		statusURL = "http://" + srv.Addr() + "/"
		components = append(components, srv)
	}

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()

	// With --exit-when-synced, the run ends once every pipeline is synced.
	var syncedMu sync.Mutex
	synced := 0
	onSynced := func() {
		syncedMu.Lock()
		defer syncedMu.Unlock()
		if synced++; synced == len(cfgs) {
			writeHeapProfile(o.memProfile, log)
			cancelRun()
		}
	}
	for i, cfg := range cfgs {
		// Each pipeline's status shows its own targets' last errors (the
		// pipelines of one file share target names).
		perr, plog := errLog, base.With("pipeline", cfg.Pipeline)
		if len(cfgs) > 1 {
			perr = status.NewErrorLog()
			plog = slog.New(perr.Wrap(plain)).With("pipeline", cfg.Pipeline)
		}
		collector := status.NewCollector(b, cfg, metrics, perr)
		if srv != nil {
			switch {
			case len(cfgs) == 1:
				collector.Compare = o.compare
				status.Mount(srv, collector, plog)
			case i == 0:
				status.Mount(srv, collector, plog)
				fallthrough
			default:
				status.MountPipeline(srv, cfg.Pipeline, collector, plog)
				plog.Info("status page serving", "url", "http://"+srv.Addr()+status.PipelinePath(cfg.Pipeline))
			}
			components = append(components, collector)
		}
		comps, closeStage, err := pipelineComponents(ctx, cfg, b, o, plog, metrics, health, len(cfgs) > 1, onSynced)
		if closeStage != nil {
			defer closeStage()
		}
		if err != nil {
			return err
		}
		components = append(components, comps...)
	}
	if srv != nil {
		log.Info("status page serving", "url", statusURL)
	}
	if o.started != nil {
		o.started(statusURL)
	}
	components = append(components, o.extra...)

	err = runner.Run(runCtx, log, o.stopTimeout, components...)
	if !o.exitWhenSynced {
		writeHeapProfile(o.memProfile, log)
	}
	if err != nil {
		return err
	}
	if o.exitWhenSynced {
		syncedMu.Lock()
		all := synced == len(cfgs)
		syncedMu.Unlock()
		if !all {
			return cli.Exit(cli.ExitFailure, errors.New("stopped before every target was in sync"))
		}
		var errs []error
		for _, cfg := range cfgs {
			errs = append(errs, checkDeadLetters(parent, b, cfg, base.With("pipeline", cfg.Pipeline)))
		}
		return errors.Join(errs...)
	}
	return nil
}

// pipelineComponents builds what runs one pipeline in `oneway up`: the
// reader, the writers, in staged mode the stager, the differ and the
// read-backs, the progress log and, with --exit-when-synced, a watcher that
// calls onSynced once the pipeline is in sync. closeStage, when not nil,
// closes the stage store after the run (also when err is not nil). With
// prefixed, health entries carry the pipeline's name (one process runs
// several).
func pipelineComponents(ctx context.Context, cfg *config.Pipeline, b *natsbus.Bus, o upOptions, log *slog.Logger,
	metrics *telemetry.Metrics, health *telemetry.Health, prefixed bool, onSynced func()) (components []runner.Component, closeStage func(), err error) {
	register := func(component string) (func(), func()) {
		if prefixed {
			component = cfg.Pipeline + "/" + component
		}
		return health.Register(component)
	}
	rd := readerapp.New(cfg, b, log, metrics)
	readerReady, _ := register("reader")
	var caught caughtUp
	rd.OnCaughtUp = func(seq uint64) {
		readerReady()
		caught.set(seq)
	}
	var store stage.Store
	var scans scanCount
	inFlight := func() int { return 0 }
	readbacks := newCycleCount()
	if cfg.Staged() {
		var err error
		if store, err = stagedb.Open(ctx, cfg, o.dataDir, 8); err != nil {
			return nil, nil, fmt.Errorf("open the stage of %s: %w", cfg.Pipeline, err)
		}
		closeStage = func() { _ = store.Close() }
		st, err := stagerapp.New(cfg, b, store, log, metrics)
		if err != nil {
			return nil, closeStage, err
		}
		st.OnReady, _ = register("stager")
		df, err := differapp.New(cfg, b, store, log, metrics)
		if err != nil {
			return nil, closeStage, err
		}
		df.OnReady, _ = register("differ")
		df.OnScanned = scans.add
		inFlight = df.InFlight
		components = append(components, st, df)
		for _, t := range cfg.Targets {
			if t.Readback == nil {
				continue
			}
			rb, err := readerapp.NewReadback(cfg, t.Name, b, log, metrics)
			if err != nil {
				return nil, closeStage, err
			}
			ready, _ := register(rb.Name())
			name := t.Name
			readbacks.watch(name)
			rb.OnCaughtUp = func(uint64) {
				ready()
				readbacks.add(name)
			}
			components = append(components, rb)
		}
	}
	for _, t := range cfg.Targets {
		w, err := writerapp.New(cfg, t.Name, b, log, metrics)
		if err != nil {
			return nil, closeStage, err
		}
		ready, _ := register("writer-" + t.Name)
		w.OnReady = ready
		components = append(components, w)
	}
	components = append(components, rd)
	components = append(components, runner.Func("progress", func(ctx context.Context) error {
		return reportProgress(ctx, b, cfg, log)
	}))
	if o.exitWhenSynced {
		components = append(components, runner.Func("sync-watch", func(ctx context.Context) error {
			wait := waitSynced
			if cfg.Staged() {
				wait = func(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, c *caughtUp, log *slog.Logger) (bool, error) {
					return waitStagedSynced(ctx, b, cfg, c, &scans, inFlight, readbacks, store, log)
				}
			}
			ok, err := wait(ctx, b, cfg, &caught, log)
			if err != nil {
				return err
			}
			if ok {
				onSynced()
			}
			<-ctx.Done()
			return nil
		}))
	}
	return components, closeStage, nil
}

// caughtUp records the reader's latest caught-up point.
type caughtUp struct {
	mu   sync.Mutex
	seen bool
	seq  uint64
	at   time.Time
}

func (c *caughtUp) set(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen, c.seq, c.at = true, seq, time.Now()
}

func (c *caughtUp) get() (bool, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen, c.seq
}

// waitSynced waits until the reader has caught up once and then every
// target's consumer has nothing pending or unacknowledged.
func waitSynced(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, c *caughtUp, log *slog.Logger) (bool, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
		}
		seen, seq := c.get()
		if !seen {
			continue
		}
		all := true
		for _, t := range cfg.Targets {
			cons, err := b.JS.Consumer(ctx, bus.StreamName(cfg.Pipeline), bus.WriterConsumer(cfg.Pipeline, t.Name))
			if err != nil {
				all = false
				break
			}
			info, err := cons.Info(ctx)
			if err != nil || info.NumPending > 0 || info.NumAckPending > 0 || info.Delivered.Stream < seq {
				all = false
				break
			}
		}
		if all {
			log.Info("every target is in sync", "stream_seq", seq)
			return true, nil
		}
	}
}

// checkDeadLetters fails the run when changes were dead-lettered: synced,
// but not everything arrived.
func checkDeadLetters(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	st, err := b.JS.Stream(ctx, bus.StreamName(cfg.Pipeline))
	if err != nil {
		return fmt.Errorf("count dead letters: %w", err)
	}
	var total uint64
	subjects := map[string]string{}
	for _, t := range cfg.Targets {
		subjects[bus.DLQSubject(cfg.Pipeline, t.Name)] = t.Name
	}
	if cfg.Staged() {
		subjects[bus.StagerDLQSubject(cfg.Pipeline)] = "_stager"
		subjects[bus.DifferDLQSubject(cfg.Pipeline)] = "_differ"
	}
	for subject, name := range subjects {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			return fmt.Errorf("count dead letters: %w", err)
		}
		n := info.State.Subjects[subject]
		if n > 0 {
			log.Error("target has dead letters", "target", name, "subject", subject, "count", n)
		}
		total += n
	}
	if total > 0 {
		return cli.Exit(cli.ExitFailure, fmt.Errorf("in sync except %d dead-lettered change batch(es); see the log", total))
	}
	return nil
}

// reportProgress logs what was published and what each target still has
// pending, every 5 seconds.
func reportProgress(ctx context.Context, b *natsbus.Bus, cfg *config.Pipeline, log *slog.Logger) error {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		st, err := b.JS.Stream(ctx, bus.StreamName(cfg.Pipeline))
		if err != nil {
			continue
		}
		info, err := st.Info(ctx)
		if err != nil {
			continue
		}
		attrs := []any{"stream_messages", info.State.Msgs, "stream_bytes", info.State.Bytes}
		for _, t := range cfg.Targets {
			cons, err := b.JS.Consumer(ctx, bus.StreamName(cfg.Pipeline), bus.WriterConsumer(cfg.Pipeline, t.Name))
			if err != nil {
				continue
			}
			ci, err := cons.Info(ctx)
			if err != nil {
				continue
			}
			attrs = append(attrs, "pending_"+t.Name, ci.NumPending+uint64(ci.NumAckPending))
		}
		log.Info("progress", attrs...)
	}
}

// defaultAdminAddr serves the status page when neither the flag nor the
// config names an address.
const defaultAdminAddr = "127.0.0.1:8080"

// startAdmin starts the admin server on the flag's address, else the
// config's, else defaultAdminAddr. A busy default port falls back to a free
// one (with a warning naming it); a busy address the user asked for is an
// error. "off" disables the server (nil, nil).
func startAdmin(flag, configured string, m *telemetry.Metrics, h *telemetry.Health, log *slog.Logger) (*telemetry.Server, error) {
	addr, chosen := flag, true
	if addr == "" {
		addr = configured
	}
	if addr == "" {
		addr, chosen = defaultAdminAddr, false
	}
	if addr == "off" {
		return nil, nil
	}
	srv := telemetry.NewServer(addr, m, h, log)
	err := srv.Start()
	if err != nil && !chosen {
		log.Warn("default admin address busy; using a free port", "addr", addr, "error", err)
		srv = telemetry.NewServer("127.0.0.1:0", m, h, log)
		err = srv.Start()
	}
	if err != nil {
		return nil, cli.Exit(cli.ExitUsage, err)
	}
	return srv, nil
}

// startEmbedded runs an embedded JetStream server storing under dir and
// returns its client URL and the function that stops it.
func startEmbedded(dir string, port int) (url string, stop func(), err error) {
	ns, err := natsembed.Start(natsembed.Options{StoreDir: dir, Port: port})
	if err != nil {
		return "", nil, err
	}
	return ns.ClientURL(), func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}, nil
}

// writeHeapProfile writes a heap profile to path ("" = none).
func writeHeapProfile(path string, log *slog.Logger) {
	if path == "" {
		return
	}
	f, err := os.Create(path)
	if err == nil {
		err = errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
	}
	if err != nil {
		log.Warn("heap profile not written", "path", path, "error", err)
	}
}
