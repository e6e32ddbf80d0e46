// Command writer applies a pipeline's changes to its targets.
package main

import (
	"github.com/oneway-sync/oneway/services/writer/app"
	"github.com/oneway-sync/oneway/shared/cli"
)

func main() { cli.Main(app.Command()) }
