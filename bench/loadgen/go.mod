module netpol-agent/loadgen

go 1.21
