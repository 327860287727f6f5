package manifests

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestDockerfileBuildsEveryImage ties the Dockerfile to manifests/images:
// every image the manifests use is a Dockerfile target of the same name that
// runs that binary, static and as a non-root user, on a distroless or
// scratch base. (There is no container engine in the tests; this is what
// can be checked without one.)
func TestDockerfileBuildsEveryImage(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	if !strings.Contains(df, "CGO_ENABLED=0") {
		t.Error("Dockerfile: the binaries are not built with CGO_ENABLED=0, so they may not be static")
	}
	var k struct {
		Images []struct {
			Name string `json:"name"`
		} `json:"images"`
	}
	b, err = os.ReadFile("images/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &k); err != nil || len(k.Images) == 0 {
		t.Fatalf("images/kustomization.yaml: no images (err %v)", err)
	}
	for _, img := range k.Images {
		name := strings.TrimPrefix(img.Name, imagePrefix)
		stage := regexp.MustCompile(`(?s)\nFROM (\S+) AS ` + regexp.QuoteMeta(name) + `\n(.*?)(\nFROM |$)`).FindStringSubmatch(df)
		if stage == nil {
			t.Errorf("Dockerfile has no target %s for image %s", name, img.Name)
			continue
		}
		base, body := stage[1], stage[2]
		if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
			t.Errorf("target %s: base %s, want distroless/static or scratch", name, base)
		}
		if !strings.Contains(body, `ENTRYPOINT ["/`+name+`"]`) || !strings.Contains(body, "/out/"+name+" /"+name) {
			t.Errorf("target %s does not copy and run /%s", name, name)
		}
		if u := regexp.MustCompile(`\nUSER (\d+)`).FindStringSubmatch(body); u == nil || u[1] == "0" {
			t.Errorf("target %s: no non-root USER", name)
		}
	}
}
