// Pins sigs.k8s.io/network-policy-api, the ClusterNetworkPolicy API: its CRDs
// (config/crd/experimental) are applied to the test apiserver by
// tests/cluster/netpol-api.sh, and its conformance suite (conformance/) is built from
// this same pin.
module netpol-agent.test/cluster/netpolapi

go 1.26.6

toolchain go1.26.8

require sigs.k8s.io/network-policy-api v0.3.0 // indirect
