//go:build cgo

package cuda

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The IPC test's two sides: the parent exports device memory and an event,
// the child (this test binary again, run with ipcChildEnv set) opens both.
const ipcChildEnv = "KVD_IPC_CHILD"

const ipcWords = 1 << 20

// gpuContext opens GPU 0's context for the test, released when it ends.
// Without a GPU the parent side skips (skip) and a child side fails.
func gpuContext(t *testing.T, skip bool) *Context {
	t.Helper()
	drv, err := Open()
	if err == nil {
		var devs []Device
		if devs, err = drv.Devices(); err != nil || len(devs) == 0 {
			err = fmt.Errorf("%w: no devices (%v)", ErrNoDriver, err)
		}
		if err == nil {
			var ctx *Context
			if ctx, err = drv.Context(devs[0]); err == nil {
				t.Cleanup(func() { ctx.Release(); drv.Close() })
				return ctx
			}
		}
		drv.Close()
	}
	if skip && errors.Is(err, ErrNoDriver) {
		t.Skipf("no GPU: %v", err)
	}
	t.Fatal(err)
	return nil
}

// TestIPC shares device memory and events with another process, as kvd
// and the gateway will: the child waits (on the device) for the parent's
// event, checks the parent's pattern, writes its own after it and records
// its event; the parent waits for that and finds the child's pattern. It
// skips without a GPU.
func TestIPC(t *testing.T) {
	if os.Getenv(ipcChildEnv) != "" {
		ipcChild(t)
		return
	}
	ctx := gpuContext(t, true)
	p, err := ctx.Alloc(4 * ipcWords)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Free(p)
	if err := ctx.Memset32(p, 0xa5a5a5a5, ipcWords); err != nil {
		t.Fatal(err)
	}
	mine, err := ctx.NewIPCEvent()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.DestroyEvent(mine)
	if err := ctx.Record(mine, Stream{}); err != nil {
		t.Fatal(err)
	}
	mh, err := ctx.IPCMemHandle(p)
	if err != nil {
		t.Fatal(err)
	}
	eh, err := ctx.IPCEventHandle(mine)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestIPC$", "-test.v")
	cmd.Env = append(os.Environ(), ipcChildEnv+"="+hex.EncodeToString(mh[:])+":"+hex.EncodeToString(eh[:]))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close() // the child exits once the parent is done with its event
	// The child prints its event's handle, then waits for us to finish
	// with it; wait for the event on the device.
	var theirs IPCHandle
	found := false
	sc := bufio.NewScanner(stdout)
	for !found && sc.Scan() {
		logs.WriteString(sc.Text() + "\n")
		if h, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "child-event "); ok {
			b, _ := hex.DecodeString(h)
			copy(theirs[:], b)
			found = true
		}
	}
	if !found {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("the child printed no event:\n%s", logs.String())
	}
	ev, err := ctx.OpenIPCEvent(theirs)
	if err != nil {
		t.Fatalf("opening the child's event: %v", err)
	}
	if err := ctx.Wait(Stream{}, ev); err != nil {
		t.Fatal(err)
	}
	wantWords(t, ctx, p, 0x5a5a5a5a)
}

func ipcChild(t *testing.T) {
	mhex, ehex, _ := strings.Cut(os.Getenv(ipcChildEnv), ":")
	var mh, eh IPCHandle
	b, _ := hex.DecodeString(mhex)
	copy(mh[:], b)
	b, _ = hex.DecodeString(ehex)
	copy(eh[:], b)
	ctx := gpuContext(t, false)
	p, err := ctx.OpenIPCMem(mh)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.CloseIPCMem(p)
	theirs, err := ctx.OpenIPCEvent(eh)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctx.Wait(Stream{}, theirs); err != nil {
		t.Fatal(err)
	}
	wantWords(t, ctx, p, 0xa5a5a5a5)
	if err := ctx.Memset32(p, 0x5a5a5a5a, ipcWords); err != nil {
		t.Fatal(err)
	}
	mine, err := ctx.NewIPCEvent()
	if err != nil {
		t.Fatal(err)
	}
	if err := ctx.Record(mine, Stream{}); err != nil {
		t.Fatal(err)
	}
	h, err := ctx.IPCEventHandle(mine)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctx.SyncEvent(mine); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("child-event " + hex.EncodeToString(h[:]) + "\n")
	// The event lives as long as this process: stay until the parent is
	// done with it (it closes our stdin).
	io.Copy(io.Discard, os.Stdin)
}

const vmmChildEnv = "KVD_VMM_CHILD"

// TestVMMIPC shares memory made with cuMemCreate as a file descriptor (kvd
// serve --cuda-ipc fd, the default): the child, given the fd as its fd 3, maps it,
// checks the parent's pattern and writes its own, which the parent then
// reads. It also checks that Done sees a recorded event finish. It skips
// without a GPU.
func TestVMMIPC(t *testing.T) {
	if os.Getenv(vmmChildEnv) != "" {
		vmmChild(t)
		return
	}
	ctx := gpuContext(t, true)
	v, err := ctx.VMMAlloc(4*ipcWords + 12) // not a multiple of the granularity
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := ctx.VMMFree(v); err != nil {
			t.Error(err)
		}
	}()
	if v.Size < 4*ipcWords+12 {
		t.Fatalf("mapped %d bytes for %d", v.Size, 4*ipcWords+12)
	}
	if err := ctx.Memset32(v.Ptr, 0xa5a5a5a5, ipcWords); err != nil {
		t.Fatal(err)
	}
	ev, err := ctx.NewIPCEvent()
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.DestroyEvent(ev)
	if err := ctx.Record(ev, Stream{}); err != nil {
		t.Fatal(err)
	}
	for {
		done, err := ctx.Done(ev)
		if err != nil {
			t.Fatal(err)
		}
		if done {
			break
		}
	}
	fd, err := ctx.VMMExport(v)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "vmm")
	defer f.Close()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestVMMIPC$", "-test.v")
	cmd.Env = append(os.Environ(), vmmChildEnv+"=1")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	wantWords(t, ctx, v.Ptr, 0x5a5a5a5a)
}

func vmmChild(t *testing.T) {
	ctx := gpuContext(t, false)
	v, err := ctx.VMMImport(3, 4*ipcWords+12)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.VMMFree(v)
	wantWords(t, ctx, v.Ptr, 0xa5a5a5a5)
	if err := ctx.Memset32(v.Ptr, 0x5a5a5a5a, ipcWords); err != nil {
		t.Fatal(err)
	}
	if err := ctx.Sync(Stream{}); err != nil {
		t.Fatal(err)
	}
}

// wantWords fails the test unless the ipcWords words at p all hold want
// (the pattern the other process wrote).
func wantWords(t *testing.T, ctx *Context, p Ptr, want uint32) {
	t.Helper()
	got := make([]byte, 4*ipcWords)
	if err := ctx.CopyToHost(got, p); err != nil {
		t.Fatal(err)
	}
	for i := range ipcWords {
		if w := binary.LittleEndian.Uint32(got[4*i:]); w != want {
			t.Fatalf("word %d is %#x, want %#x (the other process's pattern)", i, w, want)
		}
	}
}
