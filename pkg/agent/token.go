package agent

import (
	"fmt"
	"os"
	"strings"
)

// ReadToken reads a ServiceAccount token file. The kubelet rotates a
// projected token by replacing the file, so the agent reads it on every
// connect rather than once.
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("the ServiceAccount token file %s is empty", path)
	}
	return token, nil
}
