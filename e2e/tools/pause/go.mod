// The pause program of the local cluster's pod sandboxes (containerd's sandbox_image); nothing here is
// product code. Built by e2e/cluster/build-tools.sh, packaged as the image braid.dev/pause by
// e2e/cluster/node.sh. No dependencies: the image holds this one static binary.
module braid.dev/e2e/tools/pause

go 1.24.0
