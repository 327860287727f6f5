package agentauth

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestKubeNodes(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "edge-a"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "192.0.2.10"},
			{Type: corev1.NodeHostName, Address: "edge-a"},
			{Type: corev1.NodeExternalIP, Address: "2001:db8::a"},
		}},
	})
	gets := 0
	down := false
	client.PrependReactor("get", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
		gets++
		if down {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	now := time.Unix(1000, 0)
	k := &KubeNodes{Client: client, TTL: time.Minute, now: func() time.Time { return now }}
	ctx := context.Background()

	addrs, found, err := k.NodeAddresses(ctx, "edge-a")
	if err != nil || !found || fmt.Sprint(addrs) != "[192.0.2.10 2001:db8::a]" {
		t.Fatalf("edge-a: %v %v %v", addrs, found, err)
	}
	if _, found, err := k.NodeAddresses(ctx, "edge-x"); err != nil || found {
		t.Fatalf("edge-x: found=%v err=%v, want not found", found, err)
	}
	// Cached, both the node and the unknown name: no more API requests.
	down = true
	k.NodeAddresses(ctx, "edge-a")
	k.NodeAddresses(ctx, "edge-x")
	if gets != 2 {
		t.Fatalf("%d gets, want 2 (answers are cached)", gets)
	}
	// Expired: asked again; errors are returned, not cached.
	now = now.Add(2 * time.Minute)
	if _, _, err := k.NodeAddresses(ctx, "edge-a"); err == nil {
		t.Fatal("no error with the API down and the cache expired")
	}
	down = false
	if a, found, err := k.NodeAddresses(ctx, "edge-a"); err != nil || !found || len(a) != 2 || a[0] != netip.MustParseAddr("192.0.2.10") {
		t.Fatalf("after recovery: %v %v %v", a, found, err)
	}
	if gets != 4 {
		t.Fatalf("%d gets, want 4", gets)
	}
}
