// The lab builds cnitool, the CNI project's reference runtime, from this module:
//
//	go build -o cnitool github.com/containernetworking/cni/cnitool
//
// This file only pins it as a dependency.
//go:build tools

package tools

import _ "github.com/containernetworking/cni/cnitool"
