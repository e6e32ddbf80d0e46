package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestMakeFuzzRunsEveryFuzzTarget: `make fuzz` (run by `make test`) lists
// every fuzz target of the repository, so a new one is not left out of CI.
func TestMakeFuzzRunsEveryFuzzTarget(t *testing.T) {
	root := repoRoot()
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)FUZZ_TARGETS := (.*?)\n[^ \t]`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	listed := strings.Fields(strings.ReplaceAll(string(m[1]), `\`, " "))
	modules := []string{"proto", "shared", "services/reader", "services/writer", "services/stager", "services/differ", "services/oneway", "integration"}
	fuzzFunc := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(f \*testing\.F\)`)
	var found []string
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		mod := ""
		for _, m := range modules {
			if (rel == m || strings.HasPrefix(rel, m+"/")) && len(m) > len(mod) {
				mod = m
			}
		}
		if mod == "" {
			t.Errorf("%s is in no module this test knows", path)
			return nil
		}
		pkg := "./" + strings.TrimPrefix(strings.TrimPrefix(rel, mod), "/")
		if pkg == "./" {
			pkg = "."
		}
		for _, f := range fuzzFunc.FindAllSubmatch(src, -1) {
			found = append(found, mod+":"+pkg+":"+string(f[1]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Fatal("found no fuzz targets at all")
	}
	slices.Sort(found)
	slices.Sort(listed)
	for _, f := range found {
		if !slices.Contains(listed, f) {
			t.Errorf("fuzz target %s is not in the Makefile's FUZZ_TARGETS", f)
		}
	}
	for _, l := range listed {
		if !slices.Contains(found, l) {
			t.Errorf("FUZZ_TARGETS lists %s, which does not exist", l)
		}
	}
}
