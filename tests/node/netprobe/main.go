// netprobe: the test server and client of the real-node tests (stdlib only, static).
//
//	netprobe serve [--tcp 80,8080] [--udp 53] [--http 8080] [--name NAME]
//	netprobe connect tcp|udp HOST:PORT [--timeout 1s]
//	netprobe loop tcp|udp HOST:PORT [--interval 50ms] [--timeout T] [--count N | --duration D]
//
// serve: each TCP port writes the server's name and a newline, then closes; each UDP port
// echoes every datagram back to its sender; the --http port (which takes the place of a
// --tcp port of the same number) answers GET /healthz with "ok" and any other path with
// the name. The name is --name, else $POD_NAME, else the hostname (a pod's name).
//
// connect: one attempt. TCP succeeds when the handshake completes (the reply, if any, is
// printed); UDP succeeds when the echo comes back. Exit 0 on success, 1 on failure, 2 on
// a usage error.
//
// loop: one attempt every --interval (the first at once, at the process's first
// instant), each printed as a line
//
//	2006-01-02T15:04:05.000000000Z <seq> ok|fail <milliseconds> <reply or error>
//
// until --count attempts, --duration, or SIGINT/SIGTERM; then a summary on stderr and
// exit 0. --timeout (default: the interval) bounds each attempt.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "connect":
		err = connect(os.Args[2:])
	case "loop":
		err = loop(os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(helpText)
		return
	default:
		usage()
	}
	if err != nil {
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(os.Stderr, "netprobe: %v\n", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "netprobe: %v\n", err)
		os.Exit(1)
	}
}

const helpText = `usage:
  netprobe serve [--tcp PORTS] [--udp PORTS] [--http PORT] [--name NAME]
  netprobe connect tcp|udp HOST:PORT [--timeout 1s]
  netprobe loop tcp|udp HOST:PORT [--interval 50ms] [--timeout T] [--count N | --duration D]
`

func usage() {
	fmt.Fprint(os.Stderr, helpText)
	os.Exit(2)
}

// stampFormat: UTC, fixed width (nanoseconds), for the log and the loop's lines.
const stampFormat = "2006-01-02T15:04:05.000000000Z"

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

// parse parses flags that may come before, between or after the positional arguments,
// and checks that there are exactly npos of those.
func parse(fs *flag.FlagSet, args []string, npos int) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != npos {
		return nil, usageError{fmt.Sprintf("%s: want %d arguments, got %q", fs.Name(), npos, pos)}
	}
	return pos, nil
}

// ports parses "80,8080" (empty: none).
func ports(list string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, usageError{fmt.Sprintf("bad port %q", p)}
		}
		out = append(out, n)
	}
	return out, nil
}

// --- serve ---------------------------------------------------------------------------

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	tcpList := fs.String("tcp", "", "TCP ports (comma-separated): write the name, close")
	udpList := fs.String("udp", "", "UDP ports (comma-separated): echo")
	httpPort := fs.Int("http", 0, "HTTP port: /healthz answers ok, other paths the name")
	name := fs.String("name", "", "name to answer with (default $POD_NAME, else hostname)")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	tcpPorts, err := ports(*tcpList)
	if err != nil {
		return err
	}
	udpPorts, err := ports(*udpList)
	if err != nil {
		return err
	}
	if *name == "" {
		*name = os.Getenv("POD_NAME")
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, time.Now().UTC().Format(stampFormat)+" "+format+"\n", a...)
	}

	// Listen on everything first, so a port that cannot be bound fails the start.
	for _, p := range tcpPorts {
		if p == *httpPort {
			continue
		}
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(p))
		if err != nil {
			return err
		}
		go serveTCP(ln, *name, logf)
	}
	for _, p := range udpPorts {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(p))
		if err != nil {
			return err
		}
		go serveUDP(pc, logf)
	}
	if *httpPort != 0 {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(*httpPort))
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "ok")
		})
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			logf("http %d %s %s from %s", *httpPort, r.Method, r.URL.Path, r.RemoteAddr)
			fmt.Fprintln(w, *name)
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { logf("http %d: %v", *httpPort, srv.Serve(ln)) }()
	}
	logf("%s serving tcp=%v udp=%v http=%d", *name, tcpPorts, udpPorts, *httpPort)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	logf("stopping on %v", <-sig)
	return nil
}

