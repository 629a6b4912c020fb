// Command loadgen measures new TCP connections per second between two endpoints.
//
//	loadgen server -listen 10.100.0.2:8080 [-lifetime 10m]
//	loadgen client -target 10.100.0.2:8080 -duration 5s -concurrency 32 [-source IP] [-timeout 1s]
//
// Every connection is one short exchange: connect, the client writes one byte, the
// server answers with one byte, the client closes with SO_LINGER 0 (an RST, so no
// TIME_WAIT piles up on either side and ephemeral ports never run out). The client
// prints one JSON object; the server prints "ready" once it listens. Both stop by
// themselves: the client after -duration (plus at most one -timeout), the server after
// -lifetime.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen server|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (want server or client)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func abort(conn net.Conn) {
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

func server(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on, host:port")
	lifetime := fs.Duration("lifetime", 10*time.Minute, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *listen == "" {
		return errors.New("server: -listen is required")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	timer := time.AfterFunc(*lifetime, func() { _ = ln.Close() })
	defer timer.Stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Transient accept errors (EMFILE, ECONNABORTED): back off briefly.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go serve(conn)
	}
}

func serve(conn net.Conn) {
	defer abort(conn)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1)
	if _, err := io.ReadFull(conn, buf); err != nil {
		return
	}
	if _, err := conn.Write(buf); err != nil {
		return
	}
	// Wait for the client's close (it resets), so the server never holds TIME_WAIT.
	_, _ = conn.Read(buf)
}

type result struct {
	Target          string           `json:"target"`
	Source          string           `json:"source,omitempty"`
	Concurrency     int              `json:"concurrency"`
	DurationSeconds float64          `json:"duration_seconds"`
	Completed       int64            `json:"completed"`
	Failures        int64            `json:"failures"`
	ConnPerSecond   float64          `json:"conn_per_s"`
	Errors          map[string]int64 `json:"errors,omitempty"`
}

func client(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	target := fs.String("target", "", "server address, host:port")
	duration := fs.Duration("duration", 5*time.Second, "how long to open connections")
	concurrency := fs.Int("concurrency", 32, "parallel connection loops")
	source := fs.String("source", "", "local IP to bind every connection to")
	timeout := fs.Duration("timeout", time.Second, "per-connection deadline (connect + exchange)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("client: -target is required")
	}
	if *concurrency < 1 || *duration <= 0 || *timeout <= 0 {
		return errors.New("client: -concurrency, -duration and -timeout must be positive")
	}
	dialer := net.Dialer{Timeout: *timeout}
	if *source != "" {
		ip := net.ParseIP(*source)
		if ip == nil {
			return fmt.Errorf("client: bad -source %q", *source)
		}
		dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}

	var completed, failures atomic.Int64
	var mu sync.Mutex
	kinds := map[string]int64{}
	fail := func(stage string, err error) {
		failures.Add(1)
		key := stage
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			key += ": timeout"
		case errors.Is(err, io.EOF):
			key += ": eof"
		default:
			key += ": " + err.Error()
			if len(key) > 120 {
				key = key[:120]
			}
		}
		mu.Lock()
		if len(kinds) < 16 || kinds[key] > 0 {
			kinds[key]++
		}
		mu.Unlock()
	}

	start := time.Now()
	deadline := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []byte{'x'}
			for time.Now().Before(deadline) {
				conn, err := dialer.Dial("tcp", *target)
				if err != nil {
					fail("connect", err)
					// A refused or unreachable target must not spin the CPU.
					time.Sleep(time.Millisecond)
					continue
				}
				_ = conn.SetDeadline(time.Now().Add(*timeout))
				if _, err := conn.Write(buf); err != nil {
					fail("write", err)
					abort(conn)
					continue
				}
				if _, err := io.ReadFull(conn, buf); err != nil {
					fail("read", err)
					abort(conn)
					continue
				}
				abort(conn)
				completed.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	res := result{
		Target:          *target,
		Source:          *source,
		Concurrency:     *concurrency,
		DurationSeconds: elapsed,
		Completed:       completed.Load(),
		Failures:        failures.Load(),
		ConnPerSecond:   float64(completed.Load()) / elapsed,
		Errors:          kinds,
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
