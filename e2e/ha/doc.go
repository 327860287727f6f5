// Package ha tests edge-tunnel's high availability with real processes:
// three edge-tunnel-server replicas behind HAProxy, a real TCP load
// balancer that passes TLS through as a cloud load balancer or a
// Kubernetes Service does, and agents that hold a connection to every
// replica through it. The tests cover what an operator meets: every agent
// on every replica, a rolling restart of the servers under load, an agent
// restarted or drained, a network cut between an edge node and the cloud,
// and a server shut down gracefully.
//
// They need haproxy (Debian package haproxy; hack/test.sh installs it when
// it runs as root) and, for the network cut, root for a network namespace.
// Without them they skip and say why.
package ha
