// Package docscheck holds no code, only tests that keep the operator
// documentation honest: every metric the binaries register is documented
// in docs/metrics.md, the Grafana dashboard uses only real metric names, and
// every message a user can see is explained in docs/troubleshooting.md.
// They read the repository's files relative to this directory.
package docscheck
