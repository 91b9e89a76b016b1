//go:build !cgo

package cuda

import "testing"

func testDevice(t *testing.T, drv *Driver) { t.Fatal("a driver opened without cgo") }
