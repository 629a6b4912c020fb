module netprobe

go 1.26.0
