//go:build !cgo

package cuda

import "fmt"

// Driver is unavailable without cgo.
type Driver struct{}

// Open reports ErrNoDriver: this binary was built with CGO_ENABLED=0.
func Open() (*Driver, error) {
	return nil, fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0)", ErrNoDriver)
}

// Close does nothing.
func (*Driver) Close() {}
