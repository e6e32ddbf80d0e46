package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/oneway-sync/oneway/shared/config"
)

const twoTables = `pipeline: shop
source:
  kind: postgres
  url: postgres://u@h/db
  capture: {pattern: synthetic}
  tables:
    - {table: album, key: [album_id]}
    - {table: playlist_track, key: [playlist_id, track_id]}
targets:
  - {name: pg, kind: postgres, url: "postgres://u@h2/db"}
`

func TestFlagsLoadPipelines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shop.yaml")
	require.NoError(t, os.WriteFile(path, []byte(twoTables), 0o600))
	tests := []struct {
		name     string
		pipeline string
		all      []string // LoadAll's pipelines; nil: an exit-2 error
		one      string   // Load's pipeline; "": an exit-2 error
	}{
		{name: "all", all: []string{"shop_album", "shop_playlist_track"}},
		{name: "one picked", pipeline: "shop_playlist_track", all: []string{"shop_playlist_track"}, one: "shop_playlist_track"},
		{name: "unknown", pipeline: "shop_track"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := Flags{ConfigPath: path, Pipeline: tt.pipeline}
			ps, err := f.LoadAll()
			if tt.all == nil {
				var ee *ExitError
				require.ErrorAs(t, err, &ee)
				require.Equal(t, ExitUsage, ee.Code)
			} else {
				require.NoError(t, err)
				require.Equal(t, tt.all, config.Names(ps))
			}
			p, err := f.Load()
			if tt.one == "" {
				var ee *ExitError
				require.ErrorAs(t, err, &ee)
				require.Equal(t, ExitUsage, ee.Code)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.one, p.Pipeline)
		})
	}
	// Without --pipeline, a command of one pipeline names the choices.
	_, err := (&Flags{ConfigPath: path}).Load()
	require.ErrorContains(t, err, "pass --pipeline NAME")
	require.ErrorContains(t, err, "shop_album, shop_playlist_track")
}
