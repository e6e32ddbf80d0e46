// Command reader reads a System of Record and publishes its changes to NATS
// JetStream.
package main

import (
	"github.com/oneway-sync/oneway/services/reader/app"
	"github.com/oneway-sync/oneway/shared/cli"
)

func main() { cli.Main(app.Command()) }
