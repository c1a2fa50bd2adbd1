//go:build tools

// Package tools pins Coder's CLI into this module so that `go build
// github.com/coder/coder/v2/cmd/coder` builds the pinned release with its replaces.
package tools

import _ "github.com/coder/coder/v2/cmd/coder"
