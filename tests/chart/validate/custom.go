package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/objectmeta"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	crvalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/runtime"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// customKind is one served version of a CRD's kind, ready to check objects against.
type customKind struct {
	namespaced bool
	structural *structuralschema.Structural
	validator  crvalidation.SchemaValidator
}

// crdIndex maps "group/version Kind" to its schema.
type crdIndex map[string]customKind

func indexKey(apiVersion, kind string) string { return apiVersion + " " + kind }

// loadCRDs reads every *.yaml file of dir as one CustomResourceDefinition (strictly: a
// vendored file that is not a CRD is an error rather than an empty schema).
func loadCRDs(dir string) (crdIndex, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no CRD files in %s", dir)
	}
	index := crdIndex{}
	for _, file := range files {
		if err := index.add(file); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
	}
	return index, nil
}

func (c crdIndex) add(file string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &crd); err != nil {
		return err
	}
	if crd.Kind != "CustomResourceDefinition" {
		return fmt.Errorf("kind %q, want CustomResourceDefinition", crd.Kind)
	}
	for _, version := range crd.Spec.Versions {
		if !version.Served || version.Schema == nil || version.Schema.OpenAPIV3Schema == nil {
			continue
		}
		kind, err := newCustomKind(crd.Spec.Scope, version.Schema.OpenAPIV3Schema)
		if err != nil {
			return fmt.Errorf("version %s: %w", version.Name, err)
		}
		apiVersion := crd.Spec.Group + "/" + version.Name
		c[indexKey(apiVersion, crd.Spec.Names.Kind)] = kind
	}
	return nil
}

// newCustomKind converts a CRD version's schema the way the API server does: to the internal
// type, then to the structural schema (pruning) and the OpenAPI validator.
func newCustomKind(scope apiextensionsv1.ResourceScope, v1schema *apiextensionsv1.JSONSchemaProps) (customKind, error) {
	var internal apiextensions.JSONSchemaProps
	if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v1schema, &internal, nil); err != nil {
		return customKind{}, err
	}
	structural, err := structuralschema.NewStructural(&internal)
	if err != nil {
		return customKind{}, fmt.Errorf("not a structural schema: %w", err)
	}
	validator, _, err := crvalidation.NewSchemaValidator(&internal)
	if err != nil {
		return customKind{}, err
	}
	return customKind{
		namespaced: scope == apiextensionsv1.NamespaceScoped,
		structural: structural,
		validator:  validator,
	}, nil
}

func (c crdIndex) knows(apiVersion, kind string) bool {
	_, ok := c[indexKey(apiVersion, kind)]
	return ok
}

// validate checks one custom resource: duplicate keys, unknown metadata fields, fields that
// pruning would drop, the metadata rules and the schema's own constraints. CEL rules
// (x-kubernetes-validations) are not evaluated.
func (c crdIndex) validate(apiVersion, kind string, data []byte) []string {
	custom := c[indexKey(apiVersion, kind)]
	asJSON, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return []string{err.Error()}
	}
	// The API server's JSON reading: integers stay int64, which the validator expects.
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(asJSON, &obj); err != nil {
		return []string{err.Error()}
	}

	var problems []string
	meta, _, unknownMeta, err := objectmeta.GetObjectMetaWithOptions(obj, objectmeta.ObjectMetaOptions{ReturnUnknownFieldPaths: true})
	if err != nil {
		return []string{fmt.Sprintf("metadata: %v", err)}
	}
	for _, path := range unknownMeta {
		problems = append(problems, fmt.Sprintf("unknown field %q", path))
	}
	if meta == nil {
		problems = append(problems, "metadata is missing")
	} else {
		errs := apivalidation.ValidateObjectMeta(meta, custom.namespaced, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))
		problems = append(problems, fieldErrors(errs)...)
	}

	// Prune a copy: the validator must still see the fields, and the object is not reused.
	pruned := runtime.DeepCopyJSON(obj)
	unknown := pruning.PruneWithOptions(pruned, custom.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})
	for _, path := range unknown {
		problems = append(problems, fmt.Sprintf("unknown field %q (the API server would drop it)", path))
	}
	problems = append(problems, fieldErrors(crvalidation.ValidateCustomResource(nil, obj, custom.validator))...)
	sort.Strings(problems)
	return problems
}

// kinds lists the indexed kinds, for messages.
func (c crdIndex) kinds() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}
