// Command differ joins a pipeline's staged source and target records and
// pushes what each target needs (staged push).
package main

import (
	"github.com/oneway-sync/oneway/services/differ/app"
	"github.com/oneway-sync/oneway/shared/cli"
)

func main() { cli.Main(app.Command()) }
