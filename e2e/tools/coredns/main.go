// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses: it serves the cluster
// domain from the API (plugin kubernetes) and nothing else. The stock build links every plugin, cloud
// providers' SDKs included, which would triple the build for nothing; CoreDNS documents this way of
// choosing plugins (a main package importing coremain and the plugins).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
