// Command validate checks rendered Kubernetes manifests offline, against the API types a
// cluster would decode them into, so that a misspelled or misplaced field fails here instead
// of being dropped (or refused) by the API server.
//
//	validate -crds DIR FILE...
//
// Built-in kinds are decoded strictly with client-go's scheme: an unknown field, a duplicate
// field or a value of the wrong type is an error. Kinds defined by a CustomResourceDefinition
// in DIR are checked the way the API server checks a custom resource: pruning against the
// structural schema (every field it would drop is an error) and OpenAPI schema validation.
// Any other kind is an error too. Exits 1 listing every problem, 2 on a usage error.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// document is one YAML document of a manifest file, with where it came from.
type document struct {
	file  string
	index int
	data  []byte
}

func (d document) String() string {
	return fmt.Sprintf("%s (document %d)", d.file, d.index)
}

// typeMeta is what is read of a document before its kind is known.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
}

func main() {
	crdDir := flag.String("crds", "", "folder of CustomResourceDefinition YAML files")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: validate -crds DIR FILE...")
	}
	flag.Parse()
	if *crdDir == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	crds, err := loadCRDs(*crdDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "validate: %v\n", err)
		os.Exit(2)
	}
	builtin := newBuiltinDecoder()

	var problems []string
	counts := map[string]int{}
	for _, file := range flag.Args() {
		docs, err := readDocuments(file)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", file, err))
			continue
		}
		for _, doc := range docs {
			kind, errs := validateDocument(doc, builtin, crds)
			counts[kind]++
			for _, e := range errs {
				problems = append(problems, fmt.Sprintf("%s: %s", doc, e))
			}
		}
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p)
	}
	fmt.Printf("validated %s\n", describeCounts(counts))
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "validate: %d problem(s)\n", len(problems))
		os.Exit(1)
	}
}

// validateDocument returns the document's kind (for the summary) and its problems.
func validateDocument(doc document, builtin *builtinDecoder, crds crdIndex) (string, []string) {
	var meta typeMeta
	if err := yaml.Unmarshal(doc.data, &meta); err != nil {
		return "unreadable", []string{err.Error()}
	}
	if meta.APIVersion == "" || meta.Kind == "" {
		return "unreadable", []string{"apiVersion and kind are required"}
	}
	what := fmt.Sprintf("%s %s/%s", meta.APIVersion, meta.Kind, meta.Metadata.Name)
	var errs []string
	switch {
	case builtin.knows(meta.APIVersion, meta.Kind):
		errs = builtin.validate(doc.data)
	case crds.knows(meta.APIVersion, meta.Kind):
		errs = crds.validate(meta.APIVersion, meta.Kind, doc.data)
	default:
		errs = []string{"not a built-in kind, nor one of the CRDs given: " + crds.kinds()}
	}
	for i, e := range errs {
		errs[i] = what + ": " + e
	}
	return meta.Kind, errs
}

// readDocuments splits a file into its non-empty YAML documents.
func readDocuments(file string) ([]document, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	var docs []document
	for index := 1; ; index++ {
		data, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if isBlank(data) {
			continue
		}
		docs = append(docs, document{file: file, index: index, data: data})
	}
}

// isBlank is true for a document of only comments and white space (helm template writes
// one for a template that renders nothing).
func isBlank(data []byte) bool {
	for _, line := range bytes.Split(data, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}

func describeCounts(counts map[string]int) string {
	total := 0
	for _, n := range counts {
		total += n
	}
	return fmt.Sprintf("%d object(s) %v", total, counts)
}
