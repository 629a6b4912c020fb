// netpol-agent: a chained CNI plugin that holds a pod's ADD until the node's
// netpol-agent has programmed that pod's chains.
//
// It runs after the node's main plugin (last in the conflist). At ADD it reads the pod's
// addresses from prevResult and its namespace/name (and uid) from CNI_ARGS, sends them to
// the agent over a unix socket and returns prevResult unchanged once the agent answers
// that the pod's rules are in the kernel. Every decision is the agent's; this binary only
// carries the message. The protocol (one JSON request, one JSON answer, each a line) is
// described in DESIGN.md.
//
// Network configuration (all optional):
//
//	{"type": "netpol-agent",
//	 "socket": "/var/run/netpol-agent/cni.sock",
//	 "timeoutSeconds": 10,
//	 "failurePolicy": "fail"}    // or "pass": an ADD the agent did not confirm succeeds
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	defaultSocket  = "/var/run/netpol-agent/cni.sock"
	defaultTimeout = 10.0
	delTimeout     = 2 * time.Second
)

// NetConf is the plugin's entry in the conflist.
type NetConf struct {
	types.PluginConf
	Socket         string   `json:"socket,omitempty"`
	TimeoutSeconds *float64 `json:"timeoutSeconds,omitempty"`
	FailurePolicy  string   `json:"failurePolicy,omitempty"`
}

// Request is what the agent is told; Answer is what it says back.
type Request struct {
	Op          string   `json:"op"` // add, del, check
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	UID         string   `json:"uid,omitempty"`
	ContainerID string   `json:"containerID"`
	IPs         []string `json:"ips"`
	Timeout     float64  `json:"timeout"`
}

type Answer struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

func parseConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("netpol-agent: cannot parse network configuration: %v", err)
	}
	if conf.Socket == "" {
		conf.Socket = defaultSocket
	}
	if conf.TimeoutSeconds == nil {
		t := defaultTimeout
		conf.TimeoutSeconds = &t
	}
	if *conf.TimeoutSeconds <= 0 {
		return nil, fmt.Errorf("netpol-agent: timeoutSeconds must be positive, not %v", *conf.TimeoutSeconds)
	}
	switch conf.FailurePolicy {
	case "":
		conf.FailurePolicy = "fail"
	case "fail", "pass":
	default:
		return nil, fmt.Errorf("netpol-agent: failurePolicy is fail or pass, not %q", conf.FailurePolicy)
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("netpol-agent: cannot parse prevResult: %v", err)
		}
	}
	return conf, nil
}

// podArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from CNI_ARGS
// ("K=V;K=V"); unknown keys are ignored.
func podArgs(args string) (namespace, name, uid string) {
	for _, pair := range strings.Split(args, ";") {
		key, value, ok := strings.Cut(pair, "=")
		if !ok {
			continue
		}
		switch key {
		case "K8S_POD_NAMESPACE":
			namespace = value
		case "K8S_POD_NAME":
			name = value
		case "K8S_POD_UID":
			uid = value
		}
	}
	return namespace, name, uid
}

// addresses lists the IPs of prevResult (any supported version).
func addresses(prev types.Result) ([]string, error) {
	if prev == nil {
		return nil, nil
	}
	result, err := current.NewResultFromResult(prev)
	if err != nil {
		return nil, fmt.Errorf("netpol-agent: cannot read prevResult: %v", err)
	}
	ips := make([]string, 0, len(result.IPs))
	for _, ip := range result.IPs {
		ips = append(ips, ip.Address.IP.String())
	}
	return ips, nil
}

// ask sends one request and reads one answer, all within timeout.
func ask(socket string, req Request, timeout time.Duration) (*Answer, error) {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout("unix", socket, timeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return nil, err
	}
	reply, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	answer := &Answer{}
	if err := json.Unmarshal(reply, answer); err != nil {
		return nil, fmt.Errorf("unreadable answer %q: %v", reply, err)
	}
	return answer, nil
}

func request(op string, conf *NetConf, args *skel.CmdArgs) (*Request, error) {
	namespace, name, uid := podArgs(args.Args)
	if namespace == "" || name == "" {
		return nil, nil // not a Kubernetes pod: nothing for the agent to enforce
	}
	ips, err := addresses(conf.PrevResult)
	if err != nil {
		return nil, err
	}
	return &Request{
		Op: op, Namespace: namespace, Name: name, UID: uid,
		ContainerID: args.ContainerID, IPs: ips, Timeout: *conf.TimeoutSeconds,
	}, nil
}

// confirm asks the agent and applies the failure policy to anything but a yes.
func confirm(conf *NetConf, req *Request) error {
	// The agent gives up at req.Timeout; wait a little longer for its answer.
	timeout := time.Duration(*conf.TimeoutSeconds*float64(time.Second)) + 500*time.Millisecond
	answer, err := ask(conf.Socket, *req, timeout)
	if err == nil && answer.OK {
		return nil
	}
	reason := ""
	if err != nil {
		reason = fmt.Sprintf("agent not reachable at %s: %v", conf.Socket, err)
	} else {
		reason = "agent refused: " + answer.Error
	}
	if conf.FailurePolicy == "pass" {
		fmt.Fprintf(os.Stderr, "netpol-agent: %s %s/%s: %s (failurePolicy pass)\n",
			req.Op, req.Namespace, req.Name, reason)
		return nil
	}
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("pod %s/%s: network policy not programmed", req.Namespace, req.Name), reason)
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("netpol-agent: must be chained after a plugin that gives a prevResult")
	}
	req, err := request("add", conf, args)
	if err != nil {
		return err
	}
	if req != nil {
		if err := confirm(conf, req); err != nil {
			return err
		}
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return errors.New("netpol-agent: CHECK needs a prevResult")
	}
	req, err := request("check", conf, args)
	if err != nil || req == nil {
		return err
	}
	return confirm(conf, req)
}

// cmdDel always succeeds: DEL must not fail because the agent is gone. The agent is told
// (best effort) so that it forgets the addresses it learnt at ADD.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil
	}
	namespace, name, uid := podArgs(args.Args)
	if namespace == "" || name == "" {
		return nil
	}
	req := Request{Op: "del", Namespace: namespace, Name: name, UID: uid,
		ContainerID: args.ContainerID, IPs: []string{}, Timeout: delTimeout.Seconds()}
	if _, err := ask(conf.Socket, req, delTimeout); err != nil {
		fmt.Fprintf(os.Stderr, "netpol-agent: del %s/%s: agent not told: %v\n", namespace, name, err)
	}
	return nil
}

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Check: cmdCheck, Del: cmdDel},
		version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"netpol-agent: holds a pod's ADD until its network policy is programmed")
}
