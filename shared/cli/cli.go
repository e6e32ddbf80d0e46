// Package cli holds what every oneway binary's command line shares: config
// loading with exit code 2 on bad input, logging flags, the `config` and
// `version` verbs, and the mapping of errors to exit codes.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/oneway-sync/oneway/shared/config"
	"github.com/oneway-sync/oneway/shared/telemetry"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitFailure  = 1
	ExitUsage    = 2 // bad flags or bad config
	ExitSignaled = 130
)

// ExitError carries an exit code through cobra.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit %d", e.Code)
	}
	return e.Err.Error()
}
func (e *ExitError) Unwrap() error { return e.Err }

// Exit returns an error that makes Main exit with code; err may be nil for
// a silent exit.
func Exit(code int, err error) error { return &ExitError{Code: code, Err: err} }

// Version is set at build time with -ldflags "-X .../shared/cli.Version=…".
var Version = "dev"

// Commit returns the VCS revision the binary was built from, if known.
func Commit() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return "unknown"
}

// Main runs root and exits the process with the right code: 0 on success,
// the code of an ExitError, 2 for usage errors, 1 otherwise.
func Main(root *cobra.Command) {
	os.Exit(Run(context.Background(), root, os.Args[1:], os.Stderr))
}

// Run executes root with args and returns the exit code (for tests).
func Run(ctx context.Context, root *cobra.Command, args []string, stderr io.Writer) int {
	root.SilenceUsage = true
	root.SilenceErrors = true
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return Exit(ExitUsage, err) })
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", root.Name(), ee.Err)
		}
		return ee.Code
	}
	fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	return ExitFailure
}

// Flags shared by every command that loads a pipeline.
type Flags struct {
	ConfigPath string
	LogFormat  string
	LogLevel   string
	// Pipeline picks one pipeline of a file listing several tables
	// (source.tables): the name of that table's pipeline. Empty: all.
	Pipeline string
}

// Bind adds --config, --log-format and --log-level to cmd. Defaults come from
// ONEWAY_CONFIG, ONEWAY_LOG_FORMAT and ONEWAY_LOG_LEVEL (flags > env > defaults).
func (f *Flags) Bind(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.ConfigPath, "config", "c", os.Getenv("ONEWAY_CONFIG"), "pipeline config file (env ONEWAY_CONFIG)")
	cmd.Flags().StringVar(&f.LogFormat, "log-format", envOr("ONEWAY_LOG_FORMAT", "auto"), "log format: auto, text or json (env ONEWAY_LOG_FORMAT)")
	cmd.Flags().StringVar(&f.LogLevel, "log-level", envOr("ONEWAY_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env ONEWAY_LOG_LEVEL)")
	cmd.Flags().StringVar(&f.Pipeline, "pipeline", os.Getenv("ONEWAY_PIPELINE"), "with a config of several tables (source.tables): only this table's pipeline, <pipeline>_<table> (env ONEWAY_PIPELINE)")
}

// Load reads the config of one pipeline: a file of one table, or the
// pipeline --pipeline names in a file of several. Every problem is an
// exit-2 error naming the file, line and field.
func (f *Flags) Load() (*config.Pipeline, error) {
	ps, err := f.LoadAll()
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, Exit(ExitUsage, fmt.Errorf("%s lists %d tables, so it describes %d pipelines (%s), and this command acts on one: pass --pipeline NAME",
			f.ConfigPath, len(ps), len(ps), strings.Join(config.Names(ps), ", ")))
	}
	return ps[0], nil
}

// LoadAll reads the config's pipelines: one for a file of one table, one
// per table for a file listing several (source.tables), or only the one
// --pipeline names. Every problem is an exit-2 error naming the file, line
// and field.
func (f *Flags) LoadAll() ([]*config.Pipeline, error) {
	if f.ConfigPath == "" {
		return nil, Exit(ExitUsage, errors.New("no config file: pass --config FILE or set ONEWAY_CONFIG"))
	}
	ps, err := config.LoadAll(f.ConfigPath)
	if err != nil {
		return nil, Exit(ExitUsage, fmt.Errorf("invalid config:\n%w", err))
	}
	if f.Pipeline == "" {
		return ps, nil
	}
	for _, p := range ps {
		if p.Pipeline == f.Pipeline {
			return []*config.Pipeline{p}, nil
		}
	}
	return nil, Exit(ExitUsage, fmt.Errorf("%s has no pipeline %q (it has %s)", f.ConfigPath, f.Pipeline, strings.Join(config.Names(ps), ", ")))
}

// Logger builds the service's logger from the flags.
func (f *Flags) Logger(service string) (*slog.Logger, error) {
	log, err := telemetry.NewLogger(os.Stderr, f.LogFormat, f.LogLevel, service)
	if err != nil {
		return nil, Exit(ExitUsage, err)
	}
	return log, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// ConfigCommand is `config validate` and `config print`.
func ConfigCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check or print a pipeline config"}
	var vf Flags
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Check a pipeline config; exit 2 naming file, line and field when it is wrong",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := vf.LoadAll()
			if err != nil {
				return err
			}
			for _, cfg := range ps {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: pipeline %q is valid (%d target(s))\n", cfg.File, cfg.Pipeline, len(cfg.Targets))
			}
			return nil
		},
	}
	vf.Bind(validate)
	var pf Flags
	print := &cobra.Command{
		Use:   "print",
		Short: "Print the effective config (defaults applied, secrets redacted)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := pf.LoadAll()
			if err != nil {
				return err
			}
			for i, cfg := range ps {
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "---")
				}
				if err := cfg.Print(cmd.OutOrStdout()); err != nil {
					return err
				}
			}
			return nil
		},
	}
	pf.Bind(print)
	cmd.AddCommand(validate, print)
	return cmd
}

// VersionCommand prints the version and commit.
func VersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (commit %s)\n", cmd.Root().Name(), Version, Commit())
		},
	}
}
