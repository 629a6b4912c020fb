package main

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

const prev040 = `{"cniVersion":"0.4.0","name":"n","type":"netpol-agent",
 "prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.244.1.7/24"},
 {"version":"6","address":"fd00::7/64"}]}}`

func TestConfDefaultsAndValidation(t *testing.T) {
	conf, err := parseConf([]byte(prev040))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Socket != defaultSocket || *conf.TimeoutSeconds != defaultTimeout || conf.FailurePolicy != "fail" {
		t.Fatalf("defaults: %+v", conf)
	}
	for _, bad := range []string{
		`{"cniVersion":"1.0.0","failurePolicy":"ignore"}`,
		`{"cniVersion":"1.0.0","timeoutSeconds":0}`,
		`{`,
	} {
		if _, err := parseConf([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestPodArgsAndAddressesOfAnOlderResult(t *testing.T) {
	ns, name, uid := podArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=web;K8S_POD_UID=u1;K8S_POD_INFRA_CONTAINER_ID=c")
	if ns != "x" || name != "web" || uid != "u1" {
		t.Fatalf("got %q %q %q", ns, name, uid)
	}
	conf, err := parseConf([]byte(prev040))
	if err != nil {
		t.Fatal(err)
	}
	ips, err := addresses(conf.PrevResult)
	if err != nil || len(ips) != 2 || ips[0] != "10.244.1.7" || ips[1] != "fd00::7" {
		t.Fatalf("got %v %v", ips, err)
	}
}

// A fake agent: answers each request with answer, after recording it.
func agent(t *testing.T, answer string) (string, chan Request) {
	path := filepath.Join(t.TempDir(), "cni.sock")
	listener, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.Close() })
	got := make(chan Request, 4)
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(conn).ReadBytes('\n')
			var req Request
			_ = json.Unmarshal(line, &req)
			got <- req
			conn.Write([]byte(answer + "\n"))
			conn.Close()
		}
	}()
	return path, got
}

func confFor(socket, policy string) []byte {
	return []byte(`{"cniVersion":"1.0.0","name":"n","type":"netpol-agent","socket":"` + socket +
		`","timeoutSeconds":1,"failurePolicy":"` + policy + `",
		"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.7/24"}]}}`)
}

func TestConfirmAsksTheAgentAndFollowsTheFailurePolicy(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "c1", Args: "K8S_POD_NAMESPACE=x;K8S_POD_NAME=web"}
	yes, got := agent(t, `{"ok":true}`)
	conf, _ := parseConf(confFor(yes, "fail"))
	req, err := request("add", conf, args)
	if err != nil || confirm(conf, req) != nil {
		t.Fatalf("a yes must confirm: %v", err)
	}
	if r := <-got; r.Op != "add" || r.Namespace != "x" || r.Name != "web" || r.IPs[0] != "10.244.1.7" || r.Timeout != 1 {
		t.Fatalf("request %+v", r)
	}
	no, _ := agent(t, `{"ok":false,"error":"x/web: the pod is not known within 1s"}`)
	conf, _ = parseConf(confFor(no, "fail"))
	if confirm(conf, req) == nil {
		t.Fatal("a no must fail the ADD")
	}
	gone := filepath.Join(t.TempDir(), "nobody.sock")
	conf, _ = parseConf(confFor(gone, "fail"))
	if confirm(conf, req) == nil {
		t.Fatal("an unreachable agent must fail the ADD")
	}
	conf, _ = parseConf(confFor(gone, "pass"))
	if err := confirm(conf, req); err != nil {
		t.Fatalf("failurePolicy pass: %v", err)
	}
}
