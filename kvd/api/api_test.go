package api_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvd-project/kvd/internal/proctest"
	"github.com/kvd-project/kvd/ipc"
	"github.com/kvd-project/kvd/kvd/blocks"
)

var kvdBin string

// TestMain builds the real kvd binary. When run as a child with
// KVD_TEST_CLIENT set, the test binary is instead a client process (see
// clientMain), so tests can kill a real client with SIGKILL.
func TestMain(m *testing.M) {
	if sock := os.Getenv("KVD_TEST_CLIENT"); sock != "" {
		clientMain(sock)
		return
	}
	dir, err := os.MkdirTemp("", "kvd-api")
	if err != nil {
		panic(err)
	}
	kvdBin = filepath.Join(dir, "kvd")
	build := exec.Command("go", "build", "-o", kvdBin, "github.com/kvd-project/kvd/kvd")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kvd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// clientMain opens 3 sequences, reserves 40 tokens in each, writes a marker
// into the pool, prints "ready" and waits to be killed.
func clientMain(sock string) {
	ctx := context.Background()
	c, err := ipc.Dial(ctx, sock, ipc.Options{Name: "child", Wait: 5 * time.Second})
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	if err := c.Open(ctx, 1, 2, 3); err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	st, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 40}, {Seq: 2, N: 40}, {Seq: 3, N: 40}})
	if err != nil {
		fmt.Println("step:", err)
		os.Exit(1)
	}
	if err := c.StepDone(ctx, st.ID, false); err != nil {
		fmt.Println("step done:", err)
		os.Exit(1)
	}
	first := c.Tables().Blocks(1, 0)[0]
	c.Pool().Float32s()[c.Layout().K(int(first), 0, 0)] = 1234.5
	fmt.Println("ready", first)
	time.Sleep(time.Minute)
}

type daemon struct {
	cmd  *exec.Cmd
	sock string
	logs *proctest.Buffer // stderr
	out  *proctest.Buffer // stdout
}

// startKVD runs kvd serve with a small 4-layer pool on sock (a fresh one
// if empty) and waits until it answers.
func startKVD(t *testing.T, sock string) *daemon {
	t.Helper()
	if sock == "" {
		sock = filepath.Join(t.TempDir(), "kvd.sock")
	}
	return startKVDWith(t, sock, "--layers", "4", "--kv-heads", "2", "--head-dim", "8", "--kv-memory", "4MiB", "--grace", "300ms")
}

func startKVDWith(t testing.TB, sock string, flags ...string) *daemon {
	t.Helper()
	args := append([]string{"serve", "--socket", sock}, flags...)
	cmd := exec.Command(kvdBin, args...)
	logs, out := &proctest.Buffer{}, &proctest.Buffer{}
	cmd.Stderr, cmd.Stdout = logs, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, sock: sock, logs: logs, out: out}
	t.Cleanup(func() { d.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := ipc.QueryStatus(context.Background(), sock); err == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvd did not start:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (d *daemon) stop() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Signal(syscall.SIGTERM)
		d.cmd.Wait()
	}
}

func status(t *testing.T, sock string) *ipc.Status {
	t.Helper()
	s, err := ipc.QueryStatus(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKilledClientBlocksReturn(t *testing.T) {
	d := startKVD(t, "")
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "KVD_TEST_CLIENT="+d.sock)
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "ready") {
		t.Fatalf("client said %q", line)
	}
	s := status(t, d.sock)
	// 3 sequences × 4 layers × ceil(40/16) blocks.
	if s.BlocksUsed != 36 || s.Sequences != 3 || s.Clients != 1 || s.Layers[2].TokensRetained != 120 {
		t.Fatalf("while the client runs: %+v", s)
	}
	child.Process.Kill()
	child.Wait()
	time.Sleep(50 * time.Millisecond)
	if s := status(t, d.sock); s.BlocksUsed != 36 || s.Clients != 0 || len(s.Leases) != 1 || s.Leases[0].Connected {
		t.Fatalf("within the grace period the blocks must stay: %+v", s)
	}
	deadline := time.Now().Add(5 * time.Second)
	for status(t, d.sock).BlocksUsed != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("blocks not returned after the grace period: %+v", status(t, d.sock))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := status(t, d.sock); s.BlocksFree != s.BlocksTotal || s.Sequences != 0 || len(s.Leases) != 0 {
		t.Fatalf("after the grace period: %+v", s)
	}
}

