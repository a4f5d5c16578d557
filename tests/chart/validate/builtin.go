package main

import (
	"k8s.io/apimachinery/pkg/api/meta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	serjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/scheme"
)

// builtinDecoder decodes the kinds client-go knows, refusing what the API server would drop.
type builtinDecoder struct {
	scheme *runtime.Scheme
	strict runtime.Decoder
}

func newBuiltinDecoder() *builtinDecoder {
	strict := serjson.NewSerializerWithOptions(
		serjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
		serjson.SerializerOptions{Yaml: true, Strict: true},
	)
	return &builtinDecoder{scheme: scheme.Scheme, strict: strict}
}

func (b *builtinDecoder) knows(apiVersion, kind string) bool {
	gv, err := schema.ParseGroupVersion(apiVersion)
	return err == nil && b.scheme.Recognizes(gv.WithKind(kind))
}

// validate decodes strictly (unknown fields, duplicate fields and wrong types are errors,
// where the API server would drop the first and keep the last of the second) and checks the
// object's metadata with the API server's own rules for names, labels and annotations.
func (b *builtinDecoder) validate(data []byte) []string {
	obj, _, err := b.strict.Decode(data, nil, nil)
	if err != nil {
		return []string{err.Error()}
	}
	accessor, err := meta.Accessor(obj)
	if err != nil {
		return []string{err.Error()}
	}
	// Every kind the chart renders is namespaced; a name is a DNS subdomain for most kinds
	// and a DNS label for a Service (it becomes a host name).
	nameRule := apivalidation.NameIsDNSSubdomain
	if obj.GetObjectKind().GroupVersionKind().Kind == "Service" {
		nameRule = apivalidation.NameIsDNS1035Label
	}
	errs := apivalidation.ValidateObjectMetaAccessor(accessor, true, nameRule, field.NewPath("metadata"))
	return fieldErrors(errs)
}

func fieldErrors(errs field.ErrorList) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}
