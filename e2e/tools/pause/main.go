// Command pause holds a pod's namespaces open for as long as the pod lives, as the upstream pause
// container does (no registry here to pull that one from). It sleeps until SIGINT or SIGTERM, and,
// being PID 1 of pods that share their process namespace, reaps the orphans that get reparented to it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is set by build-tools.sh (a hash of this file), so that an edit here triggers a rebuild.
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "pause: shutting down, got signal %v\n", sig)
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