func TestTwoClientsShareThePool(t *testing.T) {
	d := startKVD(t, "")
	ctx := context.Background()
	a, err := ipc.Dial(ctx, d.sock, ipc.Options{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Shutdown()
	b, err := ipc.Dial(ctx, d.sock, ipc.Options{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Shutdown()
	// The same client-chosen id in two clients is two sequences.
	if err := a.Open(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := b.Open(ctx, 7); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	for _, c := range []*ipc.Client{a, b} {
		go func() {
			for range 50 {
				st, err := c.Step(ctx, []blocks.Append{{Seq: 7, N: 3}})
				if err != nil {
					done <- err
					return
				}
				c.Done(st.ID, false)
			}
			done <- nil
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// 150 tokens each: 10 blocks per layer, 4 layers, 2 clients; no block in both.
	s := status(t, d.sock)
	if s.BlocksUsed != 80 || s.Clients != 2 || s.Layers[0].TokensRetained != 300 {
		t.Fatalf("%+v", s)
	}
	seen := map[int32]bool{}
	for _, c := range []*ipc.Client{a, b} {
		for l := range 4 {
			for _, id := range c.Tables().Blocks(7, l) {
				if seen[id] {
					t.Fatalf("block %d in both clients' tables", id)
				}
				seen[id] = true
			}
		}
	}
	// Both map the same memory: what a writes, b reads.
	off := a.Layout().V(int(a.Tables().Blocks(7, 3)[2]), 1, 5)
	a.Pool().Float32s()[off] = 42.25
	if got := b.Pool().Float32s()[off]; got != 42.25 {
		t.Fatalf("b reads %v where a wrote 42.25: the pool is not shared", got)
	}
	if err := a.Close(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if s := status(t, d.sock); s.BlocksUsed != 40 {
		t.Fatalf("closing a's sequence freed %d blocks", 80-s.BlocksUsed)
	}
}

func TestRestartUnderClient(t *testing.T) {
	d := startKVD(t, "")
	ctx := context.Background()
	c, err := ipc.Dial(ctx, d.sock, ipc.Options{Name: "g", Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	if err := c.Open(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 5}}); err != nil {
		t.Fatal(err)
	}
	d.stop()
	if _, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 1}}); !errors.Is(err, ipc.ErrDisconnected) && !errors.Is(err, ipc.ErrNotRunning) {
		t.Fatalf("step with kvd down: %v", err)
	}
	startKVD(t, d.sock)
	_, err = c.Step(ctx, []blocks.Append{{Seq: 1, N: 1}})
	if !errors.Is(err, ipc.ErrRestarted) || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("first call after the restart: %v", err)
	}
	if c.Tables().Has(1) {
		t.Fatal("sequence 1 survived the restart in the client's tables")
	}
	if err := c.Open(ctx, 1); err != nil {
		t.Fatalf("open after reconnect: %v", err)
	}
	st, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 17}})
	if err != nil {
		t.Fatalf("step after reconnect: %v", err)
	}
	plans, err := c.Plan(st)
	if err != nil || len(plans[0].Slots) != 17 {
		t.Fatalf("plan after reconnect: %v", err)
	}
}

// TestReconnectReclaims drops a client's connection (not its lease) and
// checks that it gets its sequences back, and its step in flight rolled
// back on both sides.
func TestReconnectReclaims(t *testing.T) {
	d := startKVD(t, "")
	ctx := context.Background()
	c, err := ipc.Dial(ctx, d.sock, ipc.Options{Name: "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	c.Open(ctx, 1, 2)
	st, _ := c.Step(ctx, []blocks.Append{{Seq: 1, N: 20}, {Seq: 2, N: 3}})
	c.Done(st.ID, false)
	if _, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 13}}); err != nil { // in flight: 33 tokens
		t.Fatal(err)
	}
	lease := c.Hello().Lease
	// Kill the connection under the client: kvd sees it drop.
	if err := c.ForceDisconnect(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	s, err := c.Status(ctx) // reconnects
	if err != nil {
		t.Fatal(err)
	}
	if c.Hello().Lease != lease || s.Sequences != 2 || s.Layers[0].TokensRetained != 23 {
		t.Fatalf("after reconnect: lease kept %v, %+v", c.Hello().Lease == lease, s)
	}
	if n, _ := c.Tables().Tokens(1, 0); n != 20 {
		t.Fatalf("client mirror holds %d tokens for sequence 1, want 20", n)
	}
	if _, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 1}}); err != nil {
		t.Fatal(err)
	}
}

