package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oneway-sync/oneway/shared/natsbus/bustest"
	"github.com/oneway-sync/oneway/shared/runner"
	"github.com/oneway-sync/oneway/shared/stage"
)

// A staged service refuses, with a usage error naming the setting, a
// config it cannot run, before it opens any stage or builds anything.
func TestStagedServiceCommandRefuses(t *testing.T) {
	_, url := bustest.StartJetStream(t)
	const base = `pipeline: inv
nats: {url: %s}
%s
source:
  kind: postgres
  url: postgres://x@h/db
  table: public.invoices
  key: [id]
  columns: [id, updated_at]
  capture: {column: updated_at}
targets:
  - {name: pg, kind: postgres, url: postgres://x@h/t}
`
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"direct mode", "mode: direct", "mode: the stager runs in staged mode only"},
		{"embedded stage", "mode: staged", "stage.url: stager run needs a PostgreSQL stage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "p.yaml")
			if err := os.WriteFile(file, []byte(fmt.Sprintf(base, url, tc.extra)), 0o600); err != nil {
				t.Fatal(err)
			}
			built := false
			cmd := StagedServiceCommand("stager", "test", 1, func(Deps, stage.Store, func()) (runner.Component, error) {
				built = true
				return nil, errors.New("must not be built")
			})
			cmd.SetArgs([]string{"run", "--config", file})
			cmd.SetOut(new(strings.Builder))
			cmd.SetErr(new(strings.Builder))
			err := cmd.Execute()
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != ExitUsage || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run = %v, want exit %d naming %q", err, ExitUsage, tc.want)
			}
			if built {
				t.Fatal("the service was built from a config it cannot run")
			}
		})
	}
}
