// Package e2e holds the end-to-end tests: they build the real bin/kvd and
// bin/gateway, start them (sidecar, and gateway --embedded), and speak HTTP
// to them, comparing what comes back with the model's no-cache reference
// forward pass run in the test process.
package e2e