func rawConn(t *testing.T, sock string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

func TestBadMessages(t *testing.T) {
	d := startKVD(t, "")
	hello := ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeHello, ID: 1, Payload: []byte(`{"name":"raw"}`)})
	cases := []struct {
		name   string
		send   [][]byte
		code   uint16 // expected error code in the last reply; 0: the connection just ends
		closes bool
	}{
		{"wrong version", [][]byte{ipc.AppendFrame(nil, &ipc.Frame{Version: 99, Type: ipc.TypeStatus, ID: 1})}, ipc.CodeVersionMismatch, false},
		{"huge length", [][]byte{binary.LittleEndian.AppendUint32(nil, 1<<31)}, ipc.CodeBadRequest, true},
		{"shorter than a header", [][]byte{append(binary.LittleEndian.AppendUint32(nil, 3), 1, 2, 3)}, ipc.CodeBadRequest, true},
		{"step before hello", [][]byte{ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeStep, ID: 1})}, ipc.CodeBadRequest, false},
		{"unknown type", [][]byte{hello, ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: 77, ID: 2})}, ipc.CodeBadRequest, false},
		{"truncated step payload", [][]byte{hello, ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeStep, ID: 2, Payload: []byte{1, 2, 3}})}, ipc.CodeBadRequest, false},
		{"lying count", [][]byte{hello, ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeOpen, ID: 2, Payload: binary.LittleEndian.AppendUint32(nil, 1<<30)})}, ipc.CodeBadRequest, false},
		{"unknown sequence", [][]byte{hello, ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeStep, ID: 2,
			Payload: (&ipc.StepRequest{Appends: []blocks.Append{{Seq: 5, N: 1}}}).Encode(nil)})}, ipc.CodeUnknownSeq, false},
		{"pool exhausted", [][]byte{hello, ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeOpen, ID: 2, Payload: ipc.EncodeSeqs(nil, []uint64{1})}),
			ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeStep, ID: 3, Payload: (&ipc.StepRequest{Appends: []blocks.Append{{Seq: 1, N: 1 << 20}}}).Encode(nil)})}, ipc.CodePoolExhausted, false},
		{"truncated frame then hang up", [][]byte{hello[:10]}, 0, true},
		{"bad hello json", [][]byte{ipc.AppendFrame(nil, &ipc.Frame{Version: ipc.Version, Type: ipc.TypeHello, ID: 1, Payload: []byte("{")})}, ipc.CodeBadRequest, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConn(t, d.sock)
			var last *ipc.Frame
			for i, b := range tc.send {
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
				if tc.code == 0 {
					break
				}
				f, _, err := ipc.ReadFrame(c, nil)
				if err != nil {
					t.Fatalf("reply %d: %v", i, err)
				}
				last = f
			}
			if tc.code == 0 {
				c.CloseWrite()
			} else {
				if last.Type != ipc.TypeError {
					t.Fatalf("reply type %#x, want an error", last.Type)
				}
				var re *ipc.RemoteError
				if err := ipc.DecodeError(last.Payload); !errors.As(err, &re) || re.Code != tc.code {
					t.Fatalf("error %v, want code %d", err, tc.code)
				}
			}
			if tc.closes || tc.code == 0 {
				if _, _, err := ipc.ReadFrame(c, nil); err == nil {
					t.Fatal("connection still open after an unrecoverable frame")
				}
			}
			// kvd keeps serving everyone.
			if s := status(t, d.sock); s.BlocksTotal == 0 {
				t.Fatal("no status")
			}
		})
	}
	if d.cmd.ProcessState != nil {
		t.Fatalf("kvd exited:\n%s", d.logs)
	}
	if strings.Contains(d.logs.String(), "panic") {
		t.Fatalf("kvd panicked:\n%s", d.logs)
	}
}

func TestSocketFile(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "kvd.sock")
	// A stale socket file (nobody listening) is replaced.
	os.MkdirAll(filepath.Dir(sock), 0o700)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	d := startKVD(t, sock)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	// A second kvd on the same socket refuses to start.
	out, err := exec.Command(kvdBin, "serve", "--socket", sock, "--layers", "1", "--kv-heads", "1", "--head-dim", "2", "--kv-memory", "1MiB").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already running") {
		t.Errorf("second kvd: %v\n%s", err, out)
	}
	d.stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind after a clean stop: %v", err)
	}
	out, err = exec.Command(kvdBin, "status", "--socket", sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not running") {
		t.Errorf("status with kvd down: %v\n%s", err, out)
	}
}

// TestFlappingConnection drops the connection after every step, before kvd
// has noticed the last one close, and checks that the client's tables and
// kvd's stay equal: no step done is lost, none is applied twice.
func TestFlappingConnection(t *testing.T) {
	d := startKVD(t, "")
	ctx := context.Background()
	c, err := ipc.Dial(ctx, d.sock, ipc.Options{Name: "flaky", Wait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	if err := c.Open(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		st, err := c.Step(ctx, []blocks.Append{{Seq: 1, N: 1}})
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		c.Done(st.ID, false)
		c.ForceDisconnect()
	}
	s, err := c.Status(ctx) // reconnects; the hello reports the last step done
	if err != nil {
		t.Fatal(err)
	}
	n, _ := c.Tables().Tokens(1, 0)
	if n != 200 || s.Layers[0].TokensRetained != 200 {
		t.Fatalf("client holds %d tokens, kvd %d; both should hold 200", n, s.Layers[0].TokensRetained)
	}
}
