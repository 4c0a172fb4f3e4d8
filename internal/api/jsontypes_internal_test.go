package api

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// jsonStructExceptions lists the struct types of this package that may
// still carry json tags, each with its reason. Keep it short: a JSON body
// of the API belongs in openapi.yaml, which generates pkg/wrennapi.
var jsonStructExceptions = map[string]string{}

// TestNoHandWrittenJSONTypes fails when a non-test file of internal/api
// declares a struct (named or anonymous) with json tags: the API's
// request and response types come from openapi.yaml (pkg/wrennapi), so
// that the document, the server and the SDK cannot drift apart.
func TestNoHandWrittenJSONTypes(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, v := range jsonStructs(f) {
			if _, ok := jsonStructExceptions[v.name]; ok {
				continue
			}
			t.Errorf("%s: struct %s has json tags; add its schema to openapi.yaml, run make gen and use the pkg/wrennapi type",
				fset.Position(v.pos), v.name)
		}
	}
	if checked == 0 {
		t.Fatal("no Go files found: the test must run in internal/api")
	}
}

type jsonStruct struct {
	name string
	pos  token.Pos
}

// jsonStructs returns the struct types in f with a json-tagged field,
// named by their type declaration or "anonymous".
func jsonStructs(f *ast.File) []jsonStruct {
	var out []jsonStruct
	names := map[*ast.StructType]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		if ts, ok := n.(*ast.TypeSpec); ok {
			if st, ok := ts.Type.(*ast.StructType); ok {
				names[st] = ts.Name.Name
			}
		}
		st, ok := n.(*ast.StructType)
		if !ok {
			return true
		}
		for _, fl := range st.Fields.List {
			if fl.Tag == nil {
				continue
			}
			tag := reflect.StructTag(strings.Trim(fl.Tag.Value, "`"))
			if _, ok := tag.Lookup("json"); ok {
				name := names[st]
				if name == "" {
					name = "anonymous"
				}
				out = append(out, jsonStruct{name: name, pos: st.Pos()})
				break
			}
		}
		return true
	})
	return out
}

// TestJSONStructsFindsTags is the check's own test: it must see a named
// and an anonymous struct with json tags, and ignore one without.
func TestJSONStructsFindsTags(t *testing.T) {
	src := "package x\n" +
		"type a struct { ID string `json:\"id\"` }\n" +
		"type b struct { ID string `db:\"id\"` }\n" +
		"func f() { var req struct { X *bool `json:\"x\"` }; _ = req }\n"
	f, err := parser.ParseFile(token.NewFileSet(), "x.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := jsonStructs(f)
	if len(got) != 2 || got[0].name != "a" || got[1].name != "anonymous" {
		t.Fatalf("jsonStructs = %+v, want a and anonymous", got)
	}
}
