// Command oneway is the operator CLI: `oneway up` runs every service in one
// process; verify, config and version help run it.
package main

import (
	"github.com/oneway-sync/oneway/services/oneway/app"
	"github.com/oneway-sync/oneway/shared/cli"
)

func main() { cli.Main(app.Root()) }