func serveTCP(ln net.Listener, name string, logf func(string, ...any)) {
	port := ln.Addr().(*net.TCPAddr).Port
	for {
		conn, err := ln.Accept()
		if err != nil {
			logf("tcp %d: %v", port, err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		logf("tcp %d from %s", port, conn.RemoteAddr())
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(conn, name+"\n")
		}()
	}
}

func serveUDP(pc net.PacketConn, logf func(string, ...any)) {
	port := pc.LocalAddr().(*net.UDPAddr).Port
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			logf("udp %d: %v", port, err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		logf("udp %d from %s", port, from)
		pc.WriteTo(buf[:n], from)
	}
}

// --- connect / loop ------------------------------------------------------------------

// attempt makes one connection to addr within timeout and returns the reply's first
// line (TCP: what the server wrote before closing; UDP: the echo).
func attempt(proto, addr string, timeout time.Duration, seq int) (string, error) {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout(proto, addr, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	switch proto {
	case "tcp":
		// Connected: that is the success. Half-close and read what the server says
		// (a netprobe TCP port: its name; an HTTP port: nothing, it closes on EOF).
		conn.(*net.TCPConn).CloseWrite()
		reply, err := io.ReadAll(io.LimitReader(conn, 4096))
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Reset after the handshake: still connected, say so in the reply.
			return "connected, then: " + err.Error(), nil
		}
		return firstLine(reply), nil
	default: // udp
		msg := fmt.Sprintf("netprobe %d %d", os.Getpid(), seq)
		if _, err := conn.Write([]byte(msg)); err != nil {
			return "", err
		}
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return "", err
			}
			if string(buf[:n]) == msg {
				return msg, nil
			}
			// A late echo of an earlier attempt: keep waiting for ours.
		}
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(s)
}

func target(pos []string) (string, string, error) {
	proto, addr := pos[0], pos[1]
	if proto != "tcp" && proto != "udp" {
		return "", "", usageError{fmt.Sprintf("protocol %q: want tcp or udp", proto)}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", usageError{fmt.Sprintf("address %q: want HOST:PORT", addr)}
	}
	return proto, addr, nil
}

func connect(args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	timeout := fs.Duration("timeout", time.Second, "give up after this long")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	proto, addr, err := target(pos)
	if err != nil {
		return err
	}
	reply, err := attempt(proto, addr, *timeout, 0)
	if err != nil {
		return err
	}
	fmt.Println(reply)
	return nil
}

func loop(args []string) error {
	fs := flag.NewFlagSet("loop", flag.ContinueOnError)
	interval := fs.Duration("interval", 50*time.Millisecond, "time between attempt starts")
	timeout := fs.Duration("timeout", 0, "give up on one attempt after this long (default: the interval)")
	count := fs.Int("count", 0, "stop after this many attempts")
	duration := fs.Duration("duration", 0, "stop after this long")
	pos, err := parse(fs, args, 2)
	if err != nil {
		return err
	}
	proto, addr, err := target(pos)
	if err != nil {
		return err
	}
	if *interval <= 0 {
		return usageError{"--interval must be positive"}
	}
	if *timeout <= 0 {
		*timeout = *interval
	}
	start := time.Now()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	ok, fail := 0, 0
attempts:
	for seq := 0; *count == 0 || seq < *count; seq++ {
		if *duration > 0 && time.Since(start) >= *duration {
			break
		}
		t0 := time.Now()
		reply, err := attempt(proto, addr, *timeout, seq)
		ms := float64(time.Since(t0).Microseconds()) / 1000
		stamp := t0.UTC().Format(stampFormat)
		if err != nil {
			fail++
			fmt.Printf("%s %d fail %.3f %s\n", stamp, seq, ms, err)
		} else {
			ok++
			fmt.Printf("%s %d ok %.3f %s\n", stamp, seq, ms, reply)
		}
		// The next attempt starts one interval after this one started (at once if this
		// one took longer).
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "netprobe: stopping on %v\n", s)
			break attempts
		case <-time.After(time.Until(t0.Add(*interval))):
		}
	}
	fmt.Fprintf(os.Stderr, "netprobe: %d attempts, %d ok, %d fail\n", ok+fail, ok, fail)
	return nil
}
