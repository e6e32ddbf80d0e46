// Command stager stages a pipeline's source changes, target read-backs and
// applied reports for the differ (staged push).
package main

import (
	"github.com/oneway-sync/oneway/services/stager/app"
	"github.com/oneway-sync/oneway/shared/cli"
)

func main() { cli.Main(app.Command()) }
