// kstatus prints the kstatus of Kubernetes objects, computed by the same library Flux,
// kpt and cli-utils' apply use (sigs.k8s.io/cli-utils/pkg/kstatus/status).
//
// It reads what `kubectl get -o json` prints (one object, or a List) on stdin and writes
// one JSON line per object: {"kind", "namespace", "name", "status", "message"}. Reading
// kubectl's output rather than talking to the API server keeps client-go out of the build.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kubectl get KIND [NAME] -o json | kstatus")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var doc unstructured.Unstructured
	if err := doc.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("stdin is not a Kubernetes object or List in JSON: %w", err)
	}
	objects := []unstructured.Unstructured{doc}
	if doc.IsList() {
		list, err := doc.ToList()
		if err != nil {
			return err
		}
		objects = list.Items
	}
	encoder := json.NewEncoder(out)
	for i := range objects {
		obj := &objects[i]
		computed, err := status.Compute(obj)
		if err != nil {
			return fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		err = encoder.Encode(result{
			Kind:      obj.GetKind(),
			Namespace: obj.GetNamespace(),
			Name:      obj.GetName(),
			Status:    computed.Status.String(),
			Message:   computed.Message,
		})
		if err != nil {
			return err
		}
	}
	return nil
}
